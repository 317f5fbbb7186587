"""mmdetection drop-ins in mmdet's ``MODELS`` registry (``pip install "triton-focal[mmdet]"``):
``TritonFocalLoss``, and the focal family below.

In a config, beside the model::

    custom_imports = dict(imports=['triton_focal.integrations.mmdet'], allow_failed_imports=False)
    model = dict(
        bbox_head=dict(
            loss_cls=dict(type='TritonFocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0)))

It keeps mmdet's ``FocalLoss`` contract (``mmdet/models/losses/focal_loss.py``): the constructor
arguments ``use_sigmoid``, ``gamma``, ``alpha``, ``reduction``, ``loss_weight``, ``activated``;
``forward(pred, target, weight=None, avg_factor=None, reduction_override=None)``; targets as
class indices ``(N,)`` with ``C`` = background, or one-hot / soft ``(N, C)``; ``weight`` of shape
``(N,)``, ``(N, C)`` or ``(N * C,)``; mmdet's reductions (``weight_reduce_loss``: the mean over all
``N * C`` elements, or ``sum / (avg_factor + eps)``). The sigmoid loss runs
:func:`triton_focal.sigmoid_focal_loss` on the class indices (no one-hot is made) and its sum
(one fused pass; the division by ``avg_factor`` is a scalar op).

Beyond mmdet's ``FocalLoss`` (which supports only ``use_sigmoid=True``):

* ``use_sigmoid=False``: the softmax focal loss of ``(N, C + 1)`` scores (background = the last
  class, mmdet's softmax convention) with mmdet's ``CrossEntropyLoss`` reductions: ``class_weight``
  (per class, not in the mean's divisor), ``ignore_index`` (-100), ``avg_non_ignore``. ``alpha`` is
  None (no factor), a per-class list, or a number ``a``: RetinaNet's softmax variant, ``a`` for the
  foreground classes and ``1 - a`` for the background.
* ``class_weight`` with the sigmoid loss multiplies class ``c``'s column.
* ``ignore_index`` (a forward keyword too): class-index rows with this label give 0 (still counted in
  the mean's ``N * C``, as mmdet counts zero-weighted anchors).

``activated=True`` (``pred`` already probabilities) computes mmdet's ``py_focal_loss_with_prob``
eagerly: the fused kernels take logits. With ``use_sigmoid=False`` the per-label ``weight`` and
the divisor go into the fused ``focal_loss(element_weight=weight, reduction="sum", normalizer=d)``.

The focal family, each with mmdet's constructor and forward (``docs/integrations.md`` gives the
exact fused call each one makes): ``TritonQualityFocalLoss`` (mmdet's ``QualityFocalLoss``:
``(label, score)`` or dense targets), ``TritonVarifocalLoss`` (``VarifocalLoss``) and
``TritonDistributionFocalLoss`` (``DistributionFocalLoss``)::

    loss_cls=dict(type='TritonQualityFocalLoss', use_sigmoid=True, beta=2.0, loss_weight=1.0)
    loss_dfl=dict(type='TritonDistributionFocalLoss', loss_weight=0.25)
"""

import numbers
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import _validation
from ..losses import distribution_focal_loss, quality_focal_loss, varifocal_loss
from . import _openmmlab as mm


