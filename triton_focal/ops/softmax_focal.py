"""Triton softmax focal loss: launcher, ``torch.library`` ops and autograd.

Who writes the gradient (``grad_policy.py`` has the whole policy, shared with the sigmoid loss):

* eager forward: one launch computes the loss and, when the device's policy flag says so,
  the gradient for ``grad_output == 1`` while the logits are on chip. Plain
  ``loss.backward()`` then moves no byte: its backward launch sees ``grad_output == 1`` and
  a stored gradient, and exits (decided on the device, no host sync);
* any other ``grad_output`` (GradScaler, accumulation, a weighted sum): the backward
  recomputes the gradient from the logits, times ``grad_output``, and clears the flag, so
  later forwards compute the loss only: one read of the logits forward, one read and one
  write backward (a stored gradient would cost a read and a write more to rescale);
* traced (``torch.compile``): the forward computes the loss only, the backward recomputes.

The ops are ``torch.library.custom_op`` s with fake implementations, so
``torch.compile(fullgraph=True)`` keeps them in one graph (``triton_op`` + ``wrap_triton``
would let Inductor see the kernel, but does not run under ``TRITON_INTERPRET=1``).
"""

from typing import Optional

import torch

from .. import reference
from .._autograd_state import functorch_active
from ..kernels.grad_mode import GRAD_ALWAYS, GRAD_BACKWARD, GRAD_IF_POLICY, GRAD_NONE, ROW_STATS_READ, ROW_STATS_WRITE
from ..kernels.params import NCP, NP, Float, SoftmaxNumbers
from ..kernels.softmax_focal import _softmax_focal_kernel
from ..kernels.softmax_focal_one_read import _softmax_focal_one_read_kernel
from ..kernels.softmax_rows import DIVIDE_BY_NUMBER, DIVIDE_BY_TENSOR
from ..reference import compute_dtype
from .autograd import backward_in_place, differentiable_grad, eager_op, save_options, saved_options
from .denominators import target_denominators
from .grad_policy import finish_empty_launch, forward_may_store, policy_flag, stored_flag
from .inplace_grad import is_dense, scale_stored_grad
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
from .softmax_options import NORMALIZER_ARG, SoftmaxOptions
from .workspace import partials, ticket_counter

# Launch table, from the sm_90 cost model (``python -m perf.model``), not from GPU timings
# (none were available): each choice below is what the model showed memory-bound without
# spills. A lane loads 16 bytes per access, the widest coalesced load.
#
# Classes strided by P (channels-first): a thread owns 16 bytes of pixels (8 bf16) and steps
# over the classes STRIDED_BLOCK_C at a time, so class reductions never leave the thread and
# 8 x 16 bytes are in flight per thread.
STRIDED_BLOCK_C = 8
STRIDED_NUM_WARPS = 4
# Contiguous classes ((T, V) rows, channels_last): a lane owns 16 bytes of consecutive
# classes. A long row gets a whole SM: LONG_ROW_WARPS warps of LANES_PER_THREAD lanes each
# (32 KB in flight per SM, at most 64 registers a thread), one row per program. Up to about a
# 32k vocabulary in bf16 the rows in flight are few enough for the gradient pass to re-read
# them from L2 with every SM busy (launch.PersistentGrid); a 128k row (250 KB in bf16) is not:
# 51 rows fit in the quarter of an H100's L2 that is sure to keep them, fewer than the SMs, so
# the grid fills the GPU and the re-read comes from DRAM. Short rows share a program, one lane
# per thread.
LONG_ROW_WARPS = 32
LANES_PER_THREAD = 2
SHORT_ROW_WARPS = 4
MAX_SPLIT = 32 * LONG_ROW_WARPS * LANES_PER_THREAD  # lanes of one row
# Few classes, positions contiguous (segmentation): the one-read kernel holds every class of
# a thread's positions in registers (kernels/softmax_focal_one_read.py). Up to 32 classes, a
# thread holds at most ONE_READ_VALUES logits (the positions per thread shrink as classes
# grow), which keeps it near 100 registers with no spills on sm_90 and 5-6 programs per SM.
ONE_READ_MAX_CLASSES = 32
ONE_READ_VALUES = 64
ONE_READ_NUM_WARPS = 4


