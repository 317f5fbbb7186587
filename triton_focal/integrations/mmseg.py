"""mmsegmentation drop-in: ``TritonFocalLoss`` in mmseg's ``MODELS`` registry (``pip install "triton-focal[mmseg]"``).

In a config::

    custom_imports = dict(imports=['triton_focal.integrations.mmseg'], allow_failed_imports=False)
    model = dict(
        decode_head=dict(
            loss_decode=dict(type='TritonFocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.5, loss_weight=1.0)))

It keeps mmseg's ``FocalLoss`` contract (``mmseg/models/losses/focal_loss.py``): the constructor
arguments ``use_sigmoid``, ``gamma``, ``alpha`` (a number or a per-class list), ``reduction``,
``class_weight`` (a list, or a ``.npy`` / json / yaml / pkl file name), ``loss_weight``,
``loss_name`` (property, default ``loss_focal``); ``forward(pred, target, weight=None,
avg_factor=None, reduction_override=None, ignore_index=255)``. ``pred`` ``(N, C, H, W)`` logits are
taken as they are (channels-first, no transpose or copy); ``target`` holds class indices
``(N, H, W)`` (``ignore_index`` pixels give 0; with ``C = 1`` label 1 is the positive class, as in
mmseg) or dense / soft targets ``(N, C, H, W)``. The mean is mmseg's: over all ``N * C * H * W``
elements (ignored pixels included), or ``sum / (avg_factor + eps)``.

``weight`` is a per-pixel map ``(N, H, W)`` (what mmseg's pixel samplers return), mmseg's
flattened ``(N * H * W,)`` or ``(N * H * W, C)``, or per element ``(N, C, H, W)``.

``use_sigmoid=False`` (mmseg's ``FocalLoss`` refuses it) gives the softmax focal loss with mmseg's
``CrossEntropyLoss`` reductions: the mean over all pixels, or the non-ignored ones with
``avg_non_ignore=True``; ``class_weight`` as ``F.cross_entropy``'s weight (not in the divisor);
``alpha`` None or a per-class list multiplying each class's loss. The per-pixel ``weight`` and the
divisor go into the fused ``focal_loss(element_weight=weight, reduction="sum", normalizer=d)``:
mmseg's mean divides by the pixel count (or ``avg_factor + eps``), not by the weights' sum.
"""

import numbers
from typing import Optional

import torch
from torch import nn

from .. import _validation
from . import _openmmlab as mm
from .mmdet import _number


def _class_weight(value):
    """mmseg's ``get_class_weight``: a file name is loaded (``.npy``, or what mmengine loads)."""
    if isinstance(value, str):
        if value.endswith(".npy"):
            import numpy as np

            value = np.load(value).tolist()
        else:
            from mmengine.fileio import load

            value = load(value)
    if value is None:
        return None
    value = mm.as_class_tensor(value, "class_weight", torch.empty(0))
    _validation.check_per_class("class_weight", value, None, None, validate=True)
    return value


def _pixel_weight(weight, pred):
    """A weight broadcastable to ``pred`` ``(N, C, *S)`` from the shapes mmseg passes."""
    if weight is None:
        return None
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a tensor, got {type(weight).__name__}")
    n, c, spatial = pred.shape[0], pred.shape[1], tuple(pred.shape[2:])
    pixels = pred.numel() // max(c, 1)
    if weight.shape == pred.shape:
        out = weight
    elif tuple(weight.shape) == (n, *spatial):
        out = weight.unsqueeze(1)
    elif weight.dim() == 1 and weight.numel() == pixels:
        out = weight.reshape(n, *spatial).unsqueeze(1)
    elif weight.dim() == 2 and weight.shape[0] == pixels and weight.shape[1] in (1, c):
        out = weight.reshape(n, *spatial, weight.shape[1]).movedim(-1, 1)
    else:
        shape = "x".join(str(s) for s in spatial)
        raise ValueError(
            f"weight has shape {tuple(weight.shape)}; for pred of shape {tuple(pred.shape)} it must be a pixel map "
            f"{(n, *spatial)}, flattened ({pixels},) or ({pixels}, {c}), or {tuple(pred.shape)} ({shape} pixels)"
        )
    return out if out.is_floating_point() else out.float()


def _per_class(value, name, c, like):
    """A ``(C,)`` tensor viewed as ``(1, C, 1, ...)`` against ``like`` ``(N, C, *S)``."""
    mm.check_class_count(value, name, c)
    return value.to(device=like.device, dtype=like.dtype).reshape(1, c, *([1] * (like.dim() - 2)))