def _number(value, name, *, low=None, high=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return float(value)


def _pred_weight(weight, pred):
    """mmdet's weight shapes for an ``(N, C)`` loss: ``(N, C)`` as is, ``(N,)`` per row (``(N, 1)``),
    ``(N * C,)`` reshaped (FSAF). Returned as a float tensor broadcastable to ``pred``."""
    if weight is None:
        return None
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a tensor of shape (N,), (N, C) or (N * C,), got {type(weight).__name__}")
    n, c = pred.shape
    if weight.shape == pred.shape:
        out = weight
    elif weight.dim() >= 1 and weight.shape[0] == n and weight.numel() == n:
        out = weight.reshape(n, 1)
    elif weight.dim() == 1 and weight.numel() == n * c:
        out = weight.reshape(n, c)
    else:
        raise ValueError(
            f"weight has shape {tuple(weight.shape)}; for pred of shape {tuple(pred.shape)} it must be "
            f"({n},), ({n}, {c}) or ({n * c},)"
        )
    return out if out.is_floating_point() else out.float()


class TritonFocalLoss(nn.Module):
    """mmdet's ``FocalLoss`` on triton_focal's fused kernels (see the module docstring).

    Args:
        use_sigmoid: True: one-vs-all sigmoid focal loss (mmdet's ``FocalLoss``); False: softmax.
        gamma: focusing parameter ``>= 0``.
        alpha: sigmoid: the weight of positives (default 0.25, mmdet's; negative for none).
            Softmax: None (default), a per-class list, or a number (foreground ``a``, background ``1 - a``).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        loss_weight: factor multiplying the loss.
        activated: ``pred`` holds probabilities, not logits (sigmoid only; computed eagerly).
        class_weight: per-class weights (a list or tensor of ``C`` values).
        ignore_index: class-index label to leave out (None: -100, which matches no label).
        avg_non_ignore: softmax ``"mean"``: divide by the non-ignored labels, not all of them.
        backend: triton_focal's ``"auto"``, ``"triton"``, ``"compile"`` or ``"reference"``.
    """

    def __init__(
        self,
        use_sigmoid: bool = True,
        gamma: float = 2.0,
        alpha=None,
        reduction: str = "mean",
        loss_weight: float = 1.0,
        activated: bool = False,
        class_weight=None,
        ignore_index: Optional[int] = None,
        avg_non_ignore: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        mm.check_flag(use_sigmoid, "use_sigmoid")
        mm.check_flag(activated, "activated")
        if activated and not use_sigmoid:
            raise ValueError("activated=True needs use_sigmoid=True (probabilities of a sigmoid loss)")
        self.use_sigmoid = use_sigmoid
        self.activated = activated
        self.gamma = _number(gamma, "gamma", low=0)
        if use_sigmoid:
            self.alpha = 0.25 if alpha is None else _number(alpha, "alpha", high=1)
        elif alpha is None or isinstance(alpha, numbers.Real):
            self.alpha = None if alpha is None else _number(alpha, "alpha", low=0, high=1)
        else:
            self.alpha = mm.as_class_tensor(alpha, "alpha", torch.empty(0))
            _validation.check_per_class("alpha", self.alpha, None, None, validate=True)
        mm.check_reduction(reduction)
        self.reduction = reduction
        self.loss_weight = _number(loss_weight, "loss_weight")
        self.class_weight = mm.as_class_tensor(class_weight, "class_weight", torch.empty(0))
        if self.class_weight is not None:
            _validation.check_per_class("class_weight", self.class_weight, None, None, validate=True)
        if ignore_index is not None:
            _validation.check_ignore_index(ignore_index)
        self.ignore_index = ignore_index
        self.avg_non_ignore = mm.check_flag(avg_non_ignore, "avg_non_ignore")
        self.backend = mm.check_backend(backend)

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        weight: Optional[torch.Tensor] = None,
        avg_factor=None,
        reduction_override: Optional[str] = None,
        ignore_index: Optional[int] = None,
        **kwargs,
    ) -> torch.Tensor:
        """The loss of ``pred`` ``(N, C)`` against ``target``: class indices ``(N,)`` in ``[0, C]``
        (``C`` = background) or one-hot / soft ``(N, C)``; ``weight`` ``(N,)``, ``(N, C)`` or
        ``(N * C,)``; ``avg_factor`` divides the sum (mmdet's ``"mean"``)."""
        reduction = mm.check_call(pred, target, self.reduction, reduction_override, avg_factor)
        ignore_index = self.ignore_index if ignore_index is None else ignore_index
        if ignore_index is None:
            ignore_index = -100
        _validation.check_ignore_index(ignore_index)
        if self.use_sigmoid:
            loss = self._sigmoid(pred, target, weight, reduction, avg_factor, ignore_index)
        else:
            loss = self._softmax(pred, target, weight, reduction, avg_factor, ignore_index)
        return self.loss_weight * loss

    def _sigmoid(self, pred, target, weight, reduction, avg_factor, ignore_index):
        if pred.dim() != 2:
            raise ValueError(f"pred must be (N, C) logits, got shape {tuple(pred.shape)}")
        n, c = pred.shape
        dense = target.dim() == pred.dim()
        if dense:
            if target.shape != pred.shape:
                raise ValueError(
                    f"target of shape {tuple(target.shape)} must be (N,) class indices or {tuple(pred.shape)}"
                )
            target = target.type_as(pred)  # mmdet's one-hot targets may be integers
        elif target.dim() != 1 or target.shape[0] != n:
            raise ValueError(
                f"target of shape {tuple(target.shape)} must be ({n},) class indices (label {c} = background) "
                f"or one-hot / soft ({n}, {c})"
            )
        w = _pred_weight(weight, pred)
        cw = self.class_weight
        if cw is not None:
            mm.check_class_count(cw, "class_weight", c)
            cw = cw.to(device=pred.device, dtype=pred.dtype).reshape(1, c)
            w = cw if w is None else w * cw
        if self.activated:
            return self._activated(pred, target, dense, w, reduction, avg_factor, ignore_index)
        return mm.sigmoid_loss(
            pred,
            target,
            dense,
            w,
            reduction,
            avg_factor,
            alpha=self.alpha,
            gamma=self.gamma,
            ignore_index=ignore_index,
            backend=self.backend,
        )

    def _activated(self, pred, target, dense, w, reduction, avg_factor, ignore_index):
        """mmdet's ``py_focal_loss_with_prob`` (``pred`` holds probabilities)."""
        c = pred.shape[1]
        if not dense:
            ignored = target == ignore_index
            labels = torch.where(ignored, torch.full_like(target, c), target)
            _validation.check_class_indices(labels, c + 1, -100, validate=False)
            target = F.one_hot(labels.long(), num_classes=c + 1)[:, :c].type_as(pred)
            keep = (~ignored).unsqueeze(1).type_as(pred)
            w = keep if w is None else w * keep
        pt = (1 - pred) * target + pred * (1 - target)
        alpha = self.alpha
        factor = pt.pow(self.gamma) if alpha < 0 else (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(self.gamma)
        loss = F.binary_cross_entropy(pred, target, reduction="none") * factor
        if w is not None:
            loss = loss * w
        if reduction == "none":
            return loss
        return mm.reduce_sum(loss.sum(), loss.numel(), reduction, avg_factor)

    def _softmax(self, pred, target, weight, reduction, avg_factor, ignore_index):
        if pred.dim() < 2:
            raise ValueError(f"pred must be (N, C + 1) scores (background last), got shape {tuple(pred.shape)}")
        if target.is_floating_point():
            raise ValueError("target must be class indices for use_sigmoid=False (soft targets need use_sigmoid=True)")
        k = pred.shape[1]
        alpha = self.alpha
        if isinstance(alpha, float):
            alpha = torch.full((k,), alpha, device=pred.device)
            alpha[-1] = 1 - self.alpha

        if weight is not None and (not isinstance(weight, torch.Tensor) or weight.numel() != target.numel()):
            raise ValueError(
                f"weight must be a tensor with one value per label ({tuple(target.shape)}), got "
                f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}"
            )

        return mm.softmax_loss(
            pred,
            target,
            None if weight is None else weight.reshape(target.shape),
            reduction,
            avg_factor,
            alpha=alpha,
            class_weight=self.class_weight,
            gamma=self.gamma,
            ignore_index=ignore_index,
            avg_non_ignore=self.avg_non_ignore,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"use_sigmoid={self.use_sigmoid}, gamma={self.gamma}, alpha={self.alpha}, reduction={self.reduction!r}, "
            f"loss_weight={self.loss_weight}, activated={self.activated}, backend={self.backend!r}"
        )


mm.register(TritonFocalLoss, "mmdet")


def _check_loss_weight_and_backend(module, loss_weight, backend):
    module.loss_weight = _number(loss_weight, "loss_weight")
    module.backend = mm.check_backend(backend)


def _anchor_weight(weight, pred):
    """mmdet multiplies QFL's per-anchor loss (``pred``'s shape without the classes, dimension 1)
    by ``weight``: it must broadcast to that shape without growing it. Returned expanded to it."""
    if weight is None:
        return None
    anchors = pred.shape[:1] + pred.shape[2:]
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a tensor of {tuple(anchors)}, one per anchor, got {type(weight).__name__}")
    try:
        shape = torch.broadcast_shapes(weight.shape, anchors)
    except RuntimeError:
        shape = None
    if shape != anchors:
        raise ValueError(
            f"weight has shape {tuple(weight.shape)}; QualityFocalLoss sums over the classes first, so for pred "
            f"of shape {tuple(pred.shape)} it must be one value per anchor, {tuple(anchors)}"
        )
    return mm.float_weight(weight.expand(anchors))


def _quality_target(target, pred):
    """mmdet's two QFL targets: the tuple ``(label, score)`` (label ``C`` = background) or a dense
    ``(N, C, ...)`` score tensor. Returns ``(target, score)`` as the fused loss takes them."""
    if isinstance(target, torch.Tensor):
        if target.shape != pred.shape:
            raise ValueError(
                f"a tensor target must have pred's shape {tuple(pred.shape)} (dense scores), got "
                f"{tuple(target.shape)}; class indices go in a tuple (label, score)"
            )
        return target.type_as(pred), None  # mmdet's dense targets may be integer one-hots
    if not isinstance(target, (tuple, list)) or len(target) != 2:
        raise TypeError(
            "target must be a tuple (label, score) of (N,) tensors or a dense tensor of pred's shape, got "
            f"{type(target).__name__}" + (f" of {len(target)} elements" if isinstance(target, (tuple, list)) else "")
        )
    label, score = target
    if pred.dim() != 2:
        raise ValueError(f"pred must be (N, C) for a (label, score) target, got shape {tuple(pred.shape)}")
    n, c = pred.shape
    if not isinstance(label, torch.Tensor) or label.is_floating_point() or label.dtype == torch.bool:
        kind = label.dtype if isinstance(label, torch.Tensor) else type(label).__name__
        raise TypeError(f"target's label must be a tensor of class indices (integers), got {kind}")
    if not isinstance(score, torch.Tensor) or not score.is_floating_point():
        kind = score.dtype if isinstance(score, torch.Tensor) else type(score).__name__
        raise TypeError(f"target's score must be a floating-point tensor, got {kind}")
    if label.shape != (n,) or score.shape != (n,):
        raise ValueError(
            f"target's label and score must both be ({n},), one per anchor, got {tuple(label.shape)} and "
            f"{tuple(score.shape)}"
        )
    # mmdet's positives are the labels in [0, C); every other label (C, -1, ...) is background.
    # One pass over N integers, where the loss reads N * C logits.
    label = label.masked_fill((label < 0) | (label >= c), c)
    return label, score


class TritonQualityFocalLoss(nn.Module):
    """mmdet's ``QualityFocalLoss`` (``mmdet/models/losses/gfocal_loss.py``: GFL, TOOD, RTMDet) on the
    fused :func:`triton_focal.quality_focal_loss`.

    ``forward(pred, target, weight=None, avg_factor=None, reduction_override=None)``: ``pred``
    ``(N, C)`` logits; ``target`` the tuple ``(label, score)`` (``(N,)`` each; labels outside
    ``[0, C)`` are background, as in mmdet) or a dense score tensor of ``pred``'s shape (mmdet's
    ``quality_focal_loss_tensor_target``). As in mmdet the loss is summed over the classes first:
    ``weight`` is one value per anchor, ``"none"`` gives ``(N,)``, ``"mean"`` divides by ``N`` (or
    ``avg_factor + eps``). That is ``quality_focal_loss(pred, label, score, beta=beta,
    weight=weight[:, None], reduction="sum", normalizer=N or avg_factor + eps)``.

    Args:
        use_sigmoid: must be True (mmdet's QFL is sigmoid only).
        beta: the modulating exponent, ``>= 0``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        loss_weight: factor multiplying the loss.
        activated: ``pred`` holds probabilities (mmdet's ``quality_focal_loss_with_prob``), computed
            eagerly with mmdet's formula: the fused kernel takes logits, and a logit recovered from a
            probability loses its precision where mmdet's BCE clamps.
        backend: triton_focal's ``"auto"``, ``"triton"``, ``"compile"`` or ``"reference"``.
    """

    def __init__(
        self,
        use_sigmoid: bool = True,
        beta: float = 2.0,
        reduction: str = "mean",
        loss_weight: float = 1.0,
        activated: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        if mm.check_flag(use_sigmoid, "use_sigmoid") is not True:
            raise ValueError("use_sigmoid must be True: mmdet's QualityFocalLoss is a sigmoid loss")
        self.use_sigmoid = True
        self.beta = _number(beta, "beta", low=0)
        mm.check_reduction(reduction)
        self.reduction = reduction
        self.activated = mm.check_flag(activated, "activated")
        _check_loss_weight_and_backend(self, loss_weight, backend)

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        """The loss of ``pred`` against ``(label, score)`` or dense scores (see the class docstring)."""
        reduction = mm.resolve_reduction(self.reduction, reduction_override)
        mm.check_avg_factor(avg_factor, reduction)
        mm.check_pred(pred)
        if pred.dim() < 2:
            raise ValueError(f"pred must be (N, C) logits, got shape {tuple(pred.shape)}")
        target, score = _quality_target(target, pred)
        w = _anchor_weight(weight, pred)
        if self.activated:
            loss = self._with_prob(pred, target, score, w, reduction, avg_factor)
        else:
            count = pred.numel() // max(pred.shape[1], 1)
            fused, normalizer = mm.fused_reduction(reduction, count, avg_factor, pred)
            loss = quality_focal_loss(
                pred,
                target,
                score,
                beta=self.beta,
                weight=None if w is None else w.unsqueeze(1),
                reduction=fused,
                normalizer=normalizer,
                backend=self.backend,
            )
            if reduction == "none":
                loss = loss.sum(dim=1)
        return self.loss_weight * loss

    def _with_prob(self, pred, target, score, w, reduction, avg_factor):
        """mmdet's ``quality_focal_loss_tensor_target(activated=True)``; a ``(label, score)`` target
        is its dense form (mmdet's ``quality_focal_loss_with_prob`` computes the same)."""
        if score is not None:
            c = pred.shape[1]
            one_hot = F.one_hot(target.long(), c + 1)[:, :c].type_as(pred)
            target = one_hot * score.type_as(pred).unsqueeze(1)
        loss = F.binary_cross_entropy(pred, torch.zeros_like(pred), reduction="none") * pred.pow(self.beta)
        pos = target != 0
        loss = loss.masked_scatter(
            pos,
            F.binary_cross_entropy(pred[pos], target[pos], reduction="none")
            * (target[pos] - pred[pos]).abs().pow(self.beta),
        )
        loss = loss.sum(dim=1)
        if w is not None:
            loss = loss * w
        if reduction == "none":
            return loss
        return mm.reduce_sum(loss.sum(), loss.numel(), reduction, avg_factor)

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta}, reduction={self.reduction!r}, loss_weight={self.loss_weight}, "
            f"activated={self.activated}, backend={self.backend!r}"
        )


