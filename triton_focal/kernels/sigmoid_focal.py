"""Triton kernel of the one-vs-all sigmoid losses (focal, FL*, QFL, VFL, ASL): loss and gradient per tile.

The logits are seen as ``(N, C, P)`` with explicit strides; a *row* is one ``(n, p)``. A
program of the persistent grid walks tiles of ``BLOCK_R`` rows of one image and steps over the
classes ``BLOCK_C`` at a time (80 detection classes are five steps of 16, no padded lanes).
Whichever axis is contiguous is the one the loads coalesce along: ``(N, C)`` detection logits
(classes) or channels-first heatmaps (pixels), both read without a copy. Per-row work (the
class index of a row, its ignore flag) is done once per tile, not once per element.

Class-index targets never build a one-hot: element ``(n, c, p)`` is positive iff
``target[n, p] == c`` (``C`` is background, ``ignore_index`` an ignored row).

Who writes the gradient is the softmax kernel's policy (``grad_mode.py``): the forward stores
it for ``grad_output == 1`` when the device flag says so; the backward recomputes it from the
logits and targets, times ``grad_output``, unless it was stored and ``grad_output == 1``.
"""

import triton
import triton.language as tl

from .focal_math import binary_sigmoid_focal_term, join_float, sigmoid_focal_star_term, sigmoid_focal_term
from .grad_mode import GRAD_BACKWARD, GRAD_IF_POLICY, GRAD_NONE, gradient_plan
from .reduce import store_total
from .sigmoid_terms import (
    ASYMMETRIC,
    FOCAL,
    QUALITY,
    STAR,
    VARIFOCAL,
    asymmetric_term,
    poly_term,
    quality_focal_term,
    varifocal_term,
)
from .tiles import tile_rows


