"""What the mmdetection and mmsegmentation drop-ins share: OpenMMLab's reductions and registration.

OpenMMLab reduces an element-wise loss with ``weight_reduce_loss`` (``mmdet/models/losses/utils.py``,
the same in mmseg): ``"mean"`` is the mean over *all* elements (zero-weighted ones included), or
``sum / (avg_factor + eps)`` when ``avg_factor`` is given, with ``eps = torch.finfo(torch.float32).eps``;
``"sum"`` with ``avg_factor`` is a ``ValueError``; ``"none"`` ignores ``avg_factor``.

:func:`fused_reduction` maps that onto a fused loss's own ``reduction="sum", normalizer=...`` (the
division happens in the loss, and no per-element loss is made for a reduced result).
"""

import importlib
from typing import Optional

import torch

from .. import _validation, backends
from ..functional import focal_loss, sigmoid_focal_loss

EPS = torch.finfo(torch.float32).eps

REDUCTIONS = ("none", "mean", "sum")


def check_flag(value, name):
    """``value`` if it is True or False, else a ``TypeError``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_backend(backend):
    backends.check_name(backend)
    return backend


def check_reduction(reduction, name="reduction"):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name} must be one of 'none', 'mean', 'sum', got {reduction!r}")


def resolve_reduction(default, reduction_override):
    """mmdet's ``reduction_override if reduction_override else self.reduction``, checked."""
    if reduction_override is not None:
        check_reduction(reduction_override, "reduction_override")
        return reduction_override
    return default


def check_avg_factor(avg_factor, reduction):
    if avg_factor is None:
        return
    if reduction == "sum":
        raise ValueError('avg_factor can not be used with reduction="sum"')
    if isinstance(avg_factor, bool) or not isinstance(avg_factor, (int, float, torch.Tensor)):
        raise TypeError(f"avg_factor must be a number or a 0-dim tensor, got {type(avg_factor).__name__}")
    if isinstance(avg_factor, torch.Tensor):
        if avg_factor.numel() != 1:
            raise ValueError(f"avg_factor must be a single value, got a tensor of shape {tuple(avg_factor.shape)}")
        if avg_factor.dtype == torch.bool or avg_factor.is_complex():
            raise TypeError(f"avg_factor must be a real number tensor, got {avg_factor.dtype}")
    if reduction != "mean":  # "none" ignores it, as mmdet does
        return
    # A count of positives or pixels: 0 is fine (the eps keeps the division finite), a negative
    # or non-finite one is a bug upstream. A device tensor is not read (that would be a host sync).
    if isinstance(avg_factor, torch.Tensor):
        if not _validation.values_known(avg_factor, False):
            return
        value = avg_factor.reshape(()).item()
    else:
        value = avg_factor
    if not 0 <= value < float("inf"):
        raise ValueError(f"avg_factor must be a finite number >= 0, got {value}")


def check_pred(pred):
    if not isinstance(pred, torch.Tensor) or not pred.is_floating_point():
        raise TypeError(f"pred must be a floating-point tensor, got {type(pred).__name__}")


def check_call(pred, target, default_reduction, reduction_override, avg_factor):
    """The checks a ``forward(pred, target, ..., avg_factor, reduction_override)`` starts with; the reduction."""
    reduction = resolve_reduction(default_reduction, reduction_override)
    check_avg_factor(avg_factor, reduction)
    check_pred(pred)
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a tensor, got {type(target).__name__}")
    return reduction


def reduce_sum(loss_sum, count, reduction, avg_factor):
    """``weight_reduce_loss`` given the sum of the weighted losses and the number of elements."""
    if reduction == "sum":
        return loss_sum
    if avg_factor is None:
        return loss_sum / max(count, 1)  # an empty batch gives 0, not mmdet's NaN
    if isinstance(avg_factor, torch.Tensor):
        avg_factor = avg_factor.to(loss_sum.device).reshape(())
    return loss_sum / (avg_factor + EPS)


