"""Argument checks and canonical shapes, in one place, before any kernel runs.

Every public function passes its arguments through here. Bad input raises a
``ValueError`` (or ``TypeError`` for a wrong dtype or kind) whose message names the
argument. Valid input comes back in the canonical form every backend takes: logits
viewed as ``(N, C, P)`` (``P`` the product of the spatial sizes, 1 for ``(N, C)``),
class-index targets as ``(N, P)``, and per-class tensors as float32 ``(C,)`` (float64 for float64 input)
on the input's device.
"""

import math
import numbers
from typing import NamedTuple, Optional, Union

import torch

from ._autograd_state import functorch_active
from .reference import compute_dtype  # per-class tensors take the arithmetic's dtype

REDUCTIONS = ("none", "mean", "sum")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

PerClass = Union[float, torch.Tensor]


class SoftmaxArgs(NamedTuple):
    input: torch.Tensor  # (N, C, P)
    target: torch.Tensor  # (N, P)
    gamma: PerClass
    alpha: Optional[PerClass]
    weight: Optional[torch.Tensor]
    ignore_index: int
    reduction: str
    label_smoothing: float
    loss_shape: torch.Size  # shape of the unreduced loss: the target's
    z_loss: float = 0.0
    softcap: Optional[float] = None
    poly_epsilon: float = 0.0
    element_weight: Optional[torch.Tensor] = None  # (N, P), like target
    normalizer: Optional[Union[float, torch.Tensor]] = None


class SigmoidArgs(NamedTuple):
    input: torch.Tensor  # (N, C, P)
    target: torch.Tensor  # (N, C, P) float, or (N, P) class indices
    alpha: float
    gamma: PerClass
    weight: Optional[torch.Tensor]  # expanded to (N, C, P)
    ignore_index: int
    reduction: str
    normalizer: Optional[Union[float, torch.Tensor]]
    loss_shape: torch.Size  # shape of the unreduced loss: the input's


def check_logits(input):
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if input.layout != torch.strided:
        raise TypeError(
            f"input must be a dense (strided) tensor of logits, got layout {input.layout}; pass input.to_dense()"
        )
    if input.dtype not in FLOAT_DTYPES:
        raise TypeError(f"input must be float16, bfloat16, float32 or float64 logits, got {input.dtype}")
    if input.dim() == 0:
        raise ValueError("input must have a class dimension: (C,), (N, C) or (N, C, d1, ..., dk), got a 0-dim tensor")


def check_same_device(input, name, tensor):
    if isinstance(tensor, torch.Tensor) and tensor.device != input.device:
        raise ValueError(f"{name} is on {tensor.device} but input is on {input.device}; move them to one device")


def check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def is_real_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def values_known(tensor, validate):
    """Tensor values are checked where that costs no device-to-host sync (or on request),
    and never while torch.compile traces (a value-dependent branch would break the graph)."""
    if torch.compiler.is_compiling() or functorch_active():
        # Under torch.func transforms (vmap, grad, jacrev) a value-dependent branch cannot run.
        return False
    return validate or tensor.device.type == "cpu"


def first_bad_value(tensor, bad):
    """The first offending value and its position, for an error message that stays short
    (a vocabulary-sized tensor is never printed whole)."""
    index = tuple(int(i) for i in bad.nonzero()[0])
    return f"{tensor[index].item()} at index {index[0] if len(index) == 1 else index}"


