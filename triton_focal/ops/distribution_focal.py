"""The Triton Distribution Focal Loss: launcher, ``torch.library`` ops and autograd.

Layers, top to bottom:

* ``distribution_focal_loss``: the canonical backend function (the arguments of
  ``triton_focal.reference.distribution_focal_loss``); it decides whether a gradient is needed
  and calls the op.
* ``triton_focal::distribution_focal_fwd`` / ``distribution_focal_bwd`` (``torch.library.custom_op`` s
  with fakes and an autograd formula, so ``torch.compile(fullgraph=True)`` traces through them).
  Who writes the gradient is ``grad_policy.py``'s policy: the forward for ``grad_output == 1``,
  else the backward, recomputing it. With ``return_expectation`` the forward never stores it:
  a decoder uses the expectation, so the backward has a second cotangent to add in any case,
  and recomputing from the logits (one read, one write) costs less than rescaling a stored
  gradient and adding to it (two reads, one write).
* ``distribution_focal_launch``: the launcher, which owns the block sizes, the grid and the strides.
"""

from typing import Optional

import torch

from .. import reference
from .._autograd_state import functorch_active
from ..kernels.distribution_focal import _distribution_focal_kernel
from ..kernels.grad_mode import GRAD_BACKWARD, GRAD_IF_POLICY, GRAD_NONE
from ..reference import compute_dtype
from .autograd import backward_in_place, eager_op
from .denominators import reduced_divisor, target_denominators
from .grad_policy import finish_empty_launch, forward_may_store, policy_flag, stored_flag
from .launch import PersistentGrid, acc_dtype, cdiv, next_power_of_2, on_input_device, persistent_launch
from .scalars import split_float
from .workspace import partials, ticket_counter

# Tile table, from the sm_90 cost model (perf.model's machinery), not from GPU timings (none
# has run this kernel). A row is short (16 bins in YOLOv8, 17 in GFL) and its bins contiguous,
# so a tile is whole rows: BLOCK_N = next_pow2(n) bins (17 pads to 32; its rows are not 16-byte
# aligned anyway) by TILE_ELEMENTS / BLOCK_N rows. 2048 elements over 4 warps is 16 per thread:
# at 16 bins a row spans two threads, each holding 8 bins (one 16-byte load of bf16, two of
# float32), and each thread two rows: enough bytes in flight for the DRAM latency, 63-80
# registers, no spills; modeled at 47-52 instructions per element, 92-94% of the memory floor
# for the kernel alone at (16 * 8400 * 4, 16) bf16.
TILE_ELEMENTS = 2048
NUM_WARPS = 4
# A weight shared by up to this many consecutive rows (4 box sides of an anchor) is indexed by
# a compile-time division (a shift for 4); a larger group divides at run time, per row.
MAX_CONSTANT_GROUP = 16


