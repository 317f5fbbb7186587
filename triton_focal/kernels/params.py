"""Kernel arguments in named groups: a tensor with its strides, a float in two halves.

Triton passes a ``NamedTuple`` argument field by field and specializes each field as it would a
plain argument (a stride of 1 becomes a constant, a multiple of 16 is known to be aligned), so
the kernels compile to the code they compiled to with flat arguments (the cost model counts the
same instructions, within one a logit, and registers within a few); the groups make a kernel's
signature say what each argument is, and one helper computes every address. The launchers
(``triton_focal/ops/``) build them.
"""

from typing import Any, NamedTuple

import triton
import triton.language as tl

from .focal_math import join_float


class NCP(NamedTuple):
    """An ``(N, C, P)`` tensor (logits, their gradient): its pointer and strides."""

    ptr: Any
    stride_n: Any
    stride_c: Any
    stride_p: Any


class NP(NamedTuple):
    """An ``(N, P)`` tensor, one value a row (targets, per-row losses, weights): its pointer and
    strides (0 where broadcast, both 0 for a 0-dim tensor)."""

    ptr: Any
    stride_n: Any
    stride_p: Any


class Float(NamedTuple):
    """A float as two float32 halves whose sum holds about 48 of its bits (``ops/scalars.py``):
    Triton passes a float argument as float32, and float64 logits need it unrounded."""

    hi: Any
    lo: Any


class SoftmaxNumbers(NamedTuple):
    """The softmax loss's runtime numbers (a new value does not recompile)."""

    gamma: Float  # shared by every class (else the per-class pointer)
    alpha: Float
    label_smoothing: Float
    z_loss: Float
    softcap: Float
    poly_epsilon: Float
    divisor: Float  # the normalizer where it is a number (DIVISOR == DIVIDE_BY_NUMBER)
    ignore_index: Any


@triton.jit
def number(value, dtype: tl.constexpr):
    """A :class:`Float` in ``dtype``."""
    return join_float(value.hi, value.lo, dtype)


@triton.jit
def row_ptr(t, n, p):
    """Addresses of rows ``(n, p)`` of an :class:`NCP` (its class 0) or :class:`NP` tensor."""
    return t.ptr + n * t.stride_n + p * t.stride_p