def check_per_class(name, value, num_classes, input, *, validate, allow_scalar=True):
    """A finite number ``>= 0``, or a 1-D float tensor of ``num_classes`` such values.

    ``num_classes`` and ``input`` may be None (a module's constructor, before any input is
    seen): then the kind and the values are checked, and the tensor comes back as given.
    """
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
        if value.dim() != 1 or (num_classes is not None and value.shape[0] != num_classes):
            expected = "C" if num_classes is None else num_classes
            raise ValueError(f"{name} must have one value per class: shape ({expected},), got {tuple(value.shape)}")
        if input is not None:
            check_same_device(input, name, value)
        if values_known(value, validate):
            bad = ~((value >= 0) & torch.isfinite(value))  # NaN fails both
            if bool(bad.any()):
                raise ValueError(f"{name} must be finite and non-negative, got {first_bad_value(value, bad)}")
        if input is None:
            return value
        # The graph is kept: the reference differentiates a tensor that requires grad, the other
        # backends refuse it (refuse_learnable), none drops its gradient silently.
        return value.to(device=input.device, dtype=compute_dtype(input.dtype))
    if not allow_scalar or not is_real_number(value):
        kinds = "a number or a 1-D tensor" if allow_scalar else "a 1-D tensor"
        count = "per-class values" if num_classes is None else f"{num_classes} values"
        hint = " (pass torch.tensor(...))" if isinstance(value, (list, tuple)) else ""
        raise TypeError(f"{name} must be {kinds} of {count}, got {type(value).__name__}{hint}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


INT64_RANGE = (-(2**63), 2**63 - 1)


def check_label_smoothing(label_smoothing):
    if not is_real_number(label_smoothing) or not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
    return float(label_smoothing)


def check_ignore_index(ignore_index):
    if not isinstance(ignore_index, numbers.Integral) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    ignore_index = int(ignore_index)
    if not INT64_RANGE[0] <= ignore_index <= INT64_RANGE[1]:
        raise ValueError(f"ignore_index must fit in int64, as class indices do, got {ignore_index}")
    return ignore_index


def target_for_ignore_index(target, ignore_index):
    """``target``, or its int64 copy where its dtype cannot hold ``ignore_index``.

    ``F.cross_entropy``'s rule: an ``ignore_index`` that the target's dtype cannot represent
    (the default -100 with uint8 targets, 2**40 with int32) matches no element. Compared in
    the target's own dtype it would wrap around (-100 becomes class 156 of a uint8 target) or
    overflow, so such targets are compared as int64 (a copy of the targets, not of the logits;
    targets whose dtype holds ``ignore_index`` are used as they are).
    """
    info = torch.iinfo(target.dtype)
    if info.min <= ignore_index <= info.max:
        return target
    return target.long()


def check_class_indices(target, num_classes, ignore_index, *, validate, background_ok=False):
    """Out-of-range indices are an error where checking them costs no host sync."""
    if target.numel() == 0 or not values_known(target, validate):
        return
    upper = num_classes + 1 if background_ok else num_classes
    # The range of the kept indices first: three small ops where a mask of the bad ones is six
    # (a CPU call at a small size pays per op); that mask only to name the first bad one.
    low, high = torch.aminmax(target.masked_fill(target == ignore_index, 0))
    if 0 <= low.item() and high.item() < upper:
        return
    bad = ((target < 0) | (target >= upper)) & (target != ignore_index)
    if bool(bad.any()):
        value = target[bad].flatten()[0].item()
        allowed = f"[0, {num_classes}]" if background_ok else f"[0, {num_classes})"
        raise ValueError(f"target holds class index {value}, outside {allowed} and not ignore_index={ignore_index}")


def as_ncp(input):
    """View logits ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dk)`` as ``(N, C, P)`` without copying
    where the strides allow (channels-first and channels-last both do)."""
    if input.dim() == 1:
        return input.view(1, -1, 1)
    if input.dim() == 2:
        return input.unsqueeze(2)
    return input.flatten(2)


def check_z_loss(z_loss):
    """The z-loss coefficient: a finite number ``>= 0``."""
    if not is_real_number(z_loss) or not 0.0 <= float(z_loss) < math.inf:
        raise ValueError(f"z_loss must be a finite number >= 0, got {z_loss!r}")
    return float(z_loss)


def check_softcap(softcap):
    """The logit cap ``c`` of ``c * tanh(x / c)``: a finite number ``> 0``, or None."""
    if softcap is None:
        return None
    if not is_real_number(softcap) or not 0.0 < float(softcap) < math.inf:
        raise ValueError(f"softcap must be a finite number > 0 or None, got {softcap!r}")
    return float(softcap)


# Poly-1's epsilon (softmax and sigmoid losses): PolyLoss (Leng et al., 2022) searches eps in
# [-1, ...]. Since -log p >= 1 - p, an element's loss is at least (a + eps) (1 - p_t) ** (gamma + 1)
# (a its alpha factor times (1 - label_smoothing), w_y aside), so eps >= -1 keeps every loss >= 0
# without alpha; below -1 an easy element (p_t -> 1, where -log p_t ~ 1 - p_t) turns negative.
# With alpha < 1 that needs eps >= -alpha, which is left to the user (a negative loss still has
# the intended gradient), so only -1 is enforced.
POLY_EPSILON_MIN = -1.0


def check_poly_epsilon(poly_epsilon):
    """Poly-1's coefficient: a finite number ``>= -1`` (0: off; see ``POLY_EPSILON_MIN``)."""
    if not is_real_number(poly_epsilon) or not POLY_EPSILON_MIN <= float(poly_epsilon) < math.inf:
        raise ValueError(
            f"poly_epsilon must be a finite number >= -1 (0 for off; below -1 the loss of an easy element "
            f"turns negative), got {poly_epsilon!r}"
        )
    return float(poly_epsilon)


def check_element_weight(element_weight, target, input, *, validate):
    """A per-element weight shaped like ``target``: a float tensor of finite values ``>= 0``
    (checked where they are known without a host sync). Any strides, stride 0 included: a
    broadcast weight is passed ``expand``ed, never as a smaller shape, since broadcasting
    aligns dimensions from the right and a per-image ``(N,)`` would silently meet ``W``."""
    if element_weight is None:
        return None
    if not isinstance(element_weight, torch.Tensor):
        raise TypeError(
            f"element_weight must be a float tensor shaped like target, got {type(element_weight).__name__}"
        )
    if not element_weight.is_floating_point():
        raise TypeError(f"element_weight must be a floating-point tensor, got {element_weight.dtype}")
    if element_weight.shape != target.shape:
        raise ValueError(
            f"element_weight must have target's shape {tuple(target.shape)}, got {tuple(element_weight.shape)}; "
            "for a weight shared along some dimensions pass element_weight.expand(target.shape)"
        )
    check_same_device(input, "element_weight", element_weight)
    if element_weight.numel() and values_known(element_weight, validate):
        low, high = torch.aminmax(element_weight)  # NaN propagates and fails the test
        if not bool((low >= 0) & (high < math.inf)):
            bad = ~((element_weight >= 0) & torch.isfinite(element_weight))
            raise ValueError(
                f"element_weight must be finite and non-negative, got {first_bad_value(element_weight, bad)}"
            )
    return element_weight


def _target_shape_hint(input, target):
    """What a class-index shape mismatch most likely means, and its fix ("" if nothing fits).

    Channels-last logits ``(N, H, W, C)`` (a model that ends in ``nn.Linear``, or a
    ``permute`` before the loss) against ``(N, H, W)`` targets: the classes must be in
    dimension 1. Integer one-hot targets have the input's shape: the loss takes indices."""
    if target.shape == input.shape:
        return (
            " The target has the input's shape, class dimension included: if it is one-hot, pass the "
            "class indices target.argmax(1)."
        )
    if input.dim() >= 3 and target.shape == input.shape[:-1]:
        order = ", ".join(str(d) for d in (0, input.dim() - 1, *range(1, input.dim() - 1)))
        return (
            f" The classes must be in dimension 1 (channels-first, (N, C, ...)); for channels-last logits "
            f"({input.shape[-1]} classes last) pass logits.permute({order})."
        )
    return ""


def softmax_args(
    input,
    target,
    gamma,
    alpha,
    weight,
    ignore_index,
    reduction,
    label_smoothing,
    validate=False,
    z_loss=0.0,
    softcap=None,
    check_indices=True,
    poly_epsilon=0.0,
    element_weight=None,
    normalizer=None,
):
    """Check ``focal_loss`` arguments and return them in canonical form. ``check_indices=False``
    leaves the class indices to a backend that checks them in its own pass over the targets.
    ``element_weight`` comes back as ``(N, P)``, like the target."""
    check_logits(input)
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor of class indices, got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(
            f"target must hold class indices (an integer dtype such as torch.long), got {target.dtype}; "
            "class probabilities are not supported"
        )
    expected = input.shape[:1] + input.shape[2:] if input.dim() >= 2 else torch.Size([])
    if target.shape != expected:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match input shape {tuple(input.shape)}: "
            f"expected {tuple(expected)} (input's shape without the class dimension 1)."
            f"{_target_shape_hint(input, target)}"
        )
    check_same_device(input, "target", target)
    check_reduction(reduction)
    num_classes = input.shape[0] if input.dim() == 1 else input.shape[1]
    ignore_index = check_ignore_index(ignore_index)
    gamma = check_per_class("gamma", gamma, num_classes, input, validate=validate)
    if alpha is not None:
        alpha = check_per_class("alpha", alpha, num_classes, input, validate=validate)
    if weight is not None:
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight must be a 1-D tensor of {num_classes} values, got {type(weight).__name__}")
        weight = check_per_class("weight", weight, num_classes, input, validate=validate)
    label_smoothing = check_label_smoothing(label_smoothing)
    element_weight = check_element_weight(element_weight, target, input, validate=validate)
    target = target_for_ignore_index(target, ignore_index)
    if check_indices:
        check_class_indices(target, num_classes, ignore_index, validate=validate)
    n = 1 if input.dim() == 1 else input.shape[0]
    rows = (n, -1) if target.numel() else (n, math.prod(input.shape[2:]))
    return SoftmaxArgs(
        input=as_ncp(input),
        target=target.reshape(rows),
        gamma=gamma,
        alpha=alpha,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        loss_shape=target.shape,
        z_loss=check_z_loss(z_loss),
        softcap=check_softcap(softcap),
        poly_epsilon=check_poly_epsilon(poly_epsilon),
        element_weight=None if element_weight is None else element_weight.reshape(rows),
        normalizer=check_normalizer(normalizer, reduction, input, validate=validate),
    )