def _launch_config(num_classes, num_rows, stride_c, element_size):
    """``(BLOCK_C, BLOCK_P, SPLIT, num_warps)`` for ``num_rows`` rows of ``num_classes``."""
    vec = max(16 // element_size, 1)
    if stride_c != 1 and num_classes > 1:
        block_c = min(STRIDED_BLOCK_C, next_power_of_2(num_classes))
        block_p = min(vec * 32 * STRIDED_NUM_WARPS, max(next_power_of_2(num_rows), 32))
        return block_c, _fill_threads(block_c, block_p, STRIDED_NUM_WARPS), 1, STRIDED_NUM_WARPS
    block_c = min(vec, next_power_of_2(num_classes))
    split = min(next_power_of_2(cdiv(num_classes, block_c)), MAX_SPLIT)
    if split >= 32 * LONG_ROW_WARPS:
        return block_c, split, split, LONG_ROW_WARPS
    block_p = max(min(32 * SHORT_ROW_WARPS, split * next_power_of_2(num_rows)), split)
    return block_c, _fill_threads(block_c, block_p, SHORT_ROW_WARPS), split, SHORT_ROW_WARPS


def _fill_threads(block_c, block_p, num_warps):
    """``block_p`` grown until the ``(BLOCK_C, BLOCK_P)`` tile has an element for every thread
    (a few short rows would give it fewer). Triton 3.6 miscompiles the class-step kernel on
    such a replicated tile (its layout pass fails); the extra lanes are masked off."""
    return max(block_p, 32 * num_warps // block_c)


def _plan(num_classes, num_rows, stride_c, element_size):
    """``_launch_config`` and the bytes a tile reads between its passes over the classes."""
    block_c, block_p, split, num_warps = _launch_config(num_classes, num_rows, stride_c, element_size)
    return block_c, block_p, split, num_warps, (block_p // split) * num_classes * element_size


def _one_read_plan(num_classes, stride_p, element_size, label_smoothing, softcap):
    """``(BLOCK_A, BLOCK_B, VEC, num_warps)`` of the one-read kernel where it applies, else None:
    positions contiguous, few classes, no label smoothing (a second sum over the classes) and no
    softcap (the class-step kernel has both)."""
    if stride_p != 1 or not 1 <= num_classes <= ONE_READ_MAX_CLASSES or label_smoothing > 0 or softcap is not None:
        return None
    block_a = 1 << (num_classes.bit_length() - 1)  # the largest power of two <= C
    rest = num_classes - block_a
    block_b = next_power_of_2(rest) if rest else 0
    # as many positions per thread as ONE_READ_VALUES allows, up to a 16-byte load
    vec = max(1, min(16 // element_size, 1 << ((ONE_READ_VALUES // (block_a + block_b)).bit_length() - 1)))
    return block_a, block_b, vec, ONE_READ_NUM_WARPS


def row_stats_buffer(input, label_smoothing):
    """A ``(3, rows)`` buffer for the per-row softmax statistics where they pay, else None.

    They pay where the logits' re-read would come from DRAM (many classes: the grid fills the
    GPU rather than keep the rows in L2): a backward that recomputes the gradient then reads 3
    numbers a row instead of the row's C logits once more. Label smoothing needs more per-row
    sums than these; its backward recomputes everything.
    """
    if label_smoothing > 0 or input.numel() == 0:
        return None
    n_launch, p_launch, (x_strides,) = fold_rows(input.shape, input.stride())
    _, _, _, num_warps, footprint = _plan(input.shape[1], p_launch, x_strides[1], input.element_size())
    if PersistentGrid.for_device(input.device).rereads_in_l2(num_warps, footprint):
        return None
    return torch.empty(3, n_launch * p_launch, dtype=compute_dtype(input.dtype), device=input.device)


@on_input_device
def softmax_focal_launch(
    input,
    target,
    options,
    *,
    denominators,
    grad_mode,
    grad=None,
    grad_output=None,
    stored=None,
    skip_if_stored=False,
    row_stats=None,
):
    """Launch the kernel once.

    Args:
        input: logits ``(N, C, P)``, float16/bfloat16/float32/float64, any strides.
        target: class indices ``(N, P)``, any integer dtype.
        options: the loss's ``SoftmaxOptions``. Its ``element_weight`` is ``(N, P)`` (any
            strides, 0 included); a ``normalizer`` tensor is on the device, any real dtype.
        denominators: ``(2,)`` mean divisors (focal, z-loss) for ``"mean"``, else None.
            With a ``normalizer`` the launch divides by it instead (``"mean"`` and ``"sum"``).
        grad_mode: ``GRAD_NONE``, ``GRAD_ALWAYS``, ``GRAD_IF_POLICY`` or ``GRAD_BACKWARD``.
        grad: the gradient buffer, ``(N, C, P)`` in ``input``'s dtype (any mode but GRAD_NONE).
        grad_output: ``()`` or ``(N, P)`` (GRAD_BACKWARD).
        stored: ``(1,)`` int32: set by a GRAD_IF_POLICY forward, read by a backward that
            ``skip_if_stored``.
        row_stats: ``row_stats_buffer``'s buffer, or None: a forward writes the per-row
            softmax statistics there, a backward reads them instead of recomputing them.

    Returns:
        The loss (``(N, P)`` for ``"none"``, else 0-dim, in ``input``'s dtype), or None for
        GRAD_BACKWARD.
    """
    o = options
    num_classes = input.shape[1]
    acc = compute_dtype(input.dtype)
    compute_loss = grad_mode != GRAD_BACKWARD
    if input.numel() == 0 or target.numel() == 0:
        finish_empty_launch(grad, stored, grad_mode)
        if not compute_loss:
            return None
        return input.new_zeros(target.shape) if o.reduction == "none" else input.new_zeros(())

    per_element = o.reduction == "none"
    divisor = 0 if o.normalizer is None or per_element else DIVIDE_BY_TENSOR
    if divisor and not isinstance(o.normalizer, torch.Tensor):
        divisor = DIVIDE_BY_NUMBER
    if divisor == DIVIDE_BY_TENSOR:
        denominators = o.normalizer  # read where the mean's divisors would be
    loss = input.new_empty(target.shape) if per_element and compute_loss else None
    go_scalar = grad_output is not None and grad_output.dim() == 0
    if grad_output is not None and not go_scalar:
        grad_output = grad_output.expand(target.shape)  # stride 0 where it was broadcast
    no_tensor = (0, 0)  # the strides of a tensor a constexpr flag leaves unread, or of a 0-dim one
    strides = [
        input.stride(),
        target.stride(),
        loss.stride() if loss is not None else no_tensor,
        grad.stride() if grad is not None else (0, 0, 0),
        grad_output.stride() if grad_output is not None and not go_scalar else no_tensor,
        o.element_weight.stride() if o.element_weight is not None else no_tensor,
    ]
    n_launch, p_launch, (x_s, t_s, l_s, g_s, go_s, ew_s) = fold_rows(input.shape, *strides)
    one_read = None
    if row_stats is None:
        one_read = _one_read_plan(num_classes, x_s[2], input.element_size(), o.label_smoothing, o.softcap)
    if one_read is not None:
        block_a, block_b, vec, num_warps = one_read
        rows_per_tile, footprint = vec * 32 * num_warps, 0  # nothing is re-read
    else:
        block_c, block_p, split, num_warps, footprint = _plan(num_classes, p_launch, x_s[1], input.element_size())
        rows_per_tile = block_p // split
    num_p_blocks = cdiv(p_launch, rows_per_tile)
    num_tiles = n_launch * num_p_blocks
    reduced = compute_loss and not per_element
    if reduced:
        loss = input.new_empty(())

    class_gamma = isinstance(o.gamma, torch.Tensor)
    class_alpha = isinstance(o.alpha, torch.Tensor)
    dummy = input  # pointer for arguments a constexpr flag leaves unread
    flag = policy_flag(input.device) if grad_mode in (GRAD_IF_POLICY, GRAD_BACKWARD) else dummy
    either = lambda tensor: dummy if tensor is None else tensor  # noqa: E731
    numbers = SoftmaxNumbers(
        gamma=Float(*split_float(0.0 if class_gamma else o.gamma)),
        alpha=Float(*split_float(1.0 if class_alpha else o.alpha)),
        label_smoothing=Float(*split_float(o.label_smoothing)),
        z_loss=Float(*split_float(o.z_loss)),
        softcap=Float(*split_float(o.softcap or 1.0)),
        poly_epsilon=Float(*split_float(o.poly_epsilon)),
        divisor=Float(*split_float(float(o.normalizer) if divisor == DIVIDE_BY_NUMBER else 1.0)),
        ignore_index=o.ignore_index,
    )
    args = [
        NCP(input, *x_s),
        NP(target, *t_s),
        NP(either(loss), *l_s),
        NCP(either(grad), *g_s),
        NP(either(grad_output), *go_s),
        NP(either(o.element_weight), *ew_s),
        o.gamma if class_gamma else dummy,
        o.alpha if class_alpha else dummy,
        either(o.weight),
        either(denominators),
        partials(PersistentGrid.for_device(input.device).max_programs, 1, acc, input.device) if reduced else dummy,
        ticket_counter(input.device) if reduced else dummy,
        flag,
        either(stored),
        either(row_stats),
        num_classes,
        p_launch,
        num_p_blocks,
        num_tiles,
        n_launch * p_launch,
        numbers,
    ]
    meta = dict(  # what both kernels are compiled for
        HAS_CLASS_GAMMA=class_gamma,
        GAMMA_INT=integer_gamma(o.gamma),
        HAS_CLASS_ALPHA=class_alpha,
        HAS_WEIGHT=o.weight is not None,
        HAS_Z_LOSS=o.z_loss > 0,
        PER_ELEMENT=per_element,
        MEAN=o.reduction == "mean" and not divisor,
        DIVISOR=divisor,
        HAS_POLY=o.poly_epsilon != 0,
        HAS_ELEMENT_WEIGHT=o.element_weight is not None,
        GRAD_MODE=grad_mode,
        GRAD_OUT_IS_SCALAR=go_scalar,
        SKIP_IF_STORED=skip_if_stored,
        ACC=acc_dtype(input.dtype),
        num_warps=num_warps,
    )
    if one_read is not None:
        meta.update(
            BLOCK_A=block_a, BLOCK_B=block_b, VEC=vec, BLOCK_P=rows_per_tile, EVEN_P=p_launch % rows_per_tile == 0
        )
        persistent_launch(_softmax_focal_one_read_kernel, num_tiles, footprint, args, meta)
        return loss
    meta.update(
        BLOCK_C=block_c,
        BLOCK_P=block_p,
        SPLIT=split,
        HAS_SMOOTHING=o.label_smoothing > 0,
        HAS_SOFTCAP=o.softcap is not None,
        ROW_STATS=0 if row_stats is None else ROW_STATS_READ if grad_mode == GRAD_BACKWARD else ROW_STATS_WRITE,
    )
    persistent_launch(_softmax_focal_kernel, num_tiles, footprint, args, meta)
    return loss


def mean_denominators(target, options, dtype):
    """``(2,)``: for ``"mean"``, the sum of ``w_y`` over non-ignored rows (``F.cross_entropy``'s
    divisor) and their count (the z-loss's divisor), from one launch over the targets (no host
    sync); with an ``element_weight``, the sums of ``element_weight * w_y`` and of
    ``element_weight`` (a weighted mean); for the other reductions, or where a ``normalizer``
    divides instead, an empty placeholder."""
    o = options
    if o.reduction != "mean" or o.normalizer is not None:
        return target.new_empty(0, dtype=dtype)
    if target.numel() == 0:
        return target.new_zeros(2, dtype=dtype)
    classes = o.weight.shape[0] if o.weight is not None else 0
    return target_denominators(target, o.weight, o.ignore_index, classes, dtype=dtype, element_weight=o.element_weight)


def _denominators_size(options):
    return 2 if options.reduction == "mean" and options.normalizer is None else 0


# --- torch.library ops ----------------------------------------------------------------
# Each op takes the options last, as SoftmaxOptions.op_args() lists them (the schemas below
# spell them out: a schema has no dataclass), and rebuilds the object first thing.


@torch.library.custom_op("triton_focal::softmax_focal_fwd", mutates_args=())
def _forward_op(
    input: torch.Tensor,
    target: torch.Tensor,
    store_grad: bool,
    needs_grad: bool,
    class_gamma: Optional[torch.Tensor],
    gamma: float,
    class_alpha: Optional[torch.Tensor],
    alpha: float,
    weight: Optional[torch.Tensor],
    ignore_index: int,
    reduction: str,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: Optional[float] = None,
    poly_epsilon: float = 0.0,
    element_weight: Optional[torch.Tensor] = None,
    normalizer: Optional[torch.Tensor] = None,
    normalizer_number: Optional[float] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, grad, stored, denominators, row_stats)``. With ``store_grad`` the gradient for
    ``grad_output == 1`` goes to ``grad`` where the device policy says so (``stored``); with
    ``needs_grad``, the per-row statistics go to ``row_stats`` where they pay (else it is empty)."""
    options = SoftmaxOptions.from_op_args(
        class_gamma,
        gamma,
        class_alpha,
        alpha,
        weight,
        ignore_index,
        reduction,
        label_smoothing,
        z_loss,
        softcap,
        poly_epsilon,
        element_weight,
        normalizer,
        normalizer_number,
    )
    denominators = mean_denominators(target, options, compute_dtype(input.dtype))
    grad = torch.empty_like(input) if store_grad else input.new_empty(0)
    stored = stored_flag(input.device, store_grad)
    row_stats = row_stats_buffer(input, label_smoothing) if needs_grad else None
    loss = softmax_focal_launch(
        input,
        target,
        options,
        denominators=denominators,
        grad_mode=GRAD_IF_POLICY if store_grad else GRAD_NONE,
        grad=grad if store_grad else None,
        stored=stored,
        row_stats=row_stats,
    )
    return loss, grad, stored, denominators, input.new_empty(0) if row_stats is None else row_stats


@_forward_op.register_fake
def _(input, target, store_grad, needs_grad, *options):
    o = SoftmaxOptions.from_op_args(*options)
    loss = input.new_empty(target.shape) if o.reduction == "none" else input.new_empty(())
    grad = torch.empty_like(input) if store_grad else input.new_empty(0)
    row_stats = row_stats_buffer(input, o.label_smoothing) if needs_grad else None
    denominators = input.new_empty(_denominators_size(o), dtype=compute_dtype(input.dtype))
    return (
        loss,
        grad,
        input.new_empty(1, dtype=torch.int32),
        denominators,
        input.new_empty(0) if row_stats is None else row_stats,
    )


@torch.library.custom_op("triton_focal::softmax_focal_bwd", mutates_args=())
def _backward_op(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    target: torch.Tensor,
    denominators: torch.Tensor,
    row_stats: torch.Tensor,
    class_gamma: Optional[torch.Tensor],
    gamma: float,
    class_alpha: Optional[torch.Tensor],
    alpha: float,
    weight: Optional[torch.Tensor],
    ignore_index: int,
    reduction: str,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: Optional[float] = None,
    poly_epsilon: float = 0.0,
    element_weight: Optional[torch.Tensor] = None,
    normalizer: Optional[torch.Tensor] = None,
    normalizer_number: Optional[float] = None,
) -> torch.Tensor:
    """The gradient times ``grad_output``, recomputed from the logits into a new buffer."""
    options = SoftmaxOptions.from_op_args(
        class_gamma,
        gamma,
        class_alpha,
        alpha,
        weight,
        ignore_index,
        reduction,
        label_smoothing,
        z_loss,
        softcap,
        poly_epsilon,
        element_weight,
        normalizer,
        normalizer_number,
    )
    grad = torch.empty_like(input)
    softmax_focal_launch(
        input,
        target,
        options,
        denominators=denominators,
        grad_mode=GRAD_BACKWARD,
        grad=grad,
        grad_output=grad_output,
        row_stats=_saved(row_stats),
    )
    return grad


@_backward_op.register_fake
def _(grad_output, input, *args):
    return torch.empty_like(input)


_FORWARD_OPTIONS_AT = 4  # the forward op's options follow input, target, store_grad, needs_grad


def _saved(row_stats):
    return row_stats if row_stats.numel() > 0 else None


def _setup_context(ctx, inputs, output):
    options = SoftmaxOptions.from_op_args(*inputs[_FORWARD_OPTIONS_AT:])
    loss, grad, stored, denominators, row_stats = output
    ctx.mark_non_differentiable(grad, stored, denominators, row_stats)
    ctx.set_materialize_grads(False)  # no logits-sized zeros for the other outputs' gradients
    # A normalizer that requires grad gets d (sum / normalizer) / d normalizer = -loss / normalizer.
    normalizer = options.normalizer
    ctx.normalizer_grad = isinstance(normalizer, torch.Tensor) and normalizer.requires_grad
    saved = (inputs[0], inputs[1], grad, stored, denominators, row_stats, loss if ctx.normalizer_grad else None)
    save_options(ctx, saved, options.op_args())


def _backward(ctx, grad_loss, *_):
    count = len(ctx.needs_input_grad)  # the op's inputs, trailing defaults dropped
    if grad_loss is None:  # the loss was not used (gradients are not materialized as zeros)
        return (None,) * count
    (input, target, grad, stored, denominators, row_stats, loss), op_args = saved_options(ctx)
    options = SoftmaxOptions.from_op_args(*op_args)
    grads = [None] * count
    if ctx.normalizer_grad:
        normalizer = options.normalizer
        grads[_FORWARD_OPTIONS_AT + NORMALIZER_ARG] = (-grad_loss * loss / normalizer).to(normalizer.dtype)
    if not ctx.needs_input_grad[0]:
        return tuple(grads)
    if torch.is_grad_enabled():  # create_graph=True: the gradient itself must be differentiable
        grads[0] = differentiable_grad(_reference(options, target), input, grad_loss)
        return tuple(grads)
    if backward_in_place(grad):
        softmax_focal_launch(
            input,
            target,
            options,
            denominators=denominators,
            grad_mode=GRAD_BACKWARD,
            grad=grad,
            grad_output=grad_loss,
            stored=stored,
            skip_if_stored=True,
            row_stats=_saved(row_stats),
        )
    else:
        grad = _backward_call(grad_loss, input, target, denominators, row_stats, *op_args)
    grads[0] = grad
    return tuple(grads)


_forward_op.register_autograd(_backward, setup_context=_setup_context)
_forward_call = eager_op(_forward_op, _setup_context, _backward)
_backward_call = eager_op(_backward_op)


def _reference(options, target):
    """The loss as the eager reference computes it, a function of the logits."""
    return lambda input: reference.softmax_focal_loss(input, target, **options.as_kwargs())


# --- in-place gradient -----------------------------------------------------------------


@torch.library.custom_op("triton_focal::softmax_focal_fwd_inplace", mutates_args=("input",))
def _forward_inplace_op(
    input: torch.Tensor,
    target: torch.Tensor,
    class_gamma: Optional[torch.Tensor],
    gamma: float,
    class_alpha: Optional[torch.Tensor],
    alpha: float,
    weight: Optional[torch.Tensor],
    ignore_index: int,
    reduction: str,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: Optional[float] = None,
    poly_epsilon: float = 0.0,
    element_weight: Optional[torch.Tensor] = None,
    normalizer: Optional[torch.Tensor] = None,
    normalizer_number: Optional[float] = None,
) -> torch.Tensor:
    options = SoftmaxOptions.from_op_args(
        class_gamma,
        gamma,
        class_alpha,
        alpha,
        weight,
        ignore_index,
        reduction,
        label_smoothing,
        z_loss,
        softcap,
        poly_epsilon,
        element_weight,
        normalizer,
        normalizer_number,
    )
    denominators = mean_denominators(target, options, compute_dtype(input.dtype))
    return softmax_focal_launch(input, target, options, denominators=denominators, grad_mode=GRAD_ALWAYS, grad=input)


@_forward_inplace_op.register_fake
def _(input, target, *options):
    per_element = SoftmaxOptions.from_op_args(*options).reduction == "none"
    return input.new_empty(target.shape) if per_element else input.new_empty(())


class _InplaceSoftmaxFocal(torch.autograd.Function):
    """The forward writes the gradient into the logits' storage: the logits are gone, so the
    backward can only rescale it (in place, and not at all for ``grad_output == 1``)."""

    @staticmethod
    def forward(ctx, logits, shape, target, options):
        loss = _forward_inplace_op(logits.view(shape), target, *options.op_args())
        ctx.mark_dirty(logits)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(logits)
        ctx.shape = shape
        ctx.per_element = options.reduction == "none"
        return loss, logits

    @staticmethod
    def backward(ctx, grad_loss, _grad_of_logits):
        if grad_loss is None:
            return None, None, None, None
        (grad,) = ctx.saved_tensors
        scaled = scale_stored_grad(grad.view(ctx.shape), grad_loss.unsqueeze(1) if ctx.per_element else grad_loss)
        return scaled.view(grad.shape), None, None, None


def _inplace_allowed(logits, input, normalizer):
    """In place needs a grad-requiring non-leaf whose elements do not overlap, in eager mode,
    that ``input`` views (not a copy made by reshaping), and no normalizer that requires grad
    (the in-place backward only rescales the logits' gradient)."""
    base = logits if logits._base is None else logits._base
    if isinstance(normalizer, torch.Tensor) and normalizer.requires_grad:
        return False
    if base.is_leaf or torch.compiler.is_compiling() or not is_dense(logits):
        return False
    try:
        return logits.view(input.shape).data_ptr() == input.data_ptr()
    except RuntimeError:  # not viewable as (N, C, P): input is a copy
        return False


def softmax_focal_loss(input, target, *, inplace_grad=False, logits=None, **options):
    """Softmax focal loss of ``(N, C, P)`` logits, the Triton backend (canonical arguments).

    Args:
        input: logits ``(N, C, P)``, any strides, float16/bfloat16/float32/float64.
        target: class indices ``(N, P)``, any integer dtype, in ``[0, C)`` or ``ignore_index``.
        inplace_grad: write the gradient into the logits' storage (they are clobbered; no
            extra memory). Only for a non-leaf, non-overlapping tensor in eager mode; elsewhere
            the gradient gets its own buffer.
        logits: the user's tensor that ``input`` views (for ``inplace_grad``, which must mark
            that tensor, not a view made of it here, as modified).
        options: the loss's options as the public layer's canonical keyword arguments
            (``gamma``, ``alpha``, ``weight``, ``ignore_index``, ``reduction``,
            ``label_smoothing``, ``z_loss``, ``softcap``, ``poly_epsilon``,
            ``element_weight``, ``normalizer``: :meth:`SoftmaxOptions.canonical`).

    Returns:
        ``(N, P)`` for ``"none"``, else a 0-dim tensor, in ``input``'s dtype.
    """
    options = SoftmaxOptions.canonical(input, **options)
    if functorch_active():  # torch.func transforms: see autograd.py
        return _reference(options, target)(input)
    needs_grad = input.requires_grad and torch.is_grad_enabled()
    logits = input if logits is None else logits
    if inplace_grad and needs_grad and _inplace_allowed(logits, input, options.normalizer):
        loss, _ = _InplaceSoftmaxFocal.apply(logits, input.shape, target, options)
        return loss
    store_grad = forward_may_store(needs_grad, options.reduction)
    loss, *_ = _forward_call(input, target, store_grad, needs_grad, *options.op_args())
    return loss
