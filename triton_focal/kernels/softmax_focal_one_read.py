"""Triton kernel of the softmax focal loss for rows of few classes: the logits read once.

Channels-first logits ``(N, C, P)`` whose positions are the contiguous axis (segmentation),
with ``C`` up to a few dozen. Each thread holds ``VEC`` consecutive positions and every class
of each in registers, as two power-of-two blocks of classes (``19 = 16 + 4``, the last 1 of
the 4 masked: 5% idle lanes, where one block of 32 would idle 40%). A tile's logits are
loaded in one round; the row statistics, the loss and the gradient all come from those
registers, so the logits cross the memory bus once, every class reduction stays inside a
thread (no shuffle, no shared memory), and nothing is re-read.

The per-row math is ``softmax_rows.py``'s, as in the class-step kernel (``softmax_focal.py``,
which has the derivation); label smoothing (a second sum over the classes) and a softcap (a
``tanh`` per logit) stay there. The arguments are the class-step kernel's, so that one
launcher fills both; ``grad`` may alias ``logits`` (every load of a tile precedes its
stores).
"""

import triton
import triton.language as tl

from .focal_math import FP32_MAX, LOG2E
from .grad_mode import GRAD_BACKWARD, gradient_plan
from .params import number, row_ptr
from .reduce import store_total
from .softmax_rows import (
    poly_term,
    reduction_scales,
    row_coefficients,
    row_grad_scale,
    row_loss,
    row_targets,
    target_factors,
    target_term,
)
from .tiles import tile_rows


@triton.jit
def _load_block(x_row, cls, stride_x_c, mask, ACC: tl.constexpr):
    """``[len(cls), BLOCK_P]`` logits in ``ACC``; masked lanes (``mask`` None: none) at ``-inf``
    (they add nothing)."""
    ptrs = x_row[None, :] + cls[:, None] * stride_x_c
    if mask is None:
        x = tl.load(ptrs)
    else:
        x = tl.load(ptrs, mask=mask, other=-float("inf"))
    return x.to(ACC)


@triton.jit
def _block_exp(x, cls, m, target):
    """``exp(x - m)`` of a block, kept for the gradient, and the block's shares of ``s_other``
    (the sum over the classes but the target) and of the target's logit."""
    e = tl.exp2((x - m[None, :]) * LOG2E)
    is_target = cls[:, None] == target[None, :]
    return e, tl.sum(tl.where(is_target, 0.0, e), axis=0), tl.sum(tl.where(is_target, x, 0.0), axis=0)


