"""detectron2 / fvcore drop-ins (``pip install "triton-focal[detectron2]"``; fvcore is what is needed).

* :func:`sigmoid_focal_loss` / :func:`sigmoid_focal_loss_jit` have ``fvcore.nn``'s signature,
  ``(inputs, targets, alpha=-1, gamma=2, reduction="none")``, and its results: dense float targets
  of ``inputs``' shape, ``alpha < 0`` for no weighting, ``"mean"`` over all elements, and the result
  in float32 whatever the inputs' dtype (fvcore calls ``.float()`` on both). Likewise
  :func:`sigmoid_focal_loss_star` (FL*, ``gamma=1``).
* :func:`sigmoid_focal_loss_from_labels` is the class-index form that RetinaNet / FCOS-style losses
  need: labels ``-1`` are ignored, ``C`` is background, no one-hot is made and no boolean-mask
  gather copies the logits; the normalizer can be a device tensor (:func:`num_positive_anchors`,
  :class:`EMANormalizer`), so no ``.item()`` waits for the GPU.

detectron2's ``RetinaNet.losses`` becomes::

    from triton_focal.integrations.detectron2 import sigmoid_focal_loss_from_labels, num_positive_anchors

    num_pos = num_positive_anchors(gt_labels, self.num_classes)        # a tensor, no .item()
    normalizer = self.loss_normalizer_ema.update(num_pos)              # EMANormalizer(momentum=0.9, initial=100)
    loss_cls = sigmoid_focal_loss_from_labels(pred_logits, gt_labels, alpha=self.focal_loss_alpha,
                                              gamma=self.focal_loss_gamma, normalizer=normalizer)
"""

from typing import Optional, Sequence, Union

import torch

from .. import functional

_REDUCTIONS = ("none", "mean", "sum")


def _fvcore_dtype(inputs, targets, name="inputs"):
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {type(inputs).__name__}")
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a tensor of {name}' shape, got {type(targets).__name__}")
    return inputs.float(), targets.float()  # fvcore computes in float32


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def _fvcore(loss, inputs, targets, alpha, gamma, reduction, backend):
    """``loss`` (a :mod:`triton_focal.functional` sigmoid loss) with fvcore's checks and float32 inputs."""
    _check_reduction(reduction)
    inputs, targets = _fvcore_dtype(inputs, targets)
    return loss(inputs, targets, alpha=alpha, gamma=gamma, reduction=reduction, backend=backend)