def check_normalizer(normalizer, reduction, input, *, validate):
    """A finite positive number, or a 0-dim tensor whose value is checked the same way where
    it is known without a host sync (CPU, or ``validate=True``). A tensor keeps its autograd
    graph: a normalizer that requires grad gets its gradient. ``input`` None (a module's
    constructor) skips the device check."""
    if normalizer is None:
        return None
    if reduction == "none":
        raise ValueError("normalizer divides a reduced loss; it cannot be used with reduction='none'")
    if isinstance(normalizer, torch.Tensor):
        if normalizer.dim() != 0:
            raise ValueError(f"normalizer must be a number or a 0-dim tensor, got shape {tuple(normalizer.shape)}")
        if normalizer.dtype == torch.bool or normalizer.is_complex():
            raise TypeError(f"normalizer must be a real number tensor, got {normalizer.dtype}")
        if input is not None:
            check_same_device(input, "normalizer", normalizer)
        if values_known(normalizer, validate) and not bool((normalizer > 0) & torch.isfinite(normalizer)):
            raise ValueError(f"normalizer must be finite and positive, got tensor({normalizer.item()})")
        return normalizer
    if not is_real_number(normalizer) or not 0.0 < float(normalizer) < math.inf:
        raise ValueError(f"normalizer must be a finite positive number or a 0-dim tensor, got {normalizer!r}")
    return float(normalizer)


