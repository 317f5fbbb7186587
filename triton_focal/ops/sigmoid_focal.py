"""The Triton sigmoid focal loss: launcher, ``torch.library`` ops and autograd.

Layers, top to bottom:

* ``sigmoid_focal_loss`` / ``sigmoid_focal_loss_star``: the canonical backend functions
  (same arguments as ``triton_focal.reference``); they decide whether a gradient is needed
  and call the op.
* ``triton_focal::sigmoid_focal_fwd`` / ``sigmoid_focal_bwd`` (``torch.library.custom_op`` s
  with fakes and an autograd formula, so ``torch.compile(fullgraph=True)`` traces through
  them). Who writes the gradient is the policy of ``grad_policy.py``, shared with the softmax
  loss: the forward for ``grad_output == 1``, else the backward, recomputing it.
* ``sigmoid_focal_launch``: the launcher, which owns the block sizes, the grid and the strides.
"""

import dataclasses
from typing import List, Optional

import torch

from .. import reference
from .._autograd_state import functorch_active
from ..kernels.grad_mode import GRAD_BACKWARD, GRAD_IF_POLICY, GRAD_NONE
from ..kernels.sigmoid_focal import _sigmoid_focal_kernel
from ..reference import compute_dtype
from ..sigmoid_term import KINDS, SigmoidTerm
from .autograd import backward_in_place, differentiable_grad, eager_op, save_options, saved_options
from .denominators import reduced_divisor, target_denominators
from .grad_policy import finish_empty_launch, forward_may_store, policy_flag, stored_flag
from .launch import (
    PersistentGrid,
    acc_dtype,
    cdiv,
    fold_rows,
    integer_gamma,
    next_power_of_2,
    on_input_device,
    persistent_launch,
)
from .scalars import split_float
from .workspace import partials, ticket_counter

# Tile table, from the sm_90 cost model (``python -m perf.model``), not from GPU timings. A
# program steps over the classes BLOCK_C at a time, so per-row work (a row's class index, its
# ignore flag) is done once per tile and 80 classes need no padded lanes (5 x 16):
# * classes contiguous ((N, C) detection logits, channels_last): 16 classes (32 bytes of
#   bf16, a full sector per row) by TILE_ELEMENTS / 16 rows;
# * classes strided by P (channels-first heatmaps): 8 classes by 16 bytes of pixels per thread.
# 4 warps and 16 elements per thread: enough loads in flight, no spills.
CONTIGUOUS_BLOCK_C = 16
STRIDED_BLOCK_C = 8
TILE_ELEMENTS = 2048
NUM_WARPS = 4
# The asymmetric term keeps about twice the focal term's intermediates live per element: at 16
# elements a thread ptxas ran out of registers (255, spills) and issued the loads one by one,
# a memory round each; half the rows per tile keeps them in flight (the cost model's rounds).
HEAVY_TERMS = ("asymmetric",)