def _tile(num_bins):
    """``(BLOCK_R, BLOCK_N)``."""
    block_n = next_power_of_2(num_bins)
    return max(TILE_ELEMENTS // block_n, 1), block_n


@on_input_device
def distribution_focal_launch(
    input,
    target,
    *,
    mask,
    weight,
    denominator,
    reduce,
    with_expectation,
    grad_mode,
    grad=None,
    grad_output=None,
    grad_expectation=None,
    stored=None,
    skip_if_stored=False,
):
    """Launch the kernel once.

    Args:
        input: ``(R, n)`` bin logits, any strides, float16/bfloat16/float32/float64.
        target: ``(R,)`` float positions, any float dtype and stride.
        mask: ``None`` or ``(R,)`` bool.
        weight: ``None`` or ``(R // G, G)`` with stride 0 along ``G``.
        denominator: ``None``, a number or a 0-dim tensor dividing the loss and its gradient.
        reduce: return the sum instead of per-row losses.
        with_expectation: also return the ``(R,)`` expectation (not in GRAD_BACKWARD).
        grad_mode: ``GRAD_NONE``, ``GRAD_ALWAYS``, ``GRAD_IF_POLICY`` or ``GRAD_BACKWARD``.
        grad: the gradient buffer, like ``input`` (any mode but GRAD_NONE).
        grad_output: ``()`` or ``(R,)`` (GRAD_BACKWARD): the loss's cotangent.
        grad_expectation: ``None`` or ``(R,)`` (GRAD_BACKWARD): the expectation's cotangent;
            ``grad_output`` is then ``(R,)`` too (a 0-dim one expanded, stride 0).
        stored: ``(1,)`` int32, set by a GRAD_IF_POLICY forward, read by a backward that
            ``skip_if_stored``.

    Returns:
        ``(loss, expectation)``: the loss (``(R,)``, or 0-dim summed, in ``input``'s dtype) and
        the expectation (``(R,)``, or None); ``(None, None)`` for GRAD_BACKWARD.
    """
    num_rows, num_bins = input.shape
    compute_loss = grad_mode != GRAD_BACKWARD
    if input.numel() == 0:
        finish_empty_launch(grad, stored, grad_mode)
        if not compute_loss:
            return None, None
        loss = input.new_zeros(()) if reduce else input.new_empty(num_rows)
        return loss, input.new_empty(num_rows) if with_expectation else None

    loss = input.new_empty(()) if compute_loss and reduce else input.new_empty(num_rows) if compute_loss else None
    expectation = input.new_empty(num_rows) if compute_loss and with_expectation else None
    go_scalar = grad_output is not None and grad_output.dim() == 0
    block_r, block_n = _tile(num_bins)
    num_tiles = cdiv(num_rows, block_r)
    reduced = compute_loss and reduce
    denom_tensor = isinstance(denominator, torch.Tensor)
    group = weight.shape[1] if weight is not None else 1

    def stride(t, dim=0):
        return t.stride(dim) if t is not None and t.dim() > dim else 0

    dummy = input  # pointer for arguments a constexpr flag leaves unread
    flag = policy_flag(input.device) if grad_mode in (GRAD_IF_POLICY, GRAD_BACKWARD) else dummy
    max_programs = PersistentGrid.for_device(input.device).max_programs  # room for each program's partial sum
    args = [
        input,
        target,
        mask.view(torch.uint8) if mask is not None else dummy,
        weight if weight is not None else dummy,
        denominator if denom_tensor else dummy,
        loss if loss is not None else dummy,
        expectation if expectation is not None else dummy,
        partials(max_programs, 1, compute_dtype(input.dtype), input.device) if reduced else dummy,
        ticket_counter(input.device) if reduced else dummy,
        grad if grad is not None else dummy,
        grad_output if grad_output is not None else dummy,
        grad_expectation if grad_expectation is not None else dummy,
        flag,
        stored if stored is not None else dummy,
        input.stride(0),
        input.stride(1),
        target.stride(0),
        stride(mask),
        stride(weight),
        stride(loss),
        stride(expectation),
        stride(grad),
        stride(grad, 1),
        0 if go_scalar else stride(grad_output),
        stride(grad_expectation),
        num_rows,
        group,
        num_tiles,
        *split_float(1.0 if denom_tensor or denominator is None else float(denominator)),
    ]
    # An elementwise loss re-reads nothing: the grid is as many programs as the SMs keep resident.
    meta = dict(
        N=num_bins,
        BLOCK_R=block_r,
        BLOCK_N=block_n,
        HAS_MASK=mask is not None,
        HAS_WEIGHT=weight is not None,
        W_GROUP=group if group <= MAX_CONSTANT_GROUP else 0,
        REDUCE=reduce,
        HAS_DENOM=denom_tensor,
        WITH_EXPECT=expectation is not None,
        GRAD_MODE=grad_mode,
        GRAD_OUT_IS_SCALAR=go_scalar,
        HAS_GRAD_EXPECT=grad_expectation is not None,
        SKIP_IF_STORED=skip_if_stored,
        ACC=acc_dtype(input.dtype),
        num_warps=NUM_WARPS,
    )
    persistent_launch(_distribution_focal_kernel, num_tiles, 0, args, meta)
    return loss, expectation


def _counts_rows(mask, normalizer, normalizer_number, reduction):
    """Whether the divisor is the count of the unmasked rows: a masked ``"mean"`` without a normalizer."""
    return reduction == "mean" and normalizer is None and normalizer_number is None and mask is not None


def _count_divisor(input, mask, normalizer, normalizer_number, reduction):
    """For a masked ``"mean"``: ``(2,)`` whose second entry is the count of unmasked rows, from one
    small launch over the mask (a byte a row; a count of 0 divides by 1: the mean of nothing is
    0, with a zero gradient); else an unread ``(0,)``."""
    dtype = compute_dtype(input.dtype)
    if not _counts_rows(mask, normalizer, normalizer_number, reduction):
        return input.new_empty(0, dtype=dtype)
    if mask.numel() == 0:
        return input.new_ones(2, dtype=dtype)
    # The mask as 0/1 "class indices" with 0 ignored: the count of the softmax loss's divisor.
    rows = mask.view(torch.uint8).view(1, -1)
    return target_denominators(rows, None, 0, 2, dtype=dtype, zero_as_one=True)


def _divisor(input, mask, normalizer, normalizer_number, reduction, counted):
    """The reduced loss's divisor (``reduced_divisor``): a mean counts every row, or with a mask
    the unmasked rows (``counted``)."""

    def mean_count():
        return float(max(input.shape[0], 1)) if mask is None else counted[1]

    return reduced_divisor(reduction, normalizer, normalizer_number, mean_count)


# --- torch.library ops -------------------------------------------------------------


@torch.library.custom_op("triton_focal::distribution_focal_fwd", mutates_args=())
def _forward_op(
    input: torch.Tensor,
    target: torch.Tensor,
    mask: Optional[torch.Tensor],
    weight: Optional[torch.Tensor],
    normalizer: Optional[torch.Tensor],
    normalizer_number: Optional[float],
    reduction: str,
    return_expectation: bool,
    store_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, expectation, grad, stored, counted)``. With ``store_grad`` the gradient for
    ``grad_output == 1`` goes to ``grad`` where the device policy says so (``stored``);
    ``expectation`` is empty unless asked for; ``counted``: the masked mean's count."""
    counted = _count_divisor(input, mask, normalizer, normalizer_number, reduction)
    grad = torch.empty_like(input) if store_grad else input.new_empty(0)
    stored = stored_flag(input.device, store_grad)
    loss, expectation = distribution_focal_launch(
        input,
        target,
        mask=mask,
        weight=weight,
        denominator=_divisor(input, mask, normalizer, normalizer_number, reduction, counted),
        reduce=reduction != "none",
        with_expectation=return_expectation,
        grad_mode=GRAD_IF_POLICY if store_grad else GRAD_NONE,
        grad=grad if store_grad else None,
        stored=stored,
    )
    return loss, expectation if expectation is not None else input.new_empty(0), grad, stored, counted


@_forward_op.register_fake
def _(input, target, mask, weight, normalizer, normalizer_number, reduction, return_expectation, store_grad):
    num_rows = input.shape[0]
    loss = input.new_empty(num_rows) if reduction == "none" else input.new_empty(())
    expectation = input.new_empty(num_rows if return_expectation else 0)
    grad = torch.empty_like(input) if store_grad else input.new_empty(0)
    counts = _counts_rows(mask, normalizer, normalizer_number, reduction)
    counted = input.new_empty(2 if counts else 0, dtype=compute_dtype(input.dtype))
    return loss, expectation, grad, input.new_empty(1, dtype=torch.int32), counted


@torch.library.custom_op("triton_focal::distribution_focal_bwd", mutates_args=())
def _backward_op(
    grad_output: Optional[torch.Tensor],
    grad_expectation: Optional[torch.Tensor],
    input: torch.Tensor,
    target: torch.Tensor,
    mask: Optional[torch.Tensor],
    weight: Optional[torch.Tensor],
    normalizer: Optional[torch.Tensor],
    normalizer_number: Optional[float],
    counted: torch.Tensor,
    reduction: str,
) -> torch.Tensor:
    """The gradient, recomputed from the logits into a new buffer: the loss's times
    ``grad_output`` (None: 0) plus the expectation's times ``grad_expectation`` (None: 0)."""
    grad = torch.empty_like(input)
    if grad_expectation is not None:
        # One cotangent per row for both terms (a 0-dim loss cotangent expanded, stride 0), so
        # that a backward with an expectation never sets the policy flag of scalar backwards.
        if grad_output is None:
            grad_output = input.new_zeros(())
        grad_output = grad_output.expand(input.shape[0])
    elif grad_output is None:
        return grad.zero_()
    distribution_focal_launch(
        input,
        target,
        mask=mask,
        weight=weight,
        denominator=_divisor(input, mask, normalizer, normalizer_number, reduction, counted),
        reduce=reduction != "none",
        with_expectation=False,
        grad_mode=GRAD_BACKWARD,
        grad=grad,
        grad_output=grad_output,
        grad_expectation=grad_expectation,
    )
    return grad


@_backward_op.register_fake
def _(grad_output, grad_expectation, input, *args):
    return torch.empty_like(input)


def _setup_context(ctx, inputs, output):
    input, target, mask, weight, normalizer, normalizer_number, reduction, return_expectation, _store = inputs
    loss, expectation, grad, stored, counted = output
    # Without return_expectation the expectation output is an empty placeholder: no gradient.
    ctx.mark_non_differentiable(grad, stored, counted, *(() if return_expectation else (expectation,)))
    ctx.set_materialize_grads(False)  # no row-sized zeros for an unused output's gradient
    ctx.normalizer_number = normalizer_number
    ctx.reduction = reduction
    # A normalizer that requires grad gets d (sum / normalizer) / d normalizer = -loss / normalizer.
    ctx.normalizer_grad = normalizer is not None and normalizer.requires_grad
    ctx.save_for_backward(
        input, target, mask, weight, normalizer, grad, stored, counted, loss if ctx.normalizer_grad else None
    )


def _backward(ctx, grad_loss, grad_expectation, *_):
    unused = (None,) * 7  # target, mask, weight; normalizer_number and the three options
    input, target, mask, weight, normalizer, grad, stored, counted, loss = ctx.saved_tensors
    if grad_expectation is not None and grad_expectation.shape != input.shape[:1]:
        grad_expectation = None  # the placeholder of a call without return_expectation
    grad_normalizer = None
    if ctx.normalizer_grad and grad_loss is not None:
        grad_normalizer = (-grad_loss * loss / normalizer).to(normalizer.dtype)
    if not ctx.needs_input_grad[0] or (grad_loss is None and grad_expectation is None):
        return (None,) + unused[:3] + (grad_normalizer,) + unused[3:]
    number = ctx.normalizer_number
    if torch.is_grad_enabled():  # create_graph=True: the gradient itself must be differentiable
        reference_normalizer = normalizer if normalizer is not None else number
        grad = _reference_grad(
            input, target, mask, weight, reference_normalizer, ctx.reduction, grad_loss, grad_expectation
        )
    elif grad_expectation is None and grad_loss.dim() == 0 and backward_in_place(grad):
        distribution_focal_launch(
            input,
            target,
            mask=mask,
            weight=weight,
            denominator=_divisor(input, mask, normalizer, number, ctx.reduction, counted),
            reduce=ctx.reduction != "none",
            with_expectation=False,
            grad_mode=GRAD_BACKWARD,
            grad=grad,
            grad_output=grad_loss,
            stored=stored,
            skip_if_stored=True,
        )
    else:
        grad = _backward_call(
            grad_loss, grad_expectation, input, target, mask, weight, normalizer, number, counted, ctx.reduction
        )
    return (grad,) + unused[:3] + (grad_normalizer,) + unused[3:]


_forward_op.register_autograd(_backward, setup_context=_setup_context)
_forward_call = eager_op(_forward_op, _setup_context, _backward)
_backward_call = eager_op(_backward_op)


# --- canonical backend function ----------------------------------------------------


def _reference_grad(input, target, mask, weight, normalizer, reduction, grad_loss, grad_expectation):
    """``d (loss, expectation) / d input`` against both cotangents, with a graph, from the
    reference's autograd: a backward asked to ``create_graph``."""
    with torch.enable_grad():
        loss, expectation = reference.distribution_focal_loss(
            input, target, mask=mask, weight=weight, reduction=reduction, normalizer=normalizer, return_expectation=True
        )
        outputs, cotangents = [], []
        for out, cot in ((loss, grad_loss), (expectation, grad_expectation)):
            if cot is not None:
                outputs.append(out)
                cotangents.append(cot)
        (grad,) = torch.autograd.grad(outputs, input, cotangents, create_graph=True)
    return grad


def distribution_focal_loss(input, target, *, mask, weight, reduction, normalizer, return_expectation=False):
    """Distribution Focal Loss of ``(R, n)`` bin logits against ``(R,)`` positions, fused in Triton
    (the arguments and result of ``triton_focal.reference.distribution_focal_loss``).

    Returns:
        The loss (``(R,)`` for ``"none"``, else 0-dim), and with ``return_expectation`` the
        ``(R,)`` expectation, in the input's dtype.
    """
    if functorch_active():  # torch.func transforms: see autograd.py
        return reference.distribution_focal_loss(
            input,
            target,
            mask=mask,
            weight=weight,
            reduction=reduction,
            normalizer=normalizer,
            return_expectation=return_expectation,
        )
    needs_grad = input.requires_grad and torch.is_grad_enabled()
    # With the expectation the backward recomputes anyway (two incoming gradients in one pass).
    store_grad = forward_may_store(needs_grad, reduction) and not return_expectation
    tensor = normalizer if isinstance(normalizer, torch.Tensor) else None
    number = None if normalizer is None or tensor is not None else float(normalizer)
    loss, expectation, *_ = _forward_call(
        input, target, mask, weight, tensor, number, reduction, return_expectation, store_grad
    )
    return (loss, expectation) if return_expectation else loss