def check_weight_values(weight, validate):
    """A sigmoid ``weight`` (any shape broadcastable to the input): finite and non-negative,
    checked where the values are known without a host sync."""
    if values_known(weight, validate):
        bad = ~((weight >= 0) & torch.isfinite(weight))  # NaN fails both
        if bool(bad.any()):
            raise ValueError(f"weight must be finite and non-negative, got {first_bad_value(weight, bad)}")


def check_sigmoid_alpha(alpha):
    """The weight of positives: a finite number (negative for no alpha weighting)."""
    if not is_real_number(alpha):
        raise TypeError(f"alpha must be a number (negative for no alpha weighting), got {type(alpha).__name__}")
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be finite (negative for no alpha weighting), got {alpha}")
    return float(alpha)


def check_dense_target_values(target, validate):
    """Dense targets are probabilities: values in [0, 1], checked where known without a host sync."""
    if target.numel() == 0 or not values_known(target, validate):
        return
    # One vectorized pass without temporaries (a logits-sized mask costs as much as the loss);
    # aminmax propagates NaN, which then fails both comparisons.
    low, high = torch.aminmax(target)
    if not bool((low >= 0) & (high <= 1)):
        bad = ~((target >= 0) & (target <= 1))
        raise ValueError(f"dense target values must lie in [0, 1], got {first_bad_value(target, bad)}")


