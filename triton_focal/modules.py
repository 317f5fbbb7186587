"""``torch.nn.Module`` wrappers of the functional API.

Tensor arguments (alpha, weight, per-class gamma) are registered as buffers, so
``module.to(device)`` moves them and ``state_dict`` saves them.
"""

from typing import Optional, Union

import torch
from torch import nn

from . import functional


def _check_tensor_values(name, value):
    """Values are checked once, here, where it costs nothing (a module's tensors start on the CPU)."""
    if isinstance(value, torch.Tensor) and value.device.type == "cpu" and bool((~(value >= 0)).any()):
        raise ValueError(f"{name} must be non-negative (and not NaN), got {value.tolist()}")


class _TensorArgs(nn.Module):
    """Stores tensor-or-scalar arguments, tensors as buffers."""

    def _store(self, name, value):
        _check_tensor_values(name, value)
        if isinstance(value, torch.Tensor):
            self.register_buffer(name, value.detach().clone())
        else:
            setattr(self, name, value)


class FocalLoss(_TensorArgs):
    """Softmax focal loss, a drop-in for ``nn.CrossEntropyLoss``; see :func:`triton_focal.focal_loss`.

    Example::

        criterion = FocalLoss(gamma=2.0, ignore_index=255)   # was nn.CrossEntropyLoss(ignore_index=255)
        loss = criterion(logits, labels)                       # logits (N, C, H, W), labels (N, H, W)
    """

    def __init__(
        self,
        gamma: Union[float, torch.Tensor] = 2.0,
        alpha: Optional[Union[float, torch.Tensor]] = None,
        weight: Optional[torch.Tensor] = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        backend: str = "auto",
        z_loss: float = 0.0,
        softcap: Optional[float] = None,
    ):
        super().__init__()
        self._store("gamma", gamma)
        self._store("alpha", alpha)
        self._store("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.backend = backend
        self.z_loss = z_loss
        self.softcap = softcap

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return functional.focal_loss(
            input,
            target,
            gamma=self.gamma,
            alpha=self.alpha,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            backend=self.backend,
            z_loss=self.z_loss,
            softcap=self.softcap,
        )

    def extra_repr(self) -> str:
        gamma = "per-class" if isinstance(self.gamma, torch.Tensor) else self.gamma
        return f"gamma={gamma}, ignore_index={self.ignore_index}, reduction={self.reduction!r}, backend={self.backend!r}"


class SigmoidFocalLoss(_TensorArgs):
    """One-vs-all sigmoid focal loss; see :func:`triton_focal.sigmoid_focal_loss`."""

    def __init__(
        self,
        alpha: float = 0.25,
        gamma: Union[float, torch.Tensor] = 2.0,
        reduction: str = "none",
        weight: Optional[torch.Tensor] = None,
        ignore_index: int = -100,
        normalizer: Optional[float] = None,
        backend: str = "auto",
    ):
        super().__init__()
        self.alpha = alpha
        self._store("gamma", gamma)
        self._store("weight", weight)
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.normalizer = normalizer
        self.backend = backend

    def forward(self, input: torch.Tensor, target: torch.Tensor, normalizer=None) -> torch.Tensor:
        """``normalizer`` given here (e.g. this batch's number of positives) overrides the stored one."""
        return functional.sigmoid_focal_loss(
            input,
            target,
            alpha=self.alpha,
            gamma=self.gamma,
            reduction=self.reduction,
            weight=self.weight,
            ignore_index=self.ignore_index,
            normalizer=self.normalizer if normalizer is None else normalizer,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        gamma = "per-class" if isinstance(self.gamma, torch.Tensor) else self.gamma
        return f"alpha={self.alpha}, gamma={gamma}, reduction={self.reduction!r}, backend={self.backend!r}"