def sigmoid_focal_loss(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = -1,
    gamma: float = 2,
    reduction: str = "none",
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """``fvcore.nn.sigmoid_focal_loss``, fused: ``alpha_t * (1 - p_t) ** gamma * BCE(inputs, targets)``.

    Args:
        inputs: logits of any shape.
        targets: floats in ``[0, 1]`` of ``inputs``' shape (an integer 0/1 tensor is converted, as
            fvcore's ``.float()`` does).
        alpha: weight of positives in ``[0, 1]``; negative (default) for none.
        gamma: focusing parameter ``>= 0``.
        reduction: ``"none"``, ``"mean"`` (over all elements) or ``"sum"``.
        backend: triton_focal's backend.
    """
    return _fvcore(functional.sigmoid_focal_loss, inputs, targets, alpha, gamma, reduction, backend)


# detectron2 calls the scripted version; the fused one needs no scripting.
sigmoid_focal_loss_jit = sigmoid_focal_loss


def sigmoid_focal_loss_star(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = -1,
    gamma: float = 1,
    reduction: str = "none",
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """``fvcore.nn.sigmoid_focal_loss_star`` (FL*): ``alpha_t * softplus(-gamma * x * (2t - 1)) / gamma``."""
    return _fvcore(functional.sigmoid_focal_loss_star, inputs, targets, alpha, gamma, reduction, backend)


sigmoid_focal_loss_star_jit = sigmoid_focal_loss_star


def _logits_rows(pred_logits):
    """detectron2's per-level ``(N, R_i, C)`` list (concatenated over ``R``), or one tensor, as ``(rows, C)``."""
    if isinstance(pred_logits, (list, tuple)):
        if not pred_logits:
            raise ValueError("pred_logits is an empty list")
        pred_logits = torch.cat(list(pred_logits), dim=1) if len(pred_logits) > 1 else pred_logits[0]
    if not isinstance(pred_logits, torch.Tensor) or not pred_logits.is_floating_point():
        raise TypeError(
            f"pred_logits must be a floating-point tensor or a list of them, got {type(pred_logits).__name__}"
        )
    if pred_logits.dim() < 2:
        raise ValueError(f"pred_logits must be (R, C) or (N, R, C), got shape {tuple(pred_logits.shape)}")
    return pred_logits.reshape(-1, pred_logits.shape[-1])


def _label_rows(gt_labels):
    if isinstance(gt_labels, (list, tuple)):
        gt_labels = torch.stack(list(gt_labels))
    if not isinstance(gt_labels, torch.Tensor):
        raise TypeError(f"gt_labels must be an integer tensor or a list of them, got {type(gt_labels).__name__}")
    return gt_labels.reshape(-1)


def sigmoid_focal_loss_from_labels(
    pred_logits: Union[torch.Tensor, Sequence[torch.Tensor]],
    gt_labels: Union[torch.Tensor, Sequence[torch.Tensor]],
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    normalizer: Optional[Union[float, torch.Tensor]] = None,
    reduction: str = "sum",
    ignore_label: int = -1,
    backend: str = "auto",
) -> torch.Tensor:
    """detectron2's RetinaNet classification loss from class indices, fused.

    Equal to ``sigmoid_focal_loss_jit(logits[valid], one_hot(labels[valid], C + 1)[:, :-1],
    alpha, gamma, reduction="sum") / normalizer`` with ``valid = labels >= 0``.

    Args:
        pred_logits: ``(N, R, C)``, ``(R, C)``, or detectron2's list of per-level ``(N, R_i, C)``.
        gt_labels: ``(N, R)`` or a list of ``N`` tensors ``(R,)``: ``[0, C)`` foreground, ``C``
            background, ``ignore_label`` (-1) ignored (its logits are not read).
        alpha, gamma: as in :func:`sigmoid_focal_loss` (``alpha`` default 0.25, RetinaNet's).
        normalizer: the divisor (number of positive anchors, or its EMA): a positive number or a
            0-dim tensor; None for none.
        reduction: ``"sum"`` (default, what RetinaNet uses), ``"mean"`` (over the valid anchors'
            ``C`` classes) or ``"none"`` (``(rows, C)``, ignored rows 0).
        ignore_label: the label of ignored anchors.
        backend: triton_focal's backend.
    """
    _check_reduction(reduction)
    logits = _logits_rows(pred_logits)
    labels = _label_rows(gt_labels)
    if labels.numel() != logits.shape[0]:
        raise ValueError(f"gt_labels has {labels.numel()} anchors but pred_logits has {logits.shape[0]} rows")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"gt_labels must hold integer class indices, got {labels.dtype}")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if normalizer is not None and reduction == "none":
        raise ValueError("normalizer needs reduction='sum' or 'mean'")
    if normalizer is not None:
        reduction = "sum"
    return functional.sigmoid_focal_loss(
        logits,
        labels.to(logits.device),
        alpha=alpha,
        gamma=gamma,
        reduction=reduction,
        ignore_index=ignore_label,
        normalizer=normalizer,
        backend=backend,
    )


def num_positive_anchors(gt_labels, num_classes: int, *, minimum: float = 1.0) -> torch.Tensor:
    """``max(number of labels in [0, num_classes), minimum)`` as a float 0-dim tensor on the labels' device."""
    labels = _label_rows(gt_labels)
    count = ((labels >= 0) & (labels < num_classes)).sum().float()
    return count.clamp(min=minimum)


class EMANormalizer:
    """detectron2's ``RetinaNet._ema_update("loss_normalizer", max(num_pos, 1), initial=100, momentum=0.9)``
    kept on the device: ``value = momentum * value + (1 - momentum) * num_pos``."""

    def __init__(self, momentum: float = 0.9, initial: float = 100.0):
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if not initial > 0:
            raise ValueError(f"initial must be > 0, got {initial}")
        self.momentum = float(momentum)
        self.value: Union[float, torch.Tensor] = float(initial)

    def update(self, num_pos: Union[float, torch.Tensor]) -> Union[float, torch.Tensor]:
        if isinstance(num_pos, torch.Tensor):
            num_pos = num_pos.detach().float()
        self.value = self.momentum * self.value + (1 - self.momentum) * num_pos
        return self.value
