"""The Triton sigmoid focal loss: launchers, ``torch.library`` ops and autograd.

Layers, top to bottom:

* ``sigmoid_focal_loss`` / ``sigmoid_focal_loss_star``: the canonical backend functions
  (same arguments as ``triton_focal.reference``); they decide whether a gradient is needed
  and call the op.
* ``triton_focal::sigmoid_focal`` (``torch.library.custom_op`` with a fake and an autograd
  formula, so ``torch.compile(fullgraph=True)`` traces through it): one launch computes the
  loss and, when the input needs a gradient, ``d loss / d input`` for ``grad_output == 1``.
* the backward multiplies that stored gradient by ``grad_output`` (``stored_grad.py``,
  shared with the softmax loss): in place, and not at all when a 0-dim ``grad_output`` is
  exactly 1 (decided on the device).
* ``sigmoid_focal_fwd``: the launcher, which owns the block sizes, the grid and the strides.
"""

from typing import Optional

import torch
import triton

from ..kernels.sigmoid_focal import _sigmoid_focal_fwd_kernel
from ..reference import compute_dtype
from .scalars import split_float
from .grad_policy import scale_stored_grad as stored_grad_times

# Tile table. Reasoned, not measured (no GPU was at hand to tune on):
# * a program owns about _TILE_ELEMENTS elements: 16 per thread at 8 warps, enough loads in
#   flight to cover memory latency with a few programs per SM, small enough that the
#   float32 temporaries of the loss and its gradient stay in registers;
# * the contiguous axis is the wide one, so loads coalesce: up to 128 classes per tile
#   when classes are contiguous ((N, C) detection logits, channels_last), at most 8 when
#   they are strided by P (channels-first heatmaps, where the pixels are contiguous).
#   Classes beyond the block go to more programs along grid axis 1: nothing is looped.
_TILE_ELEMENTS = 4096
_MAX_BLOCK_C_CONTIGUOUS = 128
_MAX_BLOCK_C_STRIDED = 8
_ELEMENTS_PER_WARP = 512  # 16 per thread: num_warps = tile / 512, from 1 to 8