class TritonVarifocalLoss(nn.Module):
    """mmdet's ``VarifocalLoss`` (``mmdet/models/losses/varifocal_loss.py``: VFNet) on the fused
    :func:`triton_focal.varifocal_loss`.

    ``forward(pred, target, weight=None, avg_factor=None, reduction_override=None)``: ``pred``
    ``(N, C)`` logits, ``target`` the dense IoU-aware scores of its shape (``t > 0`` positive, as
    in mmdet); ``weight`` ``(N, C)``, ``(N,)`` (per anchor) or ``(N * C,)``; ``"mean"`` over all
    ``N * C`` elements or ``sum / (avg_factor + eps)``. That is ``varifocal_loss(pred, target,
    alpha=alpha, gamma=gamma, iou_weighted=iou_weighted, weight=weight, reduction="sum",
    normalizer=N * C or avg_factor + eps)``.

    Args:
        use_sigmoid: must be True (mmdet's VFL is sigmoid only).
        alpha: the negatives' weight, ``>= 0``.
        gamma: the negatives' exponent, ``>= 0``.
        iou_weighted: positives weighted by their target score (True) or by 1.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        loss_weight: factor multiplying the loss.
        backend: triton_focal's ``"auto"``, ``"triton"``, ``"compile"`` or ``"reference"``.
    """

    def __init__(
        self,
        use_sigmoid: bool = True,
        alpha: float = 0.75,
        gamma: float = 2.0,
        iou_weighted: bool = True,
        reduction: str = "mean",
        loss_weight: float = 1.0,
        backend: str = "auto",
    ):
        super().__init__()
        if mm.check_flag(use_sigmoid, "use_sigmoid") is not True:
            raise ValueError("use_sigmoid must be True: mmdet's VarifocalLoss is a sigmoid loss")
        self.use_sigmoid = True
        self.alpha = _number(alpha, "alpha", low=0)
        self.gamma = _number(gamma, "gamma", low=0)
        self.iou_weighted = mm.check_flag(iou_weighted, "iou_weighted")
        mm.check_reduction(reduction)
        self.reduction = reduction
        _check_loss_weight_and_backend(self, loss_weight, backend)

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        """The loss of ``pred`` against dense scores ``target`` of its shape."""
        reduction = mm.check_call(pred, target, self.reduction, reduction_override, avg_factor)
        if pred.dim() < 2 or target.shape != pred.shape:
            raise ValueError(
                f"pred (N, C) and target must have the same shape (dense IoU-aware scores), got "
                f"{tuple(pred.shape)} and {tuple(target.shape)}"
            )
        if pred.dim() == 2:
            w = _pred_weight(weight, pred)
        else:  # mmdet's loss * weight: broadcastable to the loss (checked by the loss)
            w = mm.float_weight(weight)
        fused, normalizer = mm.fused_reduction(reduction, pred.numel(), avg_factor, pred)
        loss = varifocal_loss(
            pred,
            target.type_as(pred),
            alpha=self.alpha,
            gamma=self.gamma,
            iou_weighted=self.iou_weighted,
            weight=w,
            reduction=fused,
            normalizer=normalizer,
            backend=self.backend,
        )
        return self.loss_weight * loss

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, gamma={self.gamma}, iou_weighted={self.iou_weighted}, "
            f"reduction={self.reduction!r}, loss_weight={self.loss_weight}, backend={self.backend!r}"
        )


