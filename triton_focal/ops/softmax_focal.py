"""Triton softmax focal loss: launchers, ``torch.library`` ops and autograd.

The forward launch computes the loss and, when a gradient will be needed, the gradient
too (the logits are in registers anyway): forward + backward read the logits once and
write the gradient once. The backward only scales the stored gradient by ``grad_output``
(``stored_grad.py``), and skips even that, on the device, where ``grad_output`` is 1.

The ops are ``torch.library.custom_op`` s with fake implementations, so
``torch.compile(fullgraph=True)`` keeps them in one graph (``triton_op`` + ``wrap_triton``
would let Inductor see the kernel, but does not run under ``TRITON_INTERPRET=1``).
"""

from typing import Optional

import torch
import triton

from ..kernels.softmax_focal import _softmax_focal_fwd_kernel
from ..reference import compute_dtype, softmax_mean_denominator
from .scalars import split_float
from .stored_grad import is_dense, stored_grad_times

# Launch table. Reasoned, not measured (no GPU was available to tune it); each constant
# says why. Autotuning is deliberately off: the table is the whole policy.
#
# TILE: elements a program holds per class block. 8192 fp32 values over 8 warps is 32 per
# thread per live tile; the kernel keeps about three tiles live (x, p, gradient), which
# stays within the register file without spilling on current NVIDIA/AMD parts.
TILE = 8192
# Classes strided by P (channels-first): the whole class vector of a pixel tile fits in
# one block up to here, so the gradient comes from registers in one read of the logits.
# At C = 1024, BLOCK_P = 8 is still 32 contiguous bytes per class row (one sector).
MAX_SINGLE_BLOCK_STRIDED = 1024
# Classes strided by P beyond that: 64 positions (256 B of fp32 per class row, fully
# coalesced) x 64 classes per block, looping over classes.
LOOP_BLOCK_P_STRIDED, LOOP_BLOCK_C_STRIDED = 64, 64
# Classes contiguous (rows, channels_last): a whole row in one block up to 8192 classes
# (32 KB of fp32), several rows per program when rows are short.
MAX_SINGLE_BLOCK_CONTIGUOUS = 8192
# Longer rows (vocabularies): one row per program, 8192-class blocks, three passes at most
# over an L2-resident row (a 128K-vocabulary fp32 row is 512 KB).
LOOP_BLOCK_C_CONTIGUOUS = 8192