def fused_reduction(reduction, count, avg_factor, like):
    """``(reduction, normalizer)`` for a fused loss whose ``reduction="sum", normalizer=n`` is
    ``sum / n``, giving ``weight_reduce_loss``'s result over ``count`` losses: ``"mean"`` is
    ``sum / count`` (an empty batch gives 0, not mmdet's NaN) or ``sum / (avg_factor + eps)``.
    ``"none"`` ignores ``avg_factor``, as mmdet does."""
    if reduction != "mean":
        return reduction, None
    if avg_factor is None:
        return "sum", max(count, 1)
    if isinstance(avg_factor, torch.Tensor):
        avg_factor = avg_factor.to(like.device).reshape(())
    return "sum", avg_factor + EPS


def float_weight(weight):
    """mmdet's label weights may be integer masks; the fused losses take float weights."""
    return weight if weight is None or weight.is_floating_point() else weight.float()


def as_class_tensor(value, name, like: torch.Tensor) -> Optional[torch.Tensor]:
    """A list / tuple / tensor of per-class values as a float tensor on ``like``'s device."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        # float64 keeps a config's decimals (0.2) exact until they meet the logits' dtype
        value = torch.tensor(value, dtype=torch.float64)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a list of per-class values or a tensor, got {type(value).__name__}")
    return value.to(device=like.device, dtype=value.dtype if value.is_floating_point() else torch.float32)


def check_class_count(value, name, num_classes):
    if value is not None and value.numel() != num_classes:
        raise ValueError(f"{name} has {value.numel()} values but the prediction has {num_classes} classes")


def register(cls, scope):
    """Register ``cls`` in ``scope``'s ``MODELS`` registry (``mmdet.registry`` / ``mmseg.registry``),
    else in mmengine's root ``MODELS`` (which every scope's registry falls back to), if the name
    is free there. Without mmengine nothing is registered and the class is still usable."""
    registry = None
    try:
        registry = importlib.import_module(f"{scope}.registry").MODELS
    except Exception:  # the framework is not installed (or does not import here)
        try:
            registry = importlib.import_module("mmengine.registry").MODELS
        except Exception:
            return None
        if cls.__name__ in registry.module_dict:
            return None
    if registry.module_dict.get(cls.__name__) is not cls:
        registry.register_module(name=cls.__name__, module=cls, force=True)
    return registry


def sigmoid_loss(pred, target, dense, w, reduction, avg_factor, *, alpha, gamma, ignore_index, backend):
    """The sigmoid focal loss of ``pred`` (class indices unless ``dense``) weighted by ``w``, reduced."""
    settings = dict(alpha=alpha, gamma=gamma, weight=w, backend=backend)
    if not dense:
        settings["ignore_index"] = ignore_index
    if reduction == "none":
        return sigmoid_focal_loss(pred, target, reduction="none", **settings)
    total = sigmoid_focal_loss(pred, target, reduction="sum", **settings)
    return reduce_sum(total, pred.numel(), reduction, avg_factor)


def softmax_loss(
    pred,
    target,
    element_weight,
    reduction,
    avg_factor,
    *,
    alpha,
    class_weight,
    gamma,
    ignore_index,
    avg_non_ignore,
    backend,
):
    """The softmax focal loss of ``pred`` ``(N, C, ...)`` against class indices with ``CrossEntropyLoss``'s
    reductions. ``element_weight``: None, or the caller's weight shaped like ``target``; it and the
    divisor go into the fused loss (``reduction="sum", normalizer=...``: mmdet's and mmseg's mean
    divides by the label count or ``avg_factor``, not by the weights' sum as a weighted mean would)."""
    c = pred.shape[1]
    if alpha is not None:
        check_class_count(alpha, "alpha", c)
        alpha = alpha.to(pred.device)
    if class_weight is not None:
        check_class_count(class_weight, "class_weight", c)
        class_weight = class_weight.to(pred.device)
    if element_weight is not None:
        # focal_loss checks it too, as element_weight; the caller passed it as weight
        _validation.check_weight_values(element_weight, False)
    if reduction == "mean" and avg_factor is None and avg_non_ignore:
        avg_factor = (target != ignore_index).sum()
    reduction, normalizer = fused_reduction(reduction, target.numel(), avg_factor, pred)
    return focal_loss(
        pred,
        target,
        gamma=gamma,
        alpha=alpha,
        weight=class_weight,
        ignore_index=ignore_index,
        element_weight=float_weight(element_weight),
        reduction=reduction,
        normalizer=normalizer,
        backend=backend,
    )