def _tile(num_classes, num_positions, stride_c, element_size, term):
    """``(BLOCK_R, BLOCK_C)`` for ``(N, C, P)`` logits of ``num_positions`` rows per image."""
    if stride_c == 1 or num_classes == 1:
        block_c = min(CONTIGUOUS_BLOCK_C, next_power_of_2(num_classes))
        block_r = TILE_ELEMENTS // block_c // (2 if term.kind in HEAVY_TERMS else 1)
    else:
        block_c = min(STRIDED_BLOCK_C, next_power_of_2(num_classes))
        block_r = max(16 // element_size, 1) * 32 * NUM_WARPS
    return min(block_r, max(next_power_of_2(num_positions), 16)), block_c


@on_input_device
def sigmoid_focal_launch(
    input,
    target,
    *,
    score,
    weight,
    class_gamma,
    term,
    ignore_index,
    denominator,
    reduce,
    grad_mode,
    grad=None,
    grad_output=None,
    stored=None,
    skip_if_stored=False,
):
    """Launch the kernel once.

    Args:
        input: ``(N, C, P)`` logits, any strides, float16/bfloat16/float32/float64.
        target: ``(N, C, P)`` floating targets, or ``(N, P)`` integer class indices.
        score: ``None`` or ``(N, P)``: with class indices, the positive's target value.
        weight: ``None`` or an ``(N, C, P)`` view (stride 0 allowed), any float dtype.
        class_gamma: ``None`` or a ``(C,)`` tensor in the compute dtype; then ``term.gamma`` is unused.
        term: the :class:`~triton_focal.sigmoid_term.SigmoidTerm` each element computes.
        ignore_index: int, for class-index targets.
        denominator: ``None``, a number or a 0-dim tensor (any float dtype) dividing the loss
            and the gradient.
        reduce: return the sum instead of per-element losses.
        grad_mode: ``GRAD_NONE``, ``GRAD_ALWAYS``, ``GRAD_IF_POLICY`` or ``GRAD_BACKWARD``.
        grad: the gradient buffer, like ``input`` (any mode but GRAD_NONE).
        grad_output: ``()`` or broadcastable to ``input`` (GRAD_BACKWARD).
        stored: ``(1,)`` int32, set by a GRAD_IF_POLICY forward, read by a backward that
            ``skip_if_stored``.

    Returns:
        The loss (``(N, C, P)``, or 0-dim summed, in ``input``'s dtype), or None for GRAD_BACKWARD.
    """
    num_classes = input.shape[1]
    acc = compute_dtype(input.dtype)
    compute_loss = grad_mode != GRAD_BACKWARD
    if input.numel() == 0:
        finish_empty_launch(grad, stored, grad_mode)
        if not compute_loss:
            return None
        return input.new_zeros(()) if reduce else torch.empty_like(input)

    index_target = not target.is_floating_point()
    loss = torch.empty_like(input) if compute_loss and not reduce else None
    go_scalar = grad_output is not None and grad_output.dim() == 0
    if grad_output is not None and not go_scalar:
        grad_output = grad_output.expand(input.shape)  # stride 0 where it was broadcast
    no_strides = (0, 0, 0)
    strides = [
        input.stride(),
        (target.stride(0), 0, target.stride(1)) if index_target else target.stride(),
        weight.stride() if weight is not None else no_strides,
        loss.stride() if loss is not None else no_strides,
        grad.stride() if grad is not None else no_strides,
        grad_output.stride() if grad_output is not None and not go_scalar else no_strides,
    ]
    if score is not None:
        strides.append(score.stride())
    n_launch, p_launch, strides = fold_rows(input.shape, *strides)
    score_strides = strides.pop() if score is not None else (0, 0)
    block_r, block_c = _tile(num_classes, p_launch, strides[0][1], input.element_size(), term)
    num_p_blocks = cdiv(p_launch, block_r)
    num_tiles = n_launch * num_p_blocks
    reduced = compute_loss and reduce
    if reduced:
        loss = input.new_empty(())
    denom_tensor = isinstance(denominator, torch.Tensor)

    dummy = input  # pointer for arguments a constexpr flag leaves unread
    flag = policy_flag(input.device) if grad_mode in (GRAD_IF_POLICY, GRAD_BACKWARD) else dummy
    args = [
        input,
        target,
        weight if weight is not None else dummy,
        class_gamma if class_gamma is not None else dummy,
        denominator if denom_tensor else dummy,
        loss if loss is not None else dummy,
        partials(PersistentGrid.for_device(input.device).max_programs, 1, acc, input.device) if reduced else dummy,
        ticket_counter(input.device) if reduced else dummy,
        grad if grad is not None else dummy,
        grad_output if grad_output is not None else dummy,
        flag,
        stored if stored is not None else dummy,
        score if score is not None else dummy,
        *(s for stride in strides for s in stride),
        *score_strides,
        num_classes,
        p_launch,
        num_p_blocks,
        num_tiles,
        *split_float(term.alpha),
        *split_float(term.gamma),
        *split_float(1.0 if denom_tensor or denominator is None else float(denominator)),
        *split_float(term.gamma_neg),
        *split_float(term.clip),
        *split_float(term.log_eps if term.eps > 0 else 0.0),
        *split_float(term.poly_epsilon),
        int(ignore_index),
    ]
    # An elementwise loss re-reads nothing: the grid is as many programs as the SMs keep resident.
    meta = dict(
        BLOCK_R=block_r,
        BLOCK_C=block_c,
        INDEX_TARGET=index_target,
        HAS_SCORE=score is not None,
        HAS_WEIGHT=weight is not None,
        HAS_ALPHA=term.has_alpha,
        HAS_CLASS_GAMMA=class_gamma is not None,
        GAMMA_INT=-1 if class_gamma is not None or term.kind == "star" else integer_gamma(term.gamma),
        TERM=KINDS.index(term.kind),
        HAS_POLY=term.poly_epsilon != 0,
        IOU_WEIGHTED=term.iou_weighting,
        DETACH=term.weight_detached,
        HAS_CLIP=term.clip > 0,
        HAS_EPS=term.eps > 0,
        REDUCE=reduce,
        HAS_DENOM=denom_tensor,
        GRAD_MODE=grad_mode,
        GRAD_OUT_IS_SCALAR=go_scalar,
        SKIP_IF_STORED=skip_if_stored,
        ACC=acc_dtype(input.dtype),
        num_warps=NUM_WARPS,
    )
    persistent_launch(_sigmoid_focal_kernel, num_tiles, 0, args, meta)
    return loss


def _counts_targets(target, normalizer, normalizer_number, reduction):
    """Whether the divisor is the count of the targets: a class-index ``"mean"`` without a normalizer."""
    return reduction == "mean" and normalizer is None and normalizer_number is None and not target.is_floating_point()


def _count_divisor(input, target, normalizer, normalizer_number, ignore_index, reduction):
    """For a class-index ``"mean"``: ``target_denominators``' ``(2,)``, whose second entry is the
    count of non-ignored elements (``C`` per row), from one launch over the targets (a count of
    0 divides by 1: the mean of nothing is 0, with a zero gradient); else an unread ``(0,)``."""
    if not _counts_targets(target, normalizer, normalizer_number, reduction):
        return input.new_empty(0, dtype=compute_dtype(input.dtype))
    if target.numel() == 0:
        return input.new_ones(2, dtype=compute_dtype(input.dtype))
    return target_denominators(
        target,
        None,
        ignore_index,
        input.shape[1],
        dtype=compute_dtype(input.dtype),
        scale=input.shape[1],
        zero_as_one=True,
    )


def _divisor(input, target, normalizer, normalizer_number, reduction, counted):
    """The reduced loss's divisor (``reduced_divisor``): a dense mean counts every element, a
    class-index mean the targets' count (``counted``)."""

    def mean_count():
        return float(max(input.numel(), 1)) if target.is_floating_point() else counted[1]

    return reduced_divisor(reduction, normalizer, normalizer_number, mean_count)


# --- torch.library ops -------------------------------------------------------------
# The loss's options, in every op and in the autograd context: (score, weight, class_gamma,
# term, ignore_index, reduction), ``term`` as ``SigmoidTerm.encode()``'s list of floats (typed
# ``typing.List``: torch before 2.6 infers no schema from ``list[float]``).


def _launch_options(score, weight, class_gamma, term, ignore_index, reduction):
    return dict(
        score=score,
        weight=weight,
        class_gamma=class_gamma,
        term=SigmoidTerm.decode(term),
        ignore_index=ignore_index,
        reduce=reduction != "none",
    )


@torch.library.custom_op("triton_focal::sigmoid_focal_fwd", mutates_args=())
def _forward_op(
    input: torch.Tensor,
    target: torch.Tensor,
    normalizer: Optional[torch.Tensor],
    normalizer_number: Optional[float],
    score: Optional[torch.Tensor],
    weight: Optional[torch.Tensor],
    class_gamma: Optional[torch.Tensor],
    term: List[float],
    ignore_index: int,
    reduction: str,
    store_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, grad, stored, counted)``. With ``store_grad`` the gradient for ``grad_output ==
    1`` goes to ``grad`` where the device policy says so (``stored``); ``counted``: the mean's
    count, where it comes from the targets (the backward reuses it)."""
    options = _launch_options(score, weight, class_gamma, term, ignore_index, reduction)
    counted = _count_divisor(input, target, normalizer, normalizer_number, ignore_index, reduction)
    grad = torch.empty_like(input) if store_grad else input.new_empty(0)
    stored = stored_flag(input.device, store_grad)
    loss = sigmoid_focal_launch(
        input,
        target,
        **options,
        denominator=_divisor(input, target, normalizer, normalizer_number, reduction, counted),
        grad_mode=GRAD_IF_POLICY if store_grad else GRAD_NONE,
        grad=grad if store_grad else None,
        stored=stored,
    )
    return loss, grad, stored, counted


@_forward_op.register_fake
def _(
    input, target, normalizer, normalizer_number, score, weight, class_gamma, term, ignore_index, reduction, store_grad
):
    loss = torch.empty_like(input) if reduction == "none" else input.new_empty(())
    grad = torch.empty_like(input) if store_grad else input.new_empty(0)
    counts = _counts_targets(target, normalizer, normalizer_number, reduction)
    counted = input.new_empty(2 if counts else 0, dtype=compute_dtype(input.dtype))
    return loss, grad, input.new_empty(1, dtype=torch.int32), counted


@torch.library.custom_op("triton_focal::sigmoid_focal_bwd", mutates_args=())
def _backward_op(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    target: torch.Tensor,
    normalizer: Optional[torch.Tensor],
    normalizer_number: Optional[float],
    counted: torch.Tensor,
    score: Optional[torch.Tensor],
    weight: Optional[torch.Tensor],
    class_gamma: Optional[torch.Tensor],
    term: List[float],
    ignore_index: int,
    reduction: str,
) -> torch.Tensor:
    """The gradient times ``grad_output``, recomputed from the logits into a new buffer."""
    grad = torch.empty_like(input)
    sigmoid_focal_launch(
        input,
        target,
        **_launch_options(score, weight, class_gamma, term, ignore_index, reduction),
        denominator=_divisor(input, target, normalizer, normalizer_number, reduction, counted),
        grad_mode=GRAD_BACKWARD,
        grad=grad,
        grad_output=grad_output,
    )
    return grad


@_backward_op.register_fake
def _(grad_output, input, *args):
    return torch.empty_like(input)


def _setup_context(ctx, inputs, output):
    input, target, normalizer, normalizer_number, *options, _store_grad = inputs
    loss, grad, stored, counted = output
    ctx.mark_non_differentiable(grad, stored, counted)
    ctx.set_materialize_grads(False)  # no logits-sized zeros for the other outputs' gradients
    ctx.normalizer_number = normalizer_number
    # A normalizer that requires grad gets d (sum / normalizer) / d normalizer = -loss / normalizer.
    ctx.normalizer_grad = normalizer is not None and normalizer.requires_grad
    save_options(
        ctx, (input, target, normalizer, grad, stored, counted, loss if ctx.normalizer_grad else None), options
    )


def _backward(ctx, grad_loss, *_):
    unused = (None,) * 8  # target, normalizer_number and the options
    if grad_loss is None:  # the loss was not used (gradients are not materialized as zeros)
        return (None, None, None) + unused
    (input, target, normalizer, grad, stored, counted, loss), options = saved_options(ctx)
    grad_normalizer = None
    if ctx.normalizer_grad:
        grad_normalizer = (-grad_loss * loss / normalizer).to(normalizer.dtype)
    if not ctx.needs_input_grad[0]:
        return (None, None, grad_normalizer) + unused
    if torch.is_grad_enabled():  # create_graph=True: the gradient itself must be differentiable
        reference_normalizer = normalizer if normalizer is not None else ctx.normalizer_number
        grad = differentiable_grad(_reference(target, reference_normalizer, *options), input, grad_loss)
        return (grad, None, grad_normalizer) + unused
    reduction = options[-1]
    if backward_in_place(grad):
        sigmoid_focal_launch(
            input,
            target,
            **_launch_options(*options),
            denominator=_divisor(input, target, normalizer, ctx.normalizer_number, reduction, counted),
            grad_mode=GRAD_BACKWARD,
            grad=grad,
            grad_output=grad_loss,
            stored=stored,
            skip_if_stored=True,
        )
    else:
        grad = _backward_call(grad_loss, input, target, normalizer, ctx.normalizer_number, counted, *options)
    return (grad, None, grad_normalizer) + unused


_forward_op.register_autograd(_backward, setup_context=_setup_context)
_forward_call = eager_op(_forward_op, _setup_context, _backward)
_backward_call = eager_op(_backward_op)


# --- canonical backend functions ---------------------------------------------------


def _reference(target, normalizer, score, weight, class_gamma, term, ignore_index, reduction):
    """The loss as the eager reference computes it, a function of the logits."""
    term = SigmoidTerm.decode(term)
    if class_gamma is not None:
        term = dataclasses.replace(term, gamma=class_gamma)
    return lambda input: reference.sigmoid_loss(
        input,
        target,
        score,
        term=term,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        normalizer=normalizer,
    )


def sigmoid_loss(input, target, score=None, *, term, weight, ignore_index, reduction, normalizer):
    """A one-vs-all sigmoid loss of ``(N, C, P)`` logits, fused in Triton (the reference's
    arguments and result).

    Args:
        input: ``(N, C, P)`` logits, any strides, float16/bfloat16/float32/float64.
        target: dense floating ``(N, C, P)`` targets (soft values allowed, any strides) or
            integer ``(N, P)`` class indices (``C``: background, ``ignore_index``: ignored row).
        score: ``None``, or with class indices ``(N, P)``: the positive's target value.
        term: the :class:`~triton_focal.sigmoid_term.SigmoidTerm`; its ``gamma`` may be a
            ``(C,)`` tensor (the focal term).
        weight: ``None`` or a tensor expanded to ``(N, C, P)`` (stride 0 allowed).
        ignore_index: int.
        reduction: ``"none"``, ``"sum"`` or ``"mean"``.
        normalizer: ``None``, a float or a 0-dim tensor: the result is ``sum / normalizer``.

    Returns:
        ``(N, C, P)`` for ``"none"``, else a 0-dim tensor, in the input's dtype.
    """
    class_gamma = None
    if isinstance(term.gamma, torch.Tensor):
        class_gamma = term.gamma.to(device=input.device, dtype=compute_dtype(input.dtype)).contiguous()
        term = dataclasses.replace(term, gamma=0.0)
    options = (score, weight, class_gamma, term.encode(), int(ignore_index), reduction)
    if functorch_active():  # torch.func transforms: see autograd.py
        return _reference(target, normalizer, *options)(input)
    needs_grad = input.requires_grad and torch.is_grad_enabled()
    store_grad = forward_may_store(needs_grad, reduction)
    tensor = normalizer if isinstance(normalizer, torch.Tensor) else None
    number = None if normalizer is None or tensor is not None else float(normalizer)
    loss, *_ = _forward_call(input, target, tensor, number, *options, store_grad)
    return loss


def sigmoid_focal_loss(input, target, *, alpha, gamma, weight, ignore_index, reduction, normalizer):
    """One-vs-all sigmoid focal loss of ``(N, C, P)`` logits (:func:`sigmoid_loss` of the focal term)."""
    term = SigmoidTerm("focal", alpha=float(alpha), gamma=gamma if isinstance(gamma, torch.Tensor) else float(gamma))
    return sigmoid_loss(
        input, target, term=term, weight=weight, ignore_index=ignore_index, reduction=reduction, normalizer=normalizer
    )


def sigmoid_focal_loss_star(input, target, *, alpha, gamma, reduction):
    """FL* of ``(N, C, P)`` logits against dense ``(N, C, P)`` targets:
    ``loss = alpha_t * softplus(-gamma x (2t - 1)) / gamma`` with ``gamma > 0``.

    Returns:
        ``(N, C, P)`` for ``"none"``, else a 0-dim tensor, in the input's dtype.
    """
    term = SigmoidTerm("star", alpha=float(alpha), gamma=float(gamma))
    return sigmoid_loss(input, target, term=term, weight=None, ignore_index=-100, reduction=reduction, normalizer=None)
