"""The softmax focal loss's options as one frozen object, from the op layer to the kernel launch.

``torch.library`` schemas take no dataclasses, so the ops take :meth:`SoftmaxOptions.op_args`'
flat list (a per-class tensor and a number for gamma and alpha, a tensor and a number for the
normalizer: a schema argument has one type) and :meth:`SoftmaxOptions.from_op_args` rebuilds the
object inside them and from the autograd context. Every op lists the options last, in
:data:`OP_ARGS` order, so that one index serves them all.
"""

import dataclasses
from typing import Optional, Union

import torch

from ..reference import compute_dtype

# The ops' option arguments, in order. The later ones have defaults and are left out of a call
# that does not use them (the dispatcher would drop them anyway), so that such a call is the
# call it was before they existed.
OP_ARGS = (
    "class_gamma",
    "gamma",
    "class_alpha",
    "alpha",
    "weight",
    "ignore_index",
    "reduction",
    "label_smoothing",
    "z_loss",
    "softcap",
    "poly_epsilon",
    "element_weight",
    "normalizer",  # a tensor, or None
    "normalizer_number",  # a number, or None
)
_OP_DEFAULTS = (0.0, 0.0, None, 0.0, None, None, None)  # of the options from label_smoothing on
_REQUIRED = len(OP_ARGS) - len(_OP_DEFAULTS)
NORMALIZER_ARG = OP_ARGS.index("normalizer")


@dataclasses.dataclass(frozen=True)
class SoftmaxOptions:
    """Canonical options (validated by the public layer): numbers as Python numbers, per-class
    tensors contiguous in the compute dtype on the logits' device."""

    gamma: Union[float, torch.Tensor]  # a number, or (C,)
    alpha: Union[float, torch.Tensor]  # 1.0 for none, or (C,)
    weight: Optional[torch.Tensor]  # (C,)
    ignore_index: int
    reduction: str
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: Optional[float] = None
    poly_epsilon: float = 0.0
    element_weight: Optional[torch.Tensor] = None  # (N, P), any strides and float dtype
    normalizer: Union[None, float, torch.Tensor] = None  # a number or a 0-dim tensor

    @staticmethod
    def canonical(
        input,
        *,
        gamma,
        alpha,
        weight,
        ignore_index,
        reduction,
        label_smoothing=0.0,
        z_loss=0.0,
        softcap=None,
        poly_epsilon=0.0,
        element_weight=None,
        normalizer=None,
    ):
        """The options of one call of the public layer's canonical arguments (``alpha=None``:
        none), per-class tensors moved to ``input``'s device and compute dtype."""
        acc = compute_dtype(input.dtype)
        as_acc = lambda t: t.to(device=input.device, dtype=acc).contiguous()  # noqa: E731
        return SoftmaxOptions(
            gamma=as_acc(gamma) if isinstance(gamma, torch.Tensor) else float(gamma),
            alpha=as_acc(alpha) if isinstance(alpha, torch.Tensor) else 1.0 if alpha is None else float(alpha),
            weight=None if weight is None else as_acc(weight),
            ignore_index=int(ignore_index),
            reduction=reduction,
            label_smoothing=float(label_smoothing),
            z_loss=float(z_loss),
            softcap=None if softcap is None else float(softcap),
            poly_epsilon=float(poly_epsilon),
            element_weight=element_weight,
            normalizer=normalizer if normalizer is None or isinstance(normalizer, torch.Tensor) else float(normalizer),
        )

    def op_args(self):
        """The options as the ops take them (:data:`OP_ARGS`), unused trailing ones left out."""
        gamma, alpha, norm = self.gamma, self.alpha, self.normalizer
        args = (
            gamma if isinstance(gamma, torch.Tensor) else None,
            0.0 if isinstance(gamma, torch.Tensor) else gamma,
            alpha if isinstance(alpha, torch.Tensor) else None,
            1.0 if isinstance(alpha, torch.Tensor) else alpha,
            self.weight,
            self.ignore_index,
            self.reduction,
            self.label_smoothing,
            self.z_loss,
            self.softcap,
            self.poly_epsilon,
            self.element_weight,
            norm if isinstance(norm, torch.Tensor) else None,
            None if isinstance(norm, torch.Tensor) else norm,
        )
        end = len(args)
        while end > _REQUIRED and _is_default(args[end - 1], _OP_DEFAULTS[end - 1 - _REQUIRED]):
            end -= 1
        return args[:end]

    @staticmethod
    def from_op_args(*args):
        """The object of :meth:`op_args`' list (trailing defaults may be missing)."""
        if len(args) < len(OP_ARGS):
            args = (*args, *_OP_DEFAULTS[len(args) - _REQUIRED :])
        class_gamma, gamma, class_alpha, alpha, *middle, normalizer, normalizer_number = args
        return SoftmaxOptions(
            gamma if class_gamma is None else class_gamma,
            alpha if class_alpha is None else class_alpha,
            *middle,
            normalizer_number if normalizer is None else normalizer,
        )

    def as_kwargs(self):
        """The options as keyword arguments of ``reference.softmax_focal_loss`` (tensors not copied)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


def _is_default(value, default):
    return value is None if default is None else not isinstance(value, torch.Tensor) and value == default