def sigmoid_args(input, target, alpha, gamma, weight, ignore_index, reduction, normalizer, validate=False):
    """Check ``sigmoid_focal_loss`` arguments and return them in canonical form."""
    check_logits(input)
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    check_same_device(input, "target", target)
    check_reduction(reduction)
    alpha = check_sigmoid_alpha(alpha)
    ignore_index = check_ignore_index(ignore_index)
    num_classes = input.shape[0] if input.dim() == 1 else input.shape[1]
    gamma = check_per_class("gamma", gamma, num_classes, input, validate=validate)
    if target.is_floating_point():
        if target.shape != input.shape:
            raise ValueError(
                f"dense target shape {tuple(target.shape)} must equal input shape {tuple(input.shape)} "
                "(or pass integer class indices without the class dimension)"
            )
        check_dense_target_values(target, validate)
        canonical_target = as_ncp(target)
    elif target.dtype == torch.bool or target.is_complex():
        raise TypeError(f"target must be float (dense) or integer class indices, got {target.dtype}")
    else:
        if input.dim() < 2:
            raise ValueError("class-index targets need input of shape (N, C) or (N, C, d1, ..., dk)")
        expected = input.shape[:1] + input.shape[2:]
        if target.shape != expected:
            # An integer 0/1 mask of input's shape is the usual way to get here.
            if target.shape == input.shape:
                hint = (
                    " A dense 0/1 target must be floating point: pass target.float() (or, for one-hot "
                    "rows, the class indices target.argmax(1))."
                )
            else:
                hint = _target_shape_hint(input, target)
            raise ValueError(
                f"class-index target shape {tuple(target.shape)} does not match input shape "
                f"{tuple(input.shape)}: expected {tuple(expected)} (input's shape without dimension 1).{hint}"
            )
        target = target_for_ignore_index(target, ignore_index)
        check_class_indices(target, num_classes, ignore_index, validate=validate, background_ok=True)
        canonical_target = (
            target.reshape(input.shape[0], -1)
            if target.numel()
            else target.reshape(input.shape[0], math.prod(input.shape[2:]))
        )
    if weight is not None:
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight must be a tensor broadcastable to input, got {type(weight).__name__}")
        check_same_device(input, "weight", weight)
        try:
            broadcast = torch.broadcast_shapes(weight.shape, input.shape)
        except RuntimeError:
            broadcast = None
        if broadcast != input.shape:
            raise ValueError(
                f"weight shape {tuple(weight.shape)} is not broadcastable to input shape {tuple(input.shape)}"
            )
        check_weight_values(weight, validate)
        weight = as_ncp(weight.expand(input.shape))
    return SigmoidArgs(
        input=as_ncp(input),
        target=canonical_target,
        alpha=alpha,
        gamma=gamma,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        normalizer=check_normalizer(normalizer, reduction, input, validate=validate),
        loss_shape=input.shape,
    )


def sigmoid_star_args(input, target, alpha, gamma, reduction):
    """Check ``sigmoid_focal_loss_star`` arguments (dense targets only)."""
    check_logits(input)
    if not isinstance(target, torch.Tensor) or not target.is_floating_point():
        kind = target.dtype if isinstance(target, torch.Tensor) else type(target).__name__
        raise TypeError(f"target of FL* must be a floating-point tensor with input's shape, got {kind}")
    if target.shape != input.shape:
        raise ValueError(f"target shape {tuple(target.shape)} must equal input shape {tuple(input.shape)}")
    check_same_device(input, "target", target)
    check_dense_target_values(target, validate=False)
    check_reduction(reduction)
    alpha = check_sigmoid_alpha(alpha)
    if not is_real_number(gamma) or not 0.0 < float(gamma) < math.inf:
        raise ValueError(f"gamma of FL* must be a finite positive number (the loss divides by it), got {gamma!r}")
    return as_ncp(input), as_ncp(target), alpha, float(gamma), reduction


