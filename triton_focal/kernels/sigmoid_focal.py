"""Triton kernels of the one-vs-all sigmoid focal loss (and FL*).

The logits are seen as ``(N, C, P)`` with explicit strides. A program owns a tile of
``BLOCK_R`` rows (``r = n * P + p``) by ``BLOCK_C`` classes; the launcher makes the
contiguous axis the wide one, so ``(N, C)`` detection logits (``stride_c == 1``) and
channels-first heatmaps (``stride_p == 1``) are both read without a copy.

The forward computes the loss and, in the same pass, ``d loss / d x`` (the tile is in
registers anyway, so the logits are read once); the backward only rescales that gradient by
``grad_output`` (in place for a scalar ``grad_output``, and not at all when it is exactly 1).
"""

import triton
import triton.language as tl

from .focal_math import join_float, sigmoid_focal_star_term, sigmoid_focal_term


@triton.jit
def _tile_coords(num_rows, num_classes, P, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Row coordinates ``(n, p)``, class index ``c`` (all int64) and masks of this tile."""
    # int64 before any multiply: N * C * P may exceed 2**31 (Liger #803, flash-attn #714).
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    n = rows // P
    p = rows - n * P
    return n, p, cols, rows < num_rows, cols < num_classes


@triton.jit
def _sigmoid_focal_fwd_kernel(
    # pointers
    x_ptr,  # (N, C, P) logits
    target_ptr,  # (N, C, P) dense float targets, or (N, P) class indices if INDEX_TARGET
    weight_ptr,  # (N, C, P) weight view, stride 0 allowed (HAS_WEIGHT)
    gamma_ptr,  # (C,) contiguous per-class gamma (HAS_CLASS_GAMMA)
    denom_ptr,  # () divisor of the reduced loss (HAS_DENOM)
    loss_ptr,  # (N, C, P) per-element loss, or (programs,) partial sums if REDUCE
    dx_ptr,  # (N, C, P) d loss / d x, input dtype (COMPUTE_GRAD)
    # strides
    stride_x_n, stride_x_c, stride_x_p,
    stride_t_n, stride_t_c, stride_t_p,  # stride_t_c unused for class indices
    stride_w_n, stride_w_c, stride_w_p,
    stride_o_n, stride_o_c, stride_o_p,  # shared by the per-element loss and dx
    # sizes
    num_rows,  # N * P
    num_classes,  # C
    P,
    # scalars: float32 (hi, lo) halves, so float64 math gets them unrounded (ops/scalars.py)
    alpha_hi, alpha_lo,
    gamma_hi, gamma_lo,
    ignore_index,
    # constants
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    INDEX_TARGET: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_ALPHA: tl.constexpr,
    HAS_CLASS_GAMMA: tl.constexpr,
    STAR: tl.constexpr,
    REDUCE: tl.constexpr,
    HAS_DENOM: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    FP64: tl.constexpr,
):
    # 1. where this tile lies
    n, p, c, row_mask, col_mask = _tile_coords(num_rows, num_classes, P, BLOCK_R, BLOCK_C)
    mask = row_mask[:, None] & col_mask[None, :]

    # 2. logits, in float32 (float64 for float64 input)
    x = tl.load(x_ptr + (n * stride_x_n + p * stride_x_p)[:, None] + (c * stride_x_c)[None, :], mask=mask, other=0.0)
    if FP64:
        x = x.to(tl.float64)
    else:
        x = x.to(tl.float32)

    # 3. targets: read by stride, or compared to the class index (the one-hot is never built)
    if INDEX_TARGET:
        label = tl.load(target_ptr + n * stride_t_n + p * stride_t_p, mask=row_mask, other=ignore_index)
        label = label.to(tl.int64)
        labelled = label != ignore_index
        # C itself is background. Indices are not checked on the GPU (that would cost a host
        # sync): an out-of-range one turns its row's loss and gradient into NaN instead of
        # training on a silently wrong target.
        out_of_range = labelled & ((label < 0) | (label > num_classes))
        tl.device_assert(~out_of_range, "class index outside [0, C] and not ignore_index")
        keep = mask & labelled[:, None]
        t = (label[:, None] == c[None, :]).to(x.dtype)  # label == C: background, all zero
    else:
        t_off = (n * stride_t_n + p * stride_t_p)[:, None] + (c * stride_t_c)[None, :]
        t = tl.load(target_ptr + t_off, mask=mask, other=0.0).to(x.dtype)
        keep = mask

    # 4. the loss and its derivative
    if HAS_CLASS_GAMMA:
        gamma = tl.load(gamma_ptr + c, mask=col_mask, other=0.0).to(x.dtype)[None, :]
    else:
        gamma = join_float(gamma_hi, gamma_lo, x.dtype)
    if STAR:
        loss, dloss = sigmoid_focal_star_term(x, t, gamma)
    else:
        loss, dloss = sigmoid_focal_term(x, t, gamma)
    if HAS_ALPHA:
        alpha = join_float(alpha_hi, alpha_lo, x.dtype)
        alpha_t = alpha * t + (1.0 - alpha) * (1.0 - t)
        loss = alpha_t * loss
        dloss = alpha_t * dloss
    if HAS_WEIGHT:
        w_off = (n * stride_w_n + p * stride_w_p)[:, None] + (c * stride_w_c)[None, :]
        w = tl.load(weight_ptr + w_off, mask=mask, other=0.0).to(x.dtype)
        loss = w * loss
        dloss = w * dloss
    # Ignored rows and lanes past the edge: loss 0, gradient 0 (a NaN there is dropped too).
    loss = tl.where(keep, loss, 0.0)
    dloss = tl.where(keep, dloss, 0.0)
    if INDEX_TARGET:
        loss = tl.where(out_of_range[:, None], float("nan"), loss)
        dloss = tl.where(out_of_range[:, None], float("nan"), dloss)

    # 5. the loss: per element, or one partial sum per program (summed by torch in a
    # fixed order: no atomics, so reruns are bit-identical)
    o_off = (n * stride_o_n + p * stride_o_p)[:, None] + (c * stride_o_c)[None, :]
    if REDUCE:
        partial = tl.sum(tl.sum(loss, axis=1), axis=0)
        tl.store(loss_ptr + tl.program_id(0).to(tl.int64) * tl.num_programs(1) + tl.program_id(1), partial)
    else:
        tl.store(loss_ptr + o_off, loss.to(loss_ptr.dtype.element_ty), mask=mask)

    # 6. the gradient of the reduced loss with grad_output == 1; backward rescales it
    if COMPUTE_GRAD:
        if HAS_DENOM:
            dloss = dloss / tl.load(denom_ptr).to(x.dtype)
        tl.store(dx_ptr + o_off, dloss.to(dx_ptr.dtype.element_ty), mask=mask)