@triton.jit
def _class_steps(
    x_row,
    t_row,
    w_row,
    l_row,
    g_row,
    go_row,  # [BLOCK_R] pointers of the tile's rows
    stride_x_c,
    stride_t_c,
    stride_w_c,
    stride_l_c,
    stride_g_c,
    stride_go_c,
    C,
    row_mask,
    row_keep,
    row_fill,
    label_in_step,
    score,  # [BLOCK_R] the positive's target value per row (HAS_SCORE)
    alpha,
    gamma_hi,
    gamma_lo,
    gamma_ptr,
    gamma_neg,
    clip,
    log_eps,
    poly,
    grad_scale,
    loss_acc,
    offs_c,
    INDEX_TARGET: tl.constexpr,
    HAS_SCORE: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_ALPHA: tl.constexpr,
    HAS_CLASS_GAMMA: tl.constexpr,
    GAMMA_INT: tl.constexpr,
    TERM: tl.constexpr,  # an index of sigmoid_term.KINDS (kernels/sigmoid_terms.py)
    HAS_POLY: tl.constexpr,
    IOU_WEIGHTED: tl.constexpr,
    DETACH: tl.constexpr,
    HAS_CLIP: tl.constexpr,
    HAS_EPS: tl.constexpr,
    REDUCE: tl.constexpr,
    GRAD_OUT_IS_SCALAR: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,
    WITH_LOSS: tl.constexpr,
    WITH_GRAD: tl.constexpr,
    SCALED: tl.constexpr,
):  # what to compute
    """One tile's rows, stepping over the classes: the loss (into ``loss_acc``, or stored) and
    the gradient (times ``grad_scale``, and ``grad_output`` per element where ``SCALED``).

    The logits of the next class step are loaded before this step's arithmetic, so every load
    of a step is issued at once and its latency overlaps the previous step's math: left to
    itself, the compiler split a step's two 16-byte loads per thread around the math that
    consumes the first, two dependent memory rounds a step. The load past the last step is
    fully masked (no memory traffic)."""
    first = row_mask[:, None] & (offs_c < C)[None, :]
    x_next = tl.load(x_row[:, None] + (offs_c * stride_x_c)[None, :], mask=first)
    if not INDEX_TARGET:
        t_next = tl.load(t_row[:, None] + (offs_c * stride_t_c)[None, :], mask=first)
    for c0 in range(0, C, BLOCK_C):
        # 2. The logits (and dense targets) of one class step, in ACC; the next step's requested.
        c = c0 + offs_c
        mask = row_mask[:, None] & (c < C)[None, :]
        c_next = c + BLOCK_C
        mask_next = row_mask[:, None] & (c_next < C)[None, :]
        x = x_next.to(ACC)
        x_next = tl.load(x_row[:, None] + (c_next * stride_x_c)[None, :], mask=mask_next)
        if not INDEX_TARGET:
            t_step = t_next.to(ACC)
            t_next = tl.load(t_row[:, None] + (c_next * stride_t_c)[None, :], mask=mask_next)

        # 3. The loss and its derivative (targets compared with the class, or read).
        if HAS_CLASS_GAMMA:
            gamma = tl.load(gamma_ptr + c, mask=c < C, other=0.0)[None, :]
        else:
            gamma = join_float(gamma_hi, gamma_lo, ACC)
        # The element's target: read, or from the row's class index (and the positive's score).
        if INDEX_TARGET:
            positive = (c0 + offs_c)[None, :] == label_in_step[:, None]
            if HAS_SCORE:
                t = tl.where(positive, score[:, None], 0.0)
            else:
                t = positive.to(ACC)
        else:
            t = t_step
            positive = t > 0.0
        if TERM == FOCAL:
            if INDEX_TARGET:
                loss, dloss = binary_sigmoid_focal_term(x, positive, gamma, GAMMA_INT)
            else:
                loss, dloss = sigmoid_focal_term(x, t, gamma, GAMMA_INT)
        elif TERM == STAR:
            loss, dloss = sigmoid_focal_star_term(x, t, gamma)
        elif TERM == QUALITY:
            loss, dloss = quality_focal_term(x, t, gamma, GAMMA_INT)
        elif TERM == VARIFOCAL:
            loss, dloss = varifocal_term(x, t, positive, alpha, gamma, GAMMA_INT, IOU_WEIGHTED, DETACH)
        else:
            tl.static_assert(TERM == ASYMMETRIC)
            loss, dloss = asymmetric_term(x, t, gamma, gamma_neg, clip, log_eps, HAS_CLIP, HAS_EPS, DETACH)
        if HAS_ALPHA:
            if INDEX_TARGET:
                alpha_t = tl.where(positive, alpha, 1.0 - alpha)
            else:
                alpha_t = alpha * t + (1.0 - alpha) * (1.0 - t)
            loss = alpha_t * loss
            dloss = alpha_t * dloss
        if HAS_POLY:  # outside alpha_t, as Poly-1 adds it
            poly_loss, poly_dloss = poly_term(x, t, gamma, GAMMA_INT)
            loss += poly * poly_loss
            dloss += poly * poly_dloss
        if HAS_WEIGHT:
            w = tl.load(w_row[:, None] + (c * stride_w_c)[None, :], mask=mask, other=0.0).to(ACC)
            loss = w * loss
            dloss = w * dloss
        # Ignored rows and lanes past the edge: loss 0, gradient 0 (a NaN there is dropped
        # too); an out-of-range class index: NaN.
        keep = row_keep[:, None] & (c < C)[None, :]

        # 4. The loss: per element, or into this program's partial sum.
        if WITH_LOSS:
            loss = tl.where(keep, loss, row_fill[:, None])
            if REDUCE:
                loss_acc += loss
            else:
                tl.store(l_row[:, None] + (c * stride_l_c)[None, :], loss.to(l_row.dtype.element_ty), mask=mask)

        # 5. The gradient, times grad_output and the mean's divisor.
        if WITH_GRAD:
            scale = grad_scale
            if SCALED and not GRAD_OUT_IS_SCALAR:
                go = tl.load(go_row[:, None] + (c * stride_go_c)[None, :], mask=mask, other=0.0)
                scale = scale * go.to(ACC)
            grad = tl.where(keep, dloss * scale, row_fill[:, None])
            tl.store(g_row[:, None] + (c * stride_g_c)[None, :], grad.to(g_row.dtype.element_ty), mask=mask)

    return loss_acc