LEARNABLE_HINT = "pass it detached (.detach()), or compute the loss with backend='reference', which differentiates it"


def refuse_learnable(where, hint=LEARNABLE_HINT, **tensors):
    """A per-class ``alpha``, ``weight`` or ``gamma`` (or a sigmoid ``weight``) that requires
    grad, where the loss cannot differentiate it: a clear error instead of a gradient dropped
    silently (``F.cross_entropy`` refuses such a weight too). Nothing is refused where grad
    is disabled: no gradient is asked for there."""
    if not torch.is_grad_enabled():
        return
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor) and value.requires_grad:
            raise ValueError(f"{name} requires grad, but {where} does not differentiate {name}; {hint}")


# --- the focal family's numbers (sigmoid_term.SigmoidTerm) -------------------------------------


def check_exponent(name, value):
    """A focusing exponent (``beta``, ``gamma``, ``gamma_pos``, ``gamma_neg``): a finite number ``>= 0``."""
    if not is_real_number(value):
        raise TypeError(f"{name} must be a number >= 0, got {type(value).__name__}")
    if not 0.0 <= float(value) < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


def check_unit_interval(name, value, *, what):
    """A number in ``[0, 1)`` (the asymmetric loss's ``clip`` and ``eps``)."""
    if not is_real_number(value) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1) ({what}), got {value!r}")
    return float(value)


def check_flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool (True or False), got {value!r}")
    return value


def check_score(score, args, *, validate):
    """The positive's target value of each row, for class-index targets: a float tensor shaped
    like ``target``, values in ``[0, 1]``; returned in ``args``' canonical ``(N, P)`` form.

    Raises:
        TypeError: ``score`` is not a floating-point tensor.
        ValueError: ``score`` is given with dense targets, has the wrong shape, is on another
            device, or holds values outside ``[0, 1]`` (checked where known without a host sync).
    """
    if score is None:
        return None
    if not isinstance(score, torch.Tensor) or not score.is_floating_point():
        kind = score.dtype if isinstance(score, torch.Tensor) else type(score).__name__
        raise TypeError(f"score must be a floating-point tensor of quality values in [0, 1], got {kind}")
    if args.target.is_floating_point():
        raise ValueError(
            "score goes with class-index targets; dense float targets carry the scores themselves (pass score=None)"
        )
    expected = args.loss_shape[:1] + args.loss_shape[2:]
    if score.shape != expected:
        raise ValueError(f"score shape {tuple(score.shape)} must equal the target's shape {tuple(expected)}")
    check_same_device(args.input, "score", score)
    if score.numel() and values_known(score, validate):
        bad = ~((score >= 0) & (score <= 1))  # NaN fails both
        if bool(bad.any()):
            raise ValueError(f"score values must lie in [0, 1], got {first_bad_value(score, bad)}")
    return score.reshape(args.target.shape)


class DistributionArgs(NamedTuple):
    input: torch.Tensor  # (R, n) rows of bin logits
    target: torch.Tensor  # (R,) float positions
    mask: Optional[torch.Tensor]  # (R,) bool, True = the row counts
    weight: Optional[torch.Tensor]  # (R // G, G), stride 0 along G: G rows share one value
    reduction: str
    normalizer: Optional[Union[float, torch.Tensor]]
    loss_shape: torch.Size  # shape of the unreduced loss and of the expectation: the target's