@triton.jit
def _store_block_grad(g_row, e, cls, mask, stride_g_c, coef_over_s, row_ok, fill):
    """``coef_p p_j = coef_p / s * exp(x_j - m)`` of a block (the target's entry is rewritten
    after), ``fill`` in rows that do not count (0, even where their logits are NaN)."""
    grad = tl.where(row_ok[None, :], e * coef_over_s[None, :], fill[None, :])
    tl.store(g_row[None, :] + cls[:, None] * stride_g_c, grad.to(g_row.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_focal_one_read_kernel(
    # the arguments of _softmax_focal_kernel (softmax_focal.py); stats_ptr unused (nothing is
    # re-read, so no statistics are saved), as are the smoothing and the softcap in numbers
    logits,
    target,
    loss,
    grad,
    grad_out,
    element_weight,
    gamma_ptr,
    alpha_ptr,
    weight_ptr,
    denom_ptr,
    partial_ptr,
    ticket_ptr,
    policy_ptr,
    stored_ptr,
    stats_ptr,
    C,
    P,
    num_p_blocks,
    num_tiles,
    num_rows,
    numbers,
    # constants
    BLOCK_A: tl.constexpr,  # the first block of classes: the largest power of two <= C
    BLOCK_B: tl.constexpr,  # the rest, rounded up to a power of two (0: C is a power of two)
    VEC: tl.constexpr,  # consecutive positions per thread
    EVEN_P: tl.constexpr,  # P is a multiple of BLOCK_P: no tile is partial
    BLOCK_P: tl.constexpr,  # positions per tile: VEC * 32 * num_warps
    HAS_CLASS_GAMMA: tl.constexpr,
    GAMMA_INT: tl.constexpr,
    HAS_CLASS_ALPHA: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_Z_LOSS: tl.constexpr,
    PER_ELEMENT: tl.constexpr,
    MEAN: tl.constexpr,
    DIVISOR: tl.constexpr,
    HAS_POLY: tl.constexpr,
    HAS_ELEMENT_WEIGHT: tl.constexpr,
    GRAD_MODE: tl.constexpr,
    GRAD_OUT_IS_SCALAR: tl.constexpr,
    SKIP_IF_STORED: tl.constexpr,
    ACC: tl.constexpr,
):
    REDUCED: tl.constexpr = GRAD_MODE != GRAD_BACKWARD and not PER_ELEMENT
    pid = tl.program_id(0)
    stride_x_c = tl.cast(logits.stride_c, tl.int64)  # C * stride_c may pass 2**31 in a volume
    stride_g_c = tl.cast(grad.stride_c, tl.int64)
    gamma = number(numbers.gamma, ACC)
    alpha = number(numbers.alpha, ACC)
    z_loss = number(numbers.z_loss, ACC)
    poly_epsilon = number(numbers.poly_epsilon, ACC)
    ignore_index = numbers.ignore_index
    compute_loss = GRAD_MODE != GRAD_BACKWARD
    store_grad, grad_scale, tiles = gradient_plan(
        policy_ptr, stored_ptr, grad_out.ptr, num_tiles, GRAD_MODE, GRAD_OUT_IS_SCALAR, SKIP_IF_STORED, ACC
    )
    divisor = numbers.divisor
    mean_scale, z_scale = reduction_scales(denom_ptr, divisor.hi, divisor.lo, MEAN, DIVISOR, HAS_Z_LOSS, ACC)

    # VEC consecutive positions per thread (the layout's vector width), all classes of each
    lane = tl.max_contiguous(tl.arange(0, BLOCK_P), VEC)
    cls_a = tl.arange(0, BLOCK_A)
    if BLOCK_B > 0:
        cls_b = BLOCK_A + tl.arange(0, BLOCK_B)
    loss_acc = tl.zeros([BLOCK_P], dtype=ACC)

    for tile in range(pid, tiles, tl.num_programs(0)):
        n, p0 = tile_rows(tile, num_p_blocks, BLOCK_P)
        p = p0 + lane
        if EVEN_P:
            p_mask = tl.full([BLOCK_P], True, tl.int1)
        else:
            p_mask = p < P

        # 1. One round of loads: the targets and every logit of the tile.
        target_row = tl.load(row_ptr(target, n, p), mask=p_mask, other=ignore_index)
        x_row = row_ptr(logits, n, p)
        # BLOCK_A <= C: no class of the first block is masked; with whole tiles, no position is
        if EVEN_P:
            mask_a = None
        else:
            mask_a = tl.broadcast_to(p_mask[None, :], [BLOCK_A, BLOCK_P])
        x_a = _load_block(x_row, cls_a, stride_x_c, mask_a, ACC)
        if BLOCK_B > 0:
            mask_b = (cls_b[:, None] < C) & p_mask[None, :]
            x_b = _load_block(x_row, cls_b, stride_x_c, mask_b, ACC)
        v = 1.0
        if HAS_ELEMENT_WEIGHT:
            v = tl.load(row_ptr(element_weight, n, p), mask=p_mask & (target_row != ignore_index), other=0.0)
            v = v.to(ACC)

        # 2. Row statistics from the registers. The max starts at the lowest finite float, so
        #    a masked row keeps s == 0 instead of forming exp(-inf + inf).
        row_ok, row_bad, safe_target = row_targets(target_row, p_mask, ignore_index, C)
        gamma_y, alpha_y, w_y = target_factors(
            gamma_ptr, alpha_ptr, weight_ptr, safe_target, gamma, alpha, HAS_CLASS_GAMMA, HAS_CLASS_ALPHA, HAS_WEIGHT
        )
        m = tl.maximum(tl.max(x_a, axis=0), -FP32_MAX)
        if BLOCK_B > 0:
            m = tl.maximum(m, tl.max(x_b, axis=0))
        target32 = safe_target.to(tl.int32)  # 32-bit compares against the class indices
        e_a, s_other, x_y = _block_exp(x_a, cls_a, m, target32)
        if BLOCK_B > 0:
            e_b, s_b, x_y_b = _block_exp(x_b, cls_b, m, target32)
            s_other += s_b
            x_y += x_y_b
        x_y = tl.where(row_ok, x_y, m)  # ignored rows: any finite value
        log_s, q_y, p_y, f_y, g_y = target_term(x_y, m, s_other, gamma_y, GAMMA_INT)
        poly_q = 0.0
        poly_g = 0.0
        if HAS_POLY:
            poly_q, poly_g = poly_term(q_y, p_y, gamma_y, GAMMA_INT)
        lse = m + log_s

        # 3. The loss of each row: stored, or summed into this program's partial sum.
        if compute_loss:
            row_losses = row_loss(
                f_y, w_y, alpha_y, 0.0, poly_q, lse, v, row_ok, row_bad, mean_scale, z_scale,
                0.0, poly_epsilon, z_loss, C, False, HAS_POLY, HAS_Z_LOSS, HAS_ELEMENT_WEIGHT,
            )  # fmt: skip
            if PER_ELEMENT:
                tl.store(row_ptr(loss, n, p), row_losses.to(loss.ptr.dtype.element_ty), mask=p_mask)
            else:
                loss_acc += row_losses

        # 4. The gradient, from the same registers.
        if store_grad:
            row_scale = row_grad_scale(grad_scale, grad_out, n, p, p_mask, GRAD_MODE, GRAD_OUT_IS_SCALAR, ACC)
            coef_y, coef_p, _ = row_coefficients(
                row_scale, g_y, w_y, alpha_y, 0.0, poly_g, lse, v, row_ok, mean_scale, z_scale,
                0.0, poly_epsilon, z_loss, C, False, HAS_POLY, HAS_Z_LOSS, HAS_ELEMENT_WEIGHT,
            )  # fmt: skip
            # Ignored rows get 0 even where their logits are NaN; an out-of-range target gets NaN.
            fill = tl.where(row_bad, float("nan"), 0.0)
            coef_over_s = coef_p * tl.exp2(-log_s * LOG2E)  # p_j = exp(x_j - m) / s
            g_row = row_ptr(grad, n, p)
            _store_block_grad(g_row, e_a, cls_a, mask_a, stride_g_c, coef_over_s, row_ok, fill)
            if BLOCK_B > 0:
                _store_block_grad(g_row, e_b, cls_b, mask_b, stride_g_c, coef_over_s, row_ok, fill)
            # The target's entry, coef_p p_y - coef_y, with p_y from the row's exact 1 - p_y:
            # rewritten by one store per row (not a select per logit). The barrier orders it after
            # the block's store of the same address, which another thread may have made.
            tl.debug_barrier()
            g_y_ptr = g_row + safe_target * stride_g_c
            tl.store(g_y_ptr, (coef_p * p_y - coef_y).to(grad.ptr.dtype.element_ty), mask=p_mask & row_ok)

    if REDUCED:
        # The programs' partial sums, added in a fixed order by the last one: bit-identical reruns.
        store_total(partial_ptr, ticket_ptr, loss.ptr, tl.sum(loss_acc, axis=0), 1.0, ACC)