def _launch_config(num_classes, num_positions, stride_c):
    """``(BLOCK_P, BLOCK_C, single_block, num_warps)`` for a ``(N, C, P)`` launch."""
    p_cap = triton.next_power_of_2(max(num_positions, 1))
    c_pow2 = triton.next_power_of_2(max(num_classes, 1))
    if stride_c == 1 or num_classes == 1:
        if c_pow2 <= MAX_SINGLE_BLOCK_CONTIGUOUS:
            block_c, single = c_pow2, True
            block_p = min(max(TILE // block_c, 1), p_cap)
        else:
            block_c, single, block_p = LOOP_BLOCK_C_CONTIGUOUS, False, 1
    elif c_pow2 <= MAX_SINGLE_BLOCK_STRIDED:
        block_c, single = c_pow2, True
        block_p = min(max(TILE // block_c, 1), p_cap)
    else:
        block_c, single = LOOP_BLOCK_C_STRIDED, False
        block_p = min(LOOP_BLOCK_P_STRIDED, p_cap)
    # Warps by tile size: 4 up to 1K elements, 8 up to 4K, 16 beyond (flash-attn's ladder).
    elements = block_p * block_c
    num_warps = 4 if elements <= 1024 else 8 if elements <= 4096 else 16
    return block_p, block_c, single, num_warps


def _acc_dtype(dtype):
    """Triton's accumulation dtype: float32, or float64 for float64 logits (gradcheck)."""
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def _fold_rows(shape, *strides):
    """``(N, C, 1)`` rows seen as one image of ``N`` positions, so a program takes several
    short rows at once; the grid is 1-D either way, so N is never limited by grid.y."""
    n, _, p = shape
    if p == 1 and n > 1:
        return 1, n, [(0, s[1], s[0]) if len(s) == 3 else (0, s[0]) for s in strides]
    return n, p, list(strides)


def softmax_focal_fwd(input, target, gamma, alpha, weight, ignore_index, reduction, label_smoothing,
                      compute_grad, grad=None):
    """Launch the forward kernel: loss, and the gradient when ``compute_grad``.

    Args:
        input: logits ``(N, C, P)``, float16/bfloat16/float32/float64, any strides.
        target: class indices ``(N, P)``, any integer dtype.
        gamma: a float, or a float32 ``(C,)`` tensor.
        alpha: a float (1.0 for none), or a float32 ``(C,)`` tensor.
        weight: None or a float32 ``(C,)`` tensor.
        ignore_index: int.
        reduction: ``"none"``, ``"sum"`` or ``"mean"``.
        label_smoothing: float in ``[0, 1]``.
        compute_grad: write the gradient of the (reduced) loss with respect to ``input``.
        grad: where to write it, ``(N, C, P)`` in ``input``'s dtype (``input`` itself for an
            in-place gradient); allocated like ``input`` when None.

    Returns:
        ``(loss, grad)``: loss ``(N, P)`` for ``"none"`` else 0-dim, in ``input``'s dtype;
        grad ``(N, C, P)``, or an empty tensor when not computed.
    """
    num_images, num_classes, num_positions = input.shape
    acc_torch = compute_dtype(input.dtype)
    if compute_grad and grad is None:
        grad = torch.empty_like(input)  # keeps input's strides when they are dense
    elif not compute_grad:
        grad = input.new_empty(0)

    denom = None
    if reduction == "mean":
        denom = softmax_mean_denominator(target, weight, ignore_index, acc_torch)
    if input.numel() == 0 or target.numel() == 0:
        if compute_grad:
            grad.zero_()
        if reduction == "none":
            return input.new_zeros(target.shape), grad
        return input.new_zeros(()), grad

    if reduction == "none":
        loss = input.new_empty(target.shape)
        loss_strides = loss.stride()
    else:
        loss_strides = (0, 0)
    grad_strides = grad.stride() if compute_grad else (0, 0, 0)
    n_launch, p_launch, (x_strides, t_strides, l_strides, g_strides) = _fold_rows(
        input.shape, input.stride(), target.stride(), loss_strides, grad_strides
    )
    block_p, block_c, single, num_warps = _launch_config(num_classes, p_launch, x_strides[1])
    num_p_blocks = triton.cdiv(p_launch, block_p)
    num_programs = n_launch * num_p_blocks
    if reduction != "none":
        loss = torch.empty(num_programs, dtype=acc_torch, device=input.device)

    class_gamma = isinstance(gamma, torch.Tensor)
    class_alpha = isinstance(alpha, torch.Tensor)
    dummy = input  # pointer for arguments a constexpr flag leaves unread
    gamma_value = 0.0 if class_gamma else float(gamma)
    alpha_value = 1.0 if class_alpha else float(alpha)
    _softmax_focal_fwd_kernel[(num_programs,)](
        input, target,
        gamma if class_gamma else dummy,
        alpha if class_alpha else dummy,
        weight if weight is not None else dummy,
        denom if denom is not None else dummy,
        loss, grad if compute_grad else dummy,
        *x_strides, *t_strides, *l_strides, *g_strides,
        num_classes, p_launch, num_p_blocks,
        *split_float(gamma_value), *split_float(alpha_value), *split_float(label_smoothing),
        int(ignore_index),
        BLOCK_P=block_p, BLOCK_C=block_c, SINGLE_BLOCK=single,
        HAS_CLASS_GAMMA=class_gamma, HAS_CLASS_ALPHA=class_alpha, HAS_WEIGHT=weight is not None,
        HAS_SMOOTHING=label_smoothing > 0, COMPUTE_GRAD=compute_grad,
        PER_ELEMENT=reduction == "none", MEAN=reduction == "mean",
        ACC=_acc_dtype(input.dtype), num_warps=num_warps,
    )
    if reduction == "none":
        return loss, grad
    # The partial sums are added by torch in a fixed order: bit-identical reruns.
    total = loss.sum()
    if reduction == "mean":
        total = total / torch.where(denom > 0, denom, torch.ones_like(denom))
    return total.to(input.dtype), grad


# --- torch.library ops ----------------------------------------------------------------


@torch.library.custom_op("triton_focal::softmax_focal_fwd", mutates_args=())
def _softmax_focal_fwd_op(
    input: torch.Tensor,
    target: torch.Tensor,
    class_gamma: Optional[torch.Tensor],
    gamma: float,
    class_alpha: Optional[torch.Tensor],
    alpha: float,
    weight: Optional[torch.Tensor],
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return softmax_focal_fwd(
        input, target, gamma if class_gamma is None else class_gamma,
        alpha if class_alpha is None else class_alpha, weight, ignore_index, reduction,
        label_smoothing, compute_grad,
    )


@_softmax_focal_fwd_op.register_fake
def _(input, target, class_gamma, gamma, class_alpha, alpha, weight, ignore_index, reduction,
      label_smoothing, compute_grad):
    loss = input.new_empty(target.shape) if reduction == "none" else input.new_empty(())
    grad = torch.empty_like(input) if compute_grad else input.new_empty(0)
    return loss, grad


@torch.library.custom_op("triton_focal::softmax_focal_fwd_inplace", mutates_args=("input",))
def _softmax_focal_fwd_inplace_op(
    input: torch.Tensor,
    target: torch.Tensor,
    class_gamma: Optional[torch.Tensor],
    gamma: float,
    class_alpha: Optional[torch.Tensor],
    alpha: float,
    weight: Optional[torch.Tensor],
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
) -> torch.Tensor:
    loss, _ = softmax_focal_fwd(
        input, target, gamma if class_gamma is None else class_gamma,
        alpha if class_alpha is None else class_alpha, weight, ignore_index, reduction,
        label_smoothing, True, grad=input,
    )
    return loss


@_softmax_focal_fwd_inplace_op.register_fake
def _(input, target, class_gamma, gamma, class_alpha, alpha, weight, ignore_index, reduction,
      label_smoothing):
    return input.new_empty(target.shape) if reduction == "none" else input.new_empty(())


def _scaled_stored_grad(ctx, grad_loss):
    """The gradient of the op's input: the stored gradient times ``grad_loss``."""
    (grad,) = ctx.saved_tensors
    if grad_loss is None:  # the loss was not used (gradients are not materialized as zeros)
        return None
    if grad.numel() == 0 and ctx.input_numel != 0:
        raise RuntimeError("triton_focal: no gradient was stored by the forward pass (grad mode was off)")
    return stored_grad_times(grad, grad_loss.unsqueeze(1) if ctx.reduction == "none" else grad_loss)


def _setup_context(ctx, inputs, output):
    _, grad = output
    ctx.mark_non_differentiable(grad)
    ctx.set_materialize_grads(False)  # no logits-sized zeros for the gradient output's gradient
    ctx.save_for_backward(grad)
    ctx.reduction = inputs[8]
    ctx.input_numel = inputs[0].numel()


def _backward(ctx, grad_loss, _grad_of_grad):
    return (_scaled_stored_grad(ctx, grad_loss),) + (None,) * 10


_softmax_focal_fwd_op.register_autograd(_backward, setup_context=_setup_context)


class _InplaceSoftmaxFocal(torch.autograd.Function):
    """The forward writes the gradient into the logits' storage (marked dirty, so autograd
    refuses a later use of values it saved from them)."""

    @staticmethod
    def forward(ctx, input, target, class_gamma, gamma, class_alpha, alpha, weight, ignore_index,
                reduction, label_smoothing):
        loss = _softmax_focal_fwd_inplace_op(input, target, class_gamma, gamma, class_alpha, alpha,
                                             weight, ignore_index, reduction, label_smoothing)
        ctx.mark_dirty(input)
        ctx.set_materialize_grads(False)  # no logits-sized zeros for the second output's gradient
        ctx.save_for_backward(input)
        ctx.reduction = reduction
        ctx.input_numel = input.numel()
        return loss, input

    @staticmethod
    def backward(ctx, grad_loss, _grad_of_input):
        return (_scaled_stored_grad(ctx, grad_loss),) + (None,) * 9


def _inplace_allowed(input):
    """In place needs a grad-requiring non-leaf whose elements do not overlap."""
    base = input if input._base is None else input._base
    if base.is_leaf or torch.compiler.is_compiling():
        return False
    return is_dense(input)


def softmax_focal_loss(input, target, *, gamma, alpha, weight, ignore_index, reduction, label_smoothing,
                       inplace_grad=False):
    """Softmax focal loss of ``(N, C, P)`` logits, the Triton backend (canonical arguments).

    Args:
        input: logits ``(N, C, P)``, any strides, float16/bfloat16/float32/float64.
        target: class indices ``(N, P)``, any integer dtype, in ``[0, C)`` or ``ignore_index``.
        gamma: float ``>= 0`` or float32 ``(C,)`` tensor.
        alpha: None, a float, or a float32 ``(C,)`` tensor.
        weight: None or a float32 ``(C,)`` tensor.
        ignore_index: int.
        reduction: ``"none"``, ``"sum"`` or ``"mean"``.
        label_smoothing: float in ``[0, 1]``.
        inplace_grad: write the gradient into ``input``'s storage (``input`` is clobbered;
            no extra memory). Only for a non-leaf, non-overlapping ``input`` in eager mode;
            elsewhere the gradient gets its own buffer.

    Returns:
        ``(N, P)`` for ``"none"``, else a 0-dim tensor, in ``input``'s dtype.
    """
    compute_grad = input.requires_grad and torch.is_grad_enabled()
    class_gamma = gamma if isinstance(gamma, torch.Tensor) else None
    class_alpha = alpha if isinstance(alpha, torch.Tensor) else None
    args = (
        target, class_gamma, 0.0 if class_gamma is not None else float(gamma),
        class_alpha, 1.0 if alpha is None or class_alpha is not None else float(alpha),
        weight, int(ignore_index), reduction, float(label_smoothing),
    )
    if inplace_grad and compute_grad and _inplace_allowed(input):
        loss, _ = _InplaceSoftmaxFocal.apply(input, *args)
        return loss
    loss, _ = _softmax_focal_fwd_op(input, *args, compute_grad)
    return loss