def _row_weight(weight, shape):
    """``weight`` broadcast to the target's ``shape``, as ``(R // G, G)`` with stride 0 along ``G``:
    ``G`` is the product of the trailing dimensions it is broadcast over (4 for a per-anchor
    weight of ``(B, A, 4)`` box sides), so the kernels read one value per ``G`` rows and no
    ``(R,)`` copy is made of it. Only the un-broadcast part is made contiguous, where it is not."""
    expanded = weight.expand(shape)
    if expanded.numel() == 0:
        return expanded.reshape(-1, 1)
    k = len(shape)
    while k > 0 and (expanded.stride(k - 1) == 0 or shape[k - 1] == 1):
        k -= 1
    group = math.prod(shape[k:])
    head = expanded[(Ellipsis,) + (0,) * (len(shape) - k)] if k < len(shape) else expanded
    return head.reshape(-1).unsqueeze(1).expand(-1, group)


def check_positions(target, num_bins, mask, validate):
    """Distribution targets are positions in ``[0, n - 1]`` (NaN refused), on the rows the mask
    keeps, checked where the values are known without a host sync."""
    if target.numel() == 0 or not values_known(target, validate):
        return
    bad = ~((target >= 0) & (target <= num_bins - 1))  # NaN fails both
    if mask is not None:
        bad = bad & mask
    if bool(bad.any()):
        raise ValueError(
            f"target must hold positions in [0, n - 1] = [0, {num_bins - 1}] (n = input.shape[-1] bins), got "
            f"{first_bad_value(target, bad)}; clamp it first (target.clamp(0, {num_bins - 1})) or mask the row out"
        )


def distribution_args(input, target, mask, weight, reduction, normalizer, validate=False):
    """Check ``distribution_focal_loss`` arguments and return them in canonical form: rows of
    ``n`` bin logits ``(R, n)`` (a view where the leading dimensions allow), and ``(R,)``
    targets and mask."""
    if isinstance(input, torch.Tensor) and input.dim() == 0:
        raise ValueError("input must hold bin logits (..., n), bins last, got a 0-dim tensor")
    check_logits(input)
    num_bins = input.shape[-1]
    if num_bins < 2:
        raise ValueError(
            f"input must have at least 2 bins in its last dimension (the distribution over 0, ..., n - 1), "
            f"got shape {tuple(input.shape)}"
        )
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor of float positions, got {type(target).__name__}")
    if not target.is_floating_point():
        raise TypeError(
            f"target must hold float positions in [0, n - 1], got {target.dtype}"
            + ("" if target.dtype == torch.bool or target.is_complex() else "; pass target.float()")
        )
    expected = input.shape[:-1]
    if target.shape != expected:
        if target.numel() == math.prod(expected):
            hint = f" It holds as many positions as input has rows: pass target.reshape({tuple(expected)})."
        elif target.shape == input.shape:
            hint = " It has input's shape: the target is one position per row, not one value per bin."
        else:
            hint = ""
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match input shape {tuple(input.shape)}: expected "
            f"{tuple(expected)} (input's shape without the bins, its last dimension).{hint}"
        )
    check_same_device(input, "target", target)
    check_reduction(reduction)
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a bool tensor shaped like target, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor (True = the row counts), got {mask.dtype}; pass mask.bool()")
        if mask.shape != target.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} must equal target shape {tuple(target.shape)}")
        check_same_device(input, "mask", mask)
    check_positions(target, num_bins, mask, validate)
    if weight is not None:
        if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
            kind = weight.dtype if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise TypeError(f"weight must be a float tensor broadcastable to target, got {kind}")
        check_same_device(input, "weight", weight)
        try:
            broadcast = torch.broadcast_shapes(weight.shape, target.shape)
        except RuntimeError:
            broadcast = None
        if broadcast != target.shape:
            raise ValueError(
                f"weight shape {tuple(weight.shape)} is not broadcastable to target shape {tuple(target.shape)}"
            )
        check_weight_values(weight, validate)
        weight = _row_weight(weight, target.shape)
    return DistributionArgs(
        input=input.reshape(-1, num_bins),
        target=target.reshape(-1),
        mask=mask.reshape(-1) if mask is not None else None,
        weight=weight,
        reduction=reduction,
        normalizer=check_normalizer(normalizer, reduction, input, validate=validate),
        loss_shape=target.shape,
    )