def _tile(num_rows, num_classes, stride_c):
    """``(BLOCK_R, BLOCK_C, num_warps)`` for a ``(rows, classes)`` problem and its layout."""
    max_block_c = _MAX_BLOCK_C_CONTIGUOUS if stride_c == 1 else _MAX_BLOCK_C_STRIDED
    block_c = min(triton.next_power_of_2(max(num_classes, 1)), max_block_c)
    block_r = min(_TILE_ELEMENTS // block_c, triton.next_power_of_2(max(num_rows, 1)))
    num_warps = min(max(block_r * block_c // _ELEMENTS_PER_WARP, 1), 8)
    return block_r, block_c, num_warps


def sigmoid_focal_fwd(input, target, *, weight, class_gamma, denominator, alpha, gamma, ignore_index, reduce, star, compute_grad):
    """Launch the forward kernel.

    Args:
        input: ``(N, C, P)`` logits, any strides, float16/bfloat16/float32/float64.
        target: ``(N, C, P)`` floating targets, or ``(N, P)`` integer class indices.
        weight: ``None`` or an ``(N, C, P)`` view (stride 0 allowed), any float dtype.
        class_gamma: ``None`` or a ``(C,)`` tensor; then ``gamma`` is ignored.
        denominator: ``None`` or a 0-dim tensor; the stored gradient is divided by it.
        alpha: float; ``< 0`` means no alpha weighting.
        gamma: float.
        ignore_index: int, for class-index targets.
        reduce: if true, return per-program partial sums instead of per-element losses.
        star: FL* instead of the focal loss.
        compute_grad: also store ``d loss / d input`` (times ``1 / denominator``).

    Returns:
        ``(loss, dx)``: ``loss`` is ``(N, C, P)`` in the input's dtype, or the partial
        sums ``(programs,)`` in the compute dtype (float32, float64 for float64 input);
        ``dx`` is ``torch.empty_like(input)`` filled with the gradient, or an empty
        ``(0,)`` tensor without ``compute_grad``.
    """
    N, C, P = input.shape
    num_rows = N * P
    fp64 = input.dtype == torch.float64
    acc_dtype = compute_dtype(input.dtype)
    # empty_like keeps a dense input's layout (channels_last too): dx is written as x is read.
    dx = torch.empty_like(input) if compute_grad else input.new_empty((0,))
    block_r, block_c, num_warps = _tile(num_rows, C, input.stride(1))
    grid = (triton.cdiv(num_rows, block_r), triton.cdiv(C, block_c))
    if reduce:
        loss = torch.empty(grid[0] * grid[1], dtype=acc_dtype, device=input.device)  # every program writes one
    else:
        loss = torch.empty_like(input)
    if input.numel() == 0:
        dx.zero_()
        return loss, dx

    index_target = not target.is_floating_point()
    if index_target:
        stride_t = (target.stride(0), 0, target.stride(1))
    else:
        stride_t = target.stride()
    # The per-element loss and dx are both empty_like(input): one set of strides serves both.
    out = dx if compute_grad else loss
    stride_o = out.stride() if out.dim() == 3 else (0, 0, 0)
    if class_gamma is not None:
        class_gamma = class_gamma.contiguous()
    _sigmoid_focal_fwd_kernel[grid](
        input, target, weight, class_gamma, denominator, loss, dx,
        *input.stride(), *stride_t,
        *(weight.stride() if weight is not None else (0, 0, 0)),
        *stride_o,
        num_rows, C, P,
        *split_float(alpha), *split_float(gamma), ignore_index,
        BLOCK_R=block_r,
        BLOCK_C=block_c,
        INDEX_TARGET=index_target,
        HAS_WEIGHT=weight is not None,
        HAS_ALPHA=alpha >= 0,
        HAS_CLASS_GAMMA=class_gamma is not None,
        STAR=star,
        REDUCE=reduce,
        HAS_DENOM=denominator is not None,
        COMPUTE_GRAD=compute_grad,
        FP64=fp64,
        num_warps=num_warps,
    )
    return loss, dx


# --- torch.library ops -------------------------------------------------------------


@torch.library.custom_op("triton_focal::sigmoid_focal", mutates_args=())
def _sigmoid_focal_op(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: Optional[torch.Tensor],
    class_gamma: Optional[torch.Tensor],
    normalizer: Optional[torch.Tensor],
    alpha: float,
    gamma: float,
    ignore_index: int,
    reduction: str,
    star: bool,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    acc_dtype = compute_dtype(input.dtype)
    # The divisor of the reduced loss stays on the device (no host sync).
    if reduction == "none":
        denominator = None
    elif normalizer is not None:
        denominator = normalizer.detach().to(acc_dtype)
    elif reduction == "mean":
        if target.is_floating_point():
            count = torch.full((), input.numel(), dtype=acc_dtype, device=input.device)
        else:
            count = (target != ignore_index).sum().to(acc_dtype) * input.shape[1]
        # The mean of nothing is 0 with a zero gradient, not NaN.
        denominator = torch.where(count > 0, count, torch.ones_like(count))
    else:
        denominator = None

    loss, dx = sigmoid_focal_fwd(
        input, target,
        weight=weight, class_gamma=class_gamma, denominator=denominator,
        alpha=alpha, gamma=gamma, ignore_index=ignore_index,
        reduce=reduction != "none", star=star, compute_grad=compute_grad,
    )
    if reduction != "none":
        total = loss.sum()
        loss = (total / denominator if denominator is not None else total).to(input.dtype)
    return loss, dx


@_sigmoid_focal_op.register_fake
def _(input, target, weight, class_gamma, normalizer, alpha, gamma, ignore_index, reduction, star, compute_grad):
    loss = torch.empty_like(input) if reduction == "none" else input.new_empty(())
    dx = torch.empty_like(input) if compute_grad else input.new_empty((0,))
    return loss, dx


def _setup_context(ctx, inputs, output):
    _, dx = output
    ctx.mark_non_differentiable(dx)
    ctx.set_materialize_grads(False)  # no logits-sized zeros for the gradient output's gradient
    ctx.save_for_backward(dx)


def _backward(ctx, grad_loss, _grad_dx):
    (dx,) = ctx.saved_tensors
    # grad_loss is None when the loss was not used (gradients are not materialized as zeros).
    return (None if grad_loss is None else stored_grad_times(dx, grad_loss),) + (None,) * 10


_sigmoid_focal_op.register_autograd(_backward, setup_context=_setup_context)


# --- canonical backend functions ---------------------------------------------------


def _needs_grad(input):
    return input.requires_grad and torch.is_grad_enabled()


def _normalizer_tensor(normalizer, input):
    if normalizer is None or isinstance(normalizer, torch.Tensor):
        return normalizer
    dtype = compute_dtype(input.dtype)
    # torch.full is a device fill, not a host-to-device copy.
    return torch.full((), float(normalizer), dtype=dtype, device=input.device)


def sigmoid_focal_loss(input, target, *, alpha, gamma, weight, ignore_index, reduction, normalizer):
    """One-vs-all sigmoid focal loss of ``(N, C, P)`` logits (SPEC.md), fused in Triton.

    Args:
        input: ``(N, C, P)`` logits, any strides, float16/bfloat16/float32/float64.
        target: dense floating ``(N, C, P)`` targets (soft values allowed, any strides) or
            integer ``(N, P)`` class indices (``C``: background, ``ignore_index``: ignored row).
        alpha: float; ``alpha_t = alpha t + (1 - alpha) (1 - t)``, none if ``alpha < 0``.
        gamma: float ``>= 0`` or a float32 ``(C,)`` tensor on the input's device.
        weight: ``None`` or a tensor expanded to ``(N, C, P)`` (stride 0 allowed).
        ignore_index: int.
        reduction: ``"none"``, ``"sum"`` or ``"mean"``.
        normalizer: ``None``, a float or a 0-dim tensor: the result is ``sum / normalizer``.

    Returns:
        ``(N, C, P)`` for ``"none"``, else a 0-dim tensor, in the input's dtype.
    """
    class_gamma = gamma if isinstance(gamma, torch.Tensor) else None
    loss, _ = _sigmoid_focal_op(
        input, target, weight, class_gamma, _normalizer_tensor(normalizer, input),
        float(alpha), 0.0 if class_gamma is not None else float(gamma), int(ignore_index),
        reduction, False, _needs_grad(input),
    )
    return loss


def sigmoid_focal_loss_star(input, target, *, alpha, gamma, reduction):
    """FL* of ``(N, C, P)`` logits against dense ``(N, C, P)`` targets (SPEC.md).

    ``loss = alpha_t * softplus(-gamma x (2t - 1)) / gamma`` with ``gamma > 0``.

    Returns:
        ``(N, C, P)`` for ``"none"``, else a 0-dim tensor, in the input's dtype.
    """
    loss, _ = _sigmoid_focal_op(
        input, target, None, None, None, float(alpha), float(gamma), -100, reduction, True, _needs_grad(input),
    )
    return loss