@triton.jit
def _sigmoid_focal_kernel(
    # pointers
    x_ptr,  # (N, C, P) logits
    target_ptr,  # (N, C, P) dense float targets, or (N, P) class indices if INDEX_TARGET
    weight_ptr,  # (N, C, P) weight view, stride 0 allowed (HAS_WEIGHT)
    gamma_ptr,  # (C,) per-class gamma in ACC (HAS_CLASS_GAMMA)
    denom_ptr,  # () divisor of the reduced loss, any float dtype (HAS_DENOM)
    loss_ptr,  # (N, C, P) per-element loss, or () in x's dtype: the total if REDUCE
    partial_ptr,  # (num_programs,) ACC: each program's partial sum (REDUCE)
    ticket_ptr,  # (1,) int32, 0 between launches (kernels/reduce.py)
    grad_ptr,  # (N, C, P) d loss / d x, in x's dtype
    grad_out_ptr,  # () or (N, C, P) by strides: d total / d loss (GRAD_BACKWARD)
    policy_ptr,  # (1,) int32 device flag: forwards store the gradient
    stored_ptr,  # (1,) int32: whether this call's forward stored the gradient
    score_ptr,  # (N, P) the positive's target value per row (HAS_SCORE: class indices with scores)
    # strides
    stride_x_n,
    stride_x_c,
    stride_x_p,
    stride_t_n,
    stride_t_c,
    stride_t_p,  # stride_t_c unused for class indices
    stride_w_n,
    stride_w_c,
    stride_w_p,
    stride_l_n,
    stride_l_c,
    stride_l_p,
    stride_g_n,
    stride_g_c,
    stride_g_p,
    stride_go_n,
    stride_go_c,
    stride_go_p,
    stride_s_n,
    stride_s_p,
    # sizes
    C,
    P,
    num_p_blocks,
    num_tiles,
    # scalars: float32 (hi, lo) halves, so float64 math gets them unrounded (ops/scalars.py)
    alpha_hi,
    alpha_lo,
    gamma_hi,
    gamma_lo,
    denom_hi,
    denom_lo,  # the divisor where it is a number (not HAS_DENOM); 1.0 for none
    gamma_neg_hi,
    gamma_neg_lo,
    clip_hi,
    clip_lo,
    log_eps_hi,
    log_eps_lo,
    poly_hi,
    poly_lo,  # the term's other numbers (sigmoid_term.SigmoidTerm), 0 where unused
    ignore_index,
    # constants
    BLOCK_R: tl.constexpr,  # rows (positions) per tile
    BLOCK_C: tl.constexpr,  # classes per step
    INDEX_TARGET: tl.constexpr,
    HAS_SCORE: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_ALPHA: tl.constexpr,
    HAS_CLASS_GAMMA: tl.constexpr,
    GAMMA_INT: tl.constexpr,  # gamma is this integer (powers as products), or -1
    TERM: tl.constexpr,  # which loss: an index of sigmoid_term.KINDS
    HAS_POLY: tl.constexpr,
    IOU_WEIGHTED: tl.constexpr,
    DETACH: tl.constexpr,
    HAS_CLIP: tl.constexpr,
    HAS_EPS: tl.constexpr,
    REDUCE: tl.constexpr,
    HAS_DENOM: tl.constexpr,
    GRAD_MODE: tl.constexpr,  # GRAD_NONE, GRAD_ALWAYS, GRAD_IF_POLICY or GRAD_BACKWARD
    GRAD_OUT_IS_SCALAR: tl.constexpr,
    SKIP_IF_STORED: tl.constexpr,  # see softmax_focal.py
    ACC: tl.constexpr,  # float32, or float64 for float64 logits
):
    pid = tl.program_id(0)
    alpha = join_float(alpha_hi, alpha_lo, ACC)
    gamma_neg = join_float(gamma_neg_hi, gamma_neg_lo, ACC)
    clip = join_float(clip_hi, clip_lo, ACC)
    log_eps = join_float(log_eps_hi, log_eps_lo, ACC)
    poly = join_float(poly_hi, poly_lo, ACC)
    # a constexpr: an ``and`` of constants is not folded (see softmax_focal.py)
    REDUCED: tl.constexpr = GRAD_MODE != GRAD_BACKWARD and REDUCE

    # 0. What this launch writes, decided on the device (no host sync).
    compute_loss = GRAD_MODE != GRAD_BACKWARD
    store_grad, grad_scale, tiles = gradient_plan(
        policy_ptr, stored_ptr, grad_out_ptr, num_tiles, GRAD_MODE, GRAD_OUT_IS_SCALAR, SKIP_IF_STORED, ACC
    )
    # The reduced loss's divisor: a tensor on the device (a count, a normalizer tensor) or a
    # number (the element count of a dense mean, a normalizer given as a number).
    if HAS_DENOM:
        inv_denom = 1.0 / tl.load(denom_ptr).to(ACC)
    else:
        inv_denom = 1.0 / join_float(denom_hi, denom_lo, ACC)
    grad_scale = grad_scale * inv_denom

    # 64-bit offsets: the class index (int32) meets these strides in every class step, and
    # C * stride_c passes 2**31 in a channels-first volume or a transposed view. Widened once
    # per program, not per element; a stride the JIT specialized to 1 stays a constant.
    stride_x_c = tl.cast(stride_x_c, tl.int64)
    stride_t_c = tl.cast(stride_t_c, tl.int64)
    stride_w_c = tl.cast(stride_w_c, tl.int64)
    stride_l_c = tl.cast(stride_l_c, tl.int64)
    stride_g_c = tl.cast(stride_g_c, tl.int64)
    stride_go_c = tl.cast(stride_go_c, tl.int64)
    rows = tl.arange(0, BLOCK_R)
    offs_c = tl.arange(0, BLOCK_C)
    loss_acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=ACC)
    for tile in range(pid, tiles, tl.num_programs(0)):
        # 1. Where this tile lies.
        n, p0 = tile_rows(tile, num_p_blocks, BLOCK_R)
        p = p0 + rows
        row_mask = p < P
        x_row = x_ptr + n * stride_x_n + p * stride_x_p
        if INDEX_TARGET:
            label = tl.load(target_ptr + n * stride_t_n + p * stride_t_p, mask=row_mask, other=ignore_index)
            label = label.to(tl.int64)
            labelled = label != ignore_index
            # C itself is background. An out-of-range index turns its row's loss and gradient
            # into NaN instead of training on a silently wrong target (checking on the GPU
            # would cost a host sync).
            out_of_range = labelled & ((label < 0) | (label > C))
            tl.device_assert(~out_of_range, "class index outside [0, C] and not ignore_index")
            row_keep = row_mask & labelled & ~out_of_range
            row_fill = tl.where(out_of_range, float("nan"), 0.0)
            label_in_step = label.to(tl.int32)
            if HAS_SCORE:
                score = tl.load(score_ptr + n * stride_s_n + p * stride_s_p, mask=row_mask, other=0.0).to(ACC)
            else:
                score = tl.zeros([BLOCK_R], dtype=ACC)  # unused
        else:
            row_keep = row_mask
            row_fill = tl.zeros([BLOCK_R], dtype=ACC)
            label_in_step = tl.zeros([BLOCK_R], dtype=tl.int32)  # unused
            score = tl.zeros([BLOCK_R], dtype=ACC)  # unused

        # 2-5. The class steps of this tile. A forward that may store the gradient picks, per
        # launch and on the device, the variant with or without the gradient's arithmetic.
        steps = (
            x_row,
            target_ptr + n * stride_t_n + p * stride_t_p,
            weight_ptr + n * stride_w_n + p * stride_w_p,
            loss_ptr + n * stride_l_n + p * stride_l_p,
            grad_ptr + n * stride_g_n + p * stride_g_p,
            grad_out_ptr + n * stride_go_n + p * stride_go_p,
            stride_x_c,
            stride_t_c,
            stride_w_c,
            stride_l_c,
            stride_g_c,
            stride_go_c,
            C,
            row_mask,
            row_keep,
            row_fill,
            label_in_step,
            score,
            alpha,
            gamma_hi,
            gamma_lo,
            gamma_ptr,
            gamma_neg,
            clip,
            log_eps,
            poly,
            grad_scale,
            loss_acc,
            offs_c,
        )
        if GRAD_MODE == GRAD_IF_POLICY:
            if store_grad:
                loss_acc = _class_steps(
                    *steps,
                    INDEX_TARGET,
                    HAS_SCORE,
                    HAS_WEIGHT,
                    HAS_ALPHA,
                    HAS_CLASS_GAMMA,
                    GAMMA_INT,
                    TERM,
                    HAS_POLY,
                    IOU_WEIGHTED,
                    DETACH,
                    HAS_CLIP,
                    HAS_EPS,
                    REDUCE,
                    GRAD_OUT_IS_SCALAR,
                    BLOCK_C,
                    ACC,
                    True,
                    True,
                    False,
                )
            else:
                loss_acc = _class_steps(
                    *steps,
                    INDEX_TARGET,
                    HAS_SCORE,
                    HAS_WEIGHT,
                    HAS_ALPHA,
                    HAS_CLASS_GAMMA,
                    GAMMA_INT,
                    TERM,
                    HAS_POLY,
                    IOU_WEIGHTED,
                    DETACH,
                    HAS_CLIP,
                    HAS_EPS,
                    REDUCE,
                    GRAD_OUT_IS_SCALAR,
                    BLOCK_C,
                    ACC,
                    True,
                    False,
                    False,
                )
        else:
            loss_acc = _class_steps(
                *steps,
                INDEX_TARGET,
                HAS_SCORE,
                HAS_WEIGHT,
                HAS_ALPHA,
                HAS_CLASS_GAMMA,
                GAMMA_INT,
                TERM,
                HAS_POLY,
                IOU_WEIGHTED,
                DETACH,
                HAS_CLIP,
                HAS_EPS,
                REDUCE,
                GRAD_OUT_IS_SCALAR,
                BLOCK_C,
                ACC,
                compute_loss,
                GRAD_MODE != GRAD_NONE,
                GRAD_MODE == GRAD_BACKWARD,
            )

    if REDUCED:
        # The programs' partial sums, added in a fixed order by the last one (bit-identical
        # reruns), over the divisor.
        store_total(partial_ptr, ticket_ptr, loss_ptr, tl.sum(tl.sum(loss_acc, axis=1), axis=0), inv_denom, ACC)