class TritonDistributionFocalLoss(nn.Module):
    """mmdet's ``DistributionFocalLoss`` (``mmdet/models/losses/gfocal_loss.py``: GFL's box sides)
    on the fused :func:`triton_focal.distribution_focal_loss`.

    ``forward(pred, target, weight=None, avg_factor=None, reduction_override=None)``: ``pred``
    ``(N, n + 1)`` bin logits, ``target`` ``(N,)`` float positions in ``[0, n]``; ``weight``
    broadcastable to ``(N,)``; ``"mean"`` over the ``N`` rows or ``sum / (avg_factor + eps)``.
    That is ``distribution_focal_loss(pred, target, weight=weight, reduction="sum",
    normalizer=N or avg_factor + eps)``. At ``target = n`` (the last bin) mmdet indexes past the
    bins; here the last bin takes the whole weight. Targets outside ``[0, n]`` are a ``ValueError``
    (checked for CPU tensors).

    Args:
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        loss_weight: factor multiplying the loss.
        backend: triton_focal's ``"auto"``, ``"triton"``, ``"compile"`` or ``"reference"``.
    """

    def __init__(self, reduction: str = "mean", loss_weight: float = 1.0, backend: str = "auto"):
        super().__init__()
        mm.check_reduction(reduction)
        self.reduction = reduction
        _check_loss_weight_and_backend(self, loss_weight, backend)

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        """The loss of ``pred`` ``(N, n + 1)`` against positions ``target`` ``(N,)``."""
        reduction = mm.check_call(pred, target, self.reduction, reduction_override, avg_factor)
        if pred.dim() != 2 or target.shape != pred.shape[:1]:
            raise ValueError(
                f"pred must be (N, n + 1) bin logits and target (N,) positions, got {tuple(pred.shape)} and "
                f"{tuple(target.shape)}"
            )
        if weight is not None and not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight must be a tensor broadcastable to ({pred.shape[0]},), got {type(weight).__name__}")
        fused, normalizer = mm.fused_reduction(reduction, pred.shape[0], avg_factor, pred)
        loss = distribution_focal_loss(
            pred,
            target,
            weight=mm.float_weight(weight),
            reduction=fused,
            normalizer=normalizer,
            backend=self.backend,
        )
        return self.loss_weight * loss

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, loss_weight={self.loss_weight}, backend={self.backend!r}"


for _cls in (TritonQualityFocalLoss, TritonVarifocalLoss, TritonDistributionFocalLoss):
    mm.register(_cls, "mmdet")
del _cls