class TritonFocalLoss(nn.Module):
    """mmseg's ``FocalLoss`` on triton_focal's fused kernels (see the module docstring).

    Args:
        use_sigmoid: True: one-vs-all sigmoid focal loss (mmseg's ``FocalLoss``); False: softmax.
        gamma: focusing parameter ``>= 0``.
        alpha: sigmoid: the weight of positives, a number (default 0.5, mmseg's) or a per-class
            list. Softmax: None (default) or a per-class list.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        class_weight: per-class weights: a list, a tensor, or a file name.
        loss_weight: factor multiplying the loss.
        loss_name: the name mmseg logs (and, starting with ``loss_``, backpropagates).
        avg_non_ignore: softmax ``"mean"``: divide by the non-ignored pixels.
        backend: triton_focal's ``"auto"``, ``"triton"``, ``"compile"`` or ``"reference"``.
    """

    def __init__(
        self,
        use_sigmoid: bool = True,
        gamma: float = 2.0,
        alpha=None,
        reduction: str = "mean",
        class_weight=None,
        loss_weight: float = 1.0,
        loss_name: str = "loss_focal",
        avg_non_ignore: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        self.use_sigmoid = mm.check_flag(use_sigmoid, "use_sigmoid")
        self.gamma = _number(gamma, "gamma", low=0)
        if use_sigmoid and alpha is None:
            alpha = 0.5
        if isinstance(alpha, numbers.Real) and not isinstance(alpha, bool):
            if not use_sigmoid:
                raise ValueError(
                    "alpha for use_sigmoid=False must be None or a per-class list (a number would scale every class)"
                )
            self.alpha = _number(alpha, "alpha", high=1)
        elif alpha is None:
            self.alpha = None
        else:
            self.alpha = mm.as_class_tensor(alpha, "alpha", torch.empty(0))
            _validation.check_per_class("alpha", self.alpha, None, None, validate=True)
            if use_sigmoid and bool((self.alpha > 1).any()):
                raise ValueError("alpha values must be in [0, 1]")
        mm.check_reduction(reduction)
        self.reduction = reduction
        self.class_weight = _class_weight(class_weight)
        self.loss_weight = _number(loss_weight, "loss_weight")
        if not isinstance(loss_name, str):
            raise TypeError(f"loss_name must be a str, got {type(loss_name).__name__}")
        self._loss_name = loss_name
        self.avg_non_ignore = mm.check_flag(avg_non_ignore, "avg_non_ignore")
        self.backend = mm.check_backend(backend)

    @property
    def loss_name(self) -> str:
        """The loss item's name (mmseg sums items by name and backpropagates those named ``loss_*``)."""
        return self._loss_name

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        weight: Optional[torch.Tensor] = None,
        avg_factor=None,
        reduction_override: Optional[str] = None,
        ignore_index: int = 255,
        **kwargs,
    ) -> torch.Tensor:
        """The loss of ``pred`` ``(N, C, *S)`` against class indices ``(N, *S)`` or dense targets
        ``(N, C, *S)``; pixels labelled ``ignore_index`` give 0."""
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
        reduction = mm.check_call(pred, target, self.reduction, reduction_override, avg_factor)
        if pred.dim() < 2:
            raise ValueError(f"pred must be (N, C, ...) logits, got shape {tuple(pred.shape)}")
        dense = target.shape == pred.shape
        if not dense and (
            target.dim() != pred.dim() - 1 or target.shape[0] != pred.shape[0] or target.shape[1:] != pred.shape[2:]
        ):
            raise ValueError(
                f"target of shape {tuple(target.shape)} does not match pred {tuple(pred.shape)}: it must be "
                f"class indices {(pred.shape[0], *pred.shape[2:])} or dense {tuple(pred.shape)}"
            )
        w = _pixel_weight(weight, pred)
        if self.use_sigmoid:
            loss = self._sigmoid(pred, target, dense, w, reduction, avg_factor, ignore_index)
        else:
            loss = self._softmax(pred, target, dense, w, reduction, avg_factor, ignore_index)
        return self.loss_weight * loss

    def _sigmoid(self, pred, target, dense, w, reduction, avg_factor, ignore_index):
        c = pred.shape[1]
        if self.class_weight is not None:
            cw = _per_class(self.class_weight, "class_weight", c, pred)
            w = cw if w is None else w * cw
        alpha = self.alpha
        if dense:
            target = target.type_as(pred)
            if 0 <= ignore_index < c:  # mmseg: a dense target whose argmax is ignore_index is ignored
                keep = (target.argmax(dim=1, keepdim=True) != ignore_index).type_as(pred)
                w = keep if w is None else w * keep
            positive = target
        else:
            if c == 1:  # mmseg's binary case: one channel, label 1 is the positive class
                target = torch.where(target == ignore_index, target, 1 - target)
            positive = None
        if isinstance(alpha, torch.Tensor):  # per-class alpha: alpha_t folded into the weight
            a = _per_class(alpha, "alpha", c, pred)
            if positive is None:
                classes = torch.arange(c, device=pred.device).reshape(1, c, *([1] * (pred.dim() - 2)))
                positive = (target.unsqueeze(1) == classes).type_as(pred)
            alpha_t = a * positive + (1 - a) * (1 - positive)
            w = alpha_t if w is None else w * alpha_t
            alpha = -1.0
        return mm.sigmoid_loss(
            pred,
            target,
            dense,
            w,
            reduction,
            avg_factor,
            alpha=alpha,
            gamma=self.gamma,
            ignore_index=ignore_index,
            backend=self.backend,
        )

    def _softmax(self, pred, target, dense, w, reduction, avg_factor, ignore_index):
        if dense or target.is_floating_point():
            raise ValueError("target must be class indices (N, H, W) for use_sigmoid=False")

        if w is not None and w.shape[1] != 1:
            raise ValueError("weight for use_sigmoid=False must be per pixel, not per class")
        return mm.softmax_loss(
            pred,
            target,
            None if w is None else w.squeeze(1),
            reduction,
            avg_factor,
            alpha=self.alpha,
            class_weight=self.class_weight,
            gamma=self.gamma,
            ignore_index=ignore_index,
            avg_non_ignore=self.avg_non_ignore,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"use_sigmoid={self.use_sigmoid}, gamma={self.gamma}, alpha={self.alpha}, reduction={self.reduction!r}, "
            f"loss_weight={self.loss_weight}, loss_name={self.loss_name!r}, backend={self.backend!r}"
        )


mm.register(TritonFocalLoss, "mmseg")
