"""Triton kernel of the softmax focal loss: loss and gradient from one program per tile.

Layout. The logits are seen as ``(N, C, P)`` with explicit strides; a *row* is one ``(n, p)``
and its ``C`` classes. A program walks tiles of ``ROWS`` rows (a persistent grid, see the
launcher) and holds ``[BLOCK_C, BLOCK_P]`` logits at a time, with ``BLOCK_P = ROWS * SPLIT``:

* channels-first logits (``stride_p == 1``): ``SPLIT = 1``, one column per pixel. The columns
  are the contiguous axis, so each thread owns whole pixels (``BLOCK_C`` classes of each) and
  every class reduction stays inside a thread: no shuffle, no barrier, and the per-row epilogue
  runs once per pixel;
* contiguous classes (``(T, V)`` rows, channels_last): ``SPLIT`` lanes share a row, each lane
  owning ``BLOCK_C`` consecutive classes of every ``BLOCK_C * SPLIT``-class step. Lanes keep
  their own running statistics, combined across the row once per pass.

Passes over a row's classes: (1) online-softmax statistics, (2) with label smoothing only, the
per-row sums of the focal terms, (3) the gradient. Where the launcher can keep the rows in flight
few enough for the L2 to surely serve passes 2 and 3 with every SM busy (bf16 vocabularies
up to about 32k, tens of classes), they re-read the logits from L2; elsewhere (a 128k vocabulary,
hundreds of classes) mostly from DRAM, and the forward saves pass 1's per-row results
(``ROW_STATS``) so that a backward that recomputes the gradient reads the logits once. Each
re-reading pass walks the classes opposite to the pass before it: it starts on what that pass
read last, which is still in L2 where the whole row is not (``_step_start``).

The math (the focal term ``f_c``, its coefficient ``g_c`` and the gradient with alpha, weight,
label smoothing and z-loss) is derived once in ``triton_focal/_row_math.py``; here ``a_y`` and
``w`` are the alpha and weight vectors, ``eps`` the smoothing and ``S_g = sum_c w_c g_c``.
``p_y - 1`` is written as ``-q_y`` with ``q_y = s_other / s`` from the other classes' mass, so
the target's gradient keeps its precision when ``p_y`` is close to 1. With a
softcap ``c`` the logits are ``z = c tanh(x / c)`` and ``dloss/dx_j = dloss/dz_j (1 - (z_j/c)**2)``.
Poly-1 (``HAS_POLY``, ``_compiled_math.py`` derives it) adds ``e_p w_y (gamma_y + 1) q_y ** gamma_y
p_y`` to the coefficient of ``p_j - [j == y]``; a per-element weight (``HAS_ELEMENT_WEIGHT``, one
load per row) scales a row's loss and coefficients like the mean's divisor does.

Fast math: in float32, ``exp2``/``log2`` are the MUFU ``ex2.approx``/``lg2.approx`` (a few ulp,
see ``focal_math.py``); the per-row terms that a cancellation would amplify (``log p_y`` near
``p_y = 1``) use exact ``log``/``log1p``; float64 logits get exact functions throughout.
"""

import triton
import triton.language as tl

from .focal_math import (
    FP32_MAX,
    LOG2E,
    focal_term,
    log1p,
    softcap_logits,
)
from .grad_mode import GRAD_BACKWARD, ROW_STATS_READ, ROW_STATS_WRITE, gradient_plan
from .params import number, row_ptr
from .reduce import store_total
from .softmax_rows import (
    log_sum,
    poly_term,
    reduction_scales,
    row_coefficients,
    row_grad_scale,
    row_loss,
    row_targets,
    target_factors,
    target_focal,
)
from .tiles import tile_rows


@triton.jit
def _load_logits(ptrs, mask, softcap, HAS_SOFTCAP: tl.constexpr, ACC: tl.constexpr):
    """A block of logits in ``ACC``, masked lanes at ``-inf`` (they add nothing to any sum)."""
    x = tl.load(ptrs, mask=mask, other=-float("inf")).to(ACC)
    if HAS_SOFTCAP:
        x = tl.where(mask, softcap_logits(x, softcap), -float("inf"))
    return x


@triton.jit
def _combine_lanes(m, s, ROWS: tl.constexpr, SPLIT: tl.constexpr):
    """Running ``(max, sum of exp(x - max))`` of the ``SPLIT`` lanes of each row, combined and
    broadcast back to every lane (once per pass, not per element)."""
    if SPLIT == 1:
        return m, s
    if ROWS == 1:  # one row per tile (vocabularies): scalars, broadcast without a shuffle
        row_max = tl.max(m, axis=0)
        row_s = tl.sum(s * tl.exp2((m - row_max) * LOG2E), axis=0)
        return tl.zeros_like(m) + row_max, tl.zeros_like(s) + row_s
    m2 = tl.reshape(m, (ROWS, SPLIT))
    row_max = tl.max(m2, axis=1)
    row_s = tl.sum(tl.reshape(s, (ROWS, SPLIT)) * tl.exp2((m2 - row_max[:, None]) * LOG2E), axis=1)
    return _lanes(row_max, ROWS, SPLIT), _lanes(row_s, ROWS, SPLIT)


@triton.jit
def _row_total(v, ROWS: tl.constexpr, SPLIT: tl.constexpr, MAX: tl.constexpr):
    """Per-row sum (``MAX``: max) of a per-lane value, broadcast back to every lane of the row."""
    if SPLIT == 1:
        return v
    if ROWS == 1:  # scalars, broadcast without a shuffle
        if MAX:
            return tl.zeros_like(v) + tl.max(v, axis=0)
        return tl.zeros_like(v) + tl.sum(v, axis=0)
    if MAX:
        return _lanes(tl.max(tl.reshape(v, (ROWS, SPLIT)), axis=1), ROWS, SPLIT)
    return _lanes(tl.sum(tl.reshape(v, (ROWS, SPLIT)), axis=1), ROWS, SPLIT)


@triton.jit
def _lanes(row_value, ROWS: tl.constexpr, SPLIT: tl.constexpr):
    return tl.reshape(tl.broadcast_to(row_value[:, None], (ROWS, SPLIT)), (ROWS * SPLIT,))


@triton.jit
def _step_start(c0, last_step, REVERSED: tl.constexpr):
    """The first class of the class step that a pass's loop at ``c0`` reads: ``c0``, or counted
    from the last step (``last_step``, its first class) where the pass runs ``REVERSED``.

    A pass that re-reads a row runs opposite to the pass before it, so the classes it reads
    first are the ones that pass read last: still in L2 where the whole row is not (a
    128k-vocabulary row, hundreds of classes), and the rest no worse than in the same order."""
    if REVERSED:
        return last_step - c0
    return c0


@triton.jit
def _class_params(gamma_ptr, weight_ptr, cls, mask, gamma, HAS_CLASS_GAMMA: tl.constexpr, HAS_WEIGHT: tl.constexpr):
    """``gamma_c`` and ``w_c`` of a block (scalars when shared by every class)."""
    if HAS_CLASS_GAMMA:
        gamma_c = tl.load(gamma_ptr + cls, mask=mask, other=0.0)
    else:
        gamma_c = gamma
    if HAS_WEIGHT:
        w_c = tl.load(weight_ptr + cls, mask=mask, other=0.0)
    else:
        w_c = 1.0
    return gamma_c, w_c


@triton.jit
def _log_probs(x, m, log_s):
    """``log p`` of a block: ``(x - m) - log s``, not ``x - lse``: at logits of 1e4 the float32
    ``lse`` has an absolute error of 1e-3, ``x - m`` none."""
    return (x - m[None, :]) - log_s[None, :]


@triton.jit
def _class_terms(x, log_p, p, big, gamma_c, GAMMA_INT: tl.constexpr):
    """``(f, g)`` of every class of a block but the row's dominant one (``big``, 0 there), for
    the label smoothing terms.

    ``q = 1 - p`` is exact to an ulp where ``p <= 1/2``, that is everywhere but ``big``, which
    gets its ``f`` and ``g`` from the row's exact ``1 - p`` instead (``_dominant_class``). A
    class at ``-inf`` has ``p = 0`` and ``f = g = 0`` (its ``q ** gamma * log p`` would be
    ``1 * -inf``: a masked class is no class at all).
    """
    f, g = focal_term(log_p, p, 1.0 - p, gamma_c, GAMMA_INT)
    keep = ~big & (x > -float("inf"))
    return tl.where(keep, f, 0.0), tl.where(keep, g, 0.0)


@triton.jit
def _dominant_class(
    has_big,
    big_cls,
    p_small,
    gamma_ptr,
    weight_ptr,
    gamma,
    HAS_CLASS_GAMMA: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    GAMMA_INT: tl.constexpr,
):
    """``(w f, w g, g)`` of each row's class with ``p > 1/2`` where ``has_big`` (its index
    ``big_cls`` is needed, and tracked, only for per-class gamma or weights), from
    ``1 - p = p_small``, the sum of the other classes' ``p``: no cancellation."""
    safe_cls = tl.where(has_big & (big_cls >= 0), big_cls, 0)
    gamma_b, w_b = _class_params(gamma_ptr, weight_ptr, safe_cls, has_big, gamma, HAS_CLASS_GAMMA, HAS_WEIGHT)
    f_b, g_b = focal_term(log1p(-p_small), 1.0 - p_small, p_small, gamma_b, GAMMA_INT)
    g_b = tl.where(has_big, g_b, 0.0)
    return tl.where(has_big, w_b * f_b, 0.0), w_b * g_b, g_b


@triton.jit
def _softmax_focal_kernel(
    logits,  # NCP, any float dtype
    target,  # NP: class indices, any int dtype
    loss,  # NP in the logits' dtype if PER_ELEMENT, else the 0-dim total (strides 0)
    grad,  # NCP in the logits' dtype
    grad_out,  # NP, or the 0-dim (GRAD_OUT_IS_SCALAR): d total / d loss (GRAD_BACKWARD)
    element_weight,  # NP, stride 0 where broadcast, any float dtype (HAS_ELEMENT_WEIGHT)
    gamma_ptr,  # (C,) per-class gamma in ACC (HAS_CLASS_GAMMA)
    alpha_ptr,  # (C,) per-class alpha in ACC (HAS_CLASS_ALPHA)
    weight_ptr,  # (C,) class weights in ACC (HAS_WEIGHT)
    denom_ptr,  # (2,) ACC: the mean's divisors of the focal and the z-loss parts (MEAN)
    partial_ptr,  # (num_programs,) ACC: each program's partial sum (not PER_ELEMENT)
    ticket_ptr,  # (1,) int32, 0 between launches (kernels/reduce.py)
    policy_ptr,  # (1,) int32 device flag: forwards store the gradient (GRAD_IF_POLICY, GRAD_BACKWARD)
    stored_ptr,  # (1,) int32: whether this call's forward stored the gradient
    stats_ptr,  # (3, N * P) ACC per-row (m, s_other, x_y): written (ROW_STATS_WRITE) or read
    C,
    P,
    num_p_blocks,
    num_tiles,
    num_rows,
    numbers,  # SoftmaxNumbers
    # constants
    BLOCK_C: tl.constexpr,  # classes per lane per step
    BLOCK_P: tl.constexpr,  # lanes of a tile: ROWS rows x SPLIT lanes each
    SPLIT: tl.constexpr,  # lanes sharing one row
    HAS_CLASS_GAMMA: tl.constexpr,
    GAMMA_INT: tl.constexpr,  # gamma is this integer (powers as products), or -1
    HAS_CLASS_ALPHA: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr,
    HAS_Z_LOSS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    PER_ELEMENT: tl.constexpr,  # reduction="none"
    MEAN: tl.constexpr,  # reduction="mean"
    DIVISOR: tl.constexpr,  # reduction="sum" divided by a normalizer: 0 none, DIVIDE_BY_TENSOR or _NUMBER
    HAS_POLY: tl.constexpr,
    HAS_ELEMENT_WEIGHT: tl.constexpr,
    GRAD_MODE: tl.constexpr,  # GRAD_NONE, GRAD_ALWAYS, GRAD_IF_POLICY or GRAD_BACKWARD
    GRAD_OUT_IS_SCALAR: tl.constexpr,  # GRAD_BACKWARD: grad_output is 0-dim
    ROW_STATS: tl.constexpr,  # 0, ROW_STATS_WRITE (forward) or ROW_STATS_READ (backward: no pass 1)
    SKIP_IF_STORED: tl.constexpr,  # GRAD_BACKWARD into the forward's buffer: nothing to do if
    # the forward stored the gradient and grad_output is exactly 1
    ACC: tl.constexpr,  # float32, or float64 for float64 logits
):
    ROWS: tl.constexpr = BLOCK_P // SPLIT
    # (a constexpr, not ``compute_loss and not PER_ELEMENT``: an ``and`` of constants is not
    # folded, and the branch would be compiled where its pointers are placeholders)
    REDUCED: tl.constexpr = GRAD_MODE != GRAD_BACKWARD and not PER_ELEMENT
    CLASS_STEP: tl.constexpr = BLOCK_C * SPLIT
    pid = tl.program_id(0)
    # 64-bit offsets: a class index (int32) meets these strides in the class loops, and
    # C * stride_c passes 2**31 in a channels-first volume or a transposed (T, V) view. Widening
    # the stride once per program makes each product 64-bit; a stride the JIT specialized to 1
    # stays a constant, and its product folds away.
    stride_x_c = tl.cast(logits.stride_c, tl.int64)
    stride_g_c = tl.cast(grad.stride_c, tl.int64)
    num_rows = tl.cast(num_rows, tl.int64)  # 2 * num_rows indexes the statistics
    gamma = number(numbers.gamma, ACC)
    alpha = number(numbers.alpha, ACC)
    label_smoothing = number(numbers.label_smoothing, ACC)
    z_loss = number(numbers.z_loss, ACC)
    softcap = number(numbers.softcap, ACC)
    poly_epsilon = number(numbers.poly_epsilon, ACC)
    ignore_index = numbers.ignore_index

    # 0. What this launch writes, decided on the device (no host sync).
    compute_loss = GRAD_MODE != GRAD_BACKWARD
    store_grad, grad_scale, tiles = gradient_plan(
        policy_ptr, stored_ptr, grad_out.ptr, num_tiles, GRAD_MODE, GRAD_OUT_IS_SCALAR, SKIP_IF_STORED, ACC
    )
    divisor = numbers.divisor
    mean_scale, z_scale = reduction_scales(denom_ptr, divisor.hi, divisor.lo, MEAN, DIVISOR, HAS_Z_LOSS, ACC)

    # the first class of the last class step; a multiple of CLASS_STEP, said so that the
    # backwards steps' loads stay 16-byte vectors (a power of 2: no 32-bit product)
    last_step = tl.multiple_of((C - 1) & -CLASS_STEP, CLASS_STEP)
    # the gradient pass runs opposite to the pass before it: backwards after pass 1, forwards
    # after pass 2 (smoothing, which ran backwards); forwards where it reads the saved
    # statistics (no pass before it)
    GRAD_BACKWARDS: tl.constexpr = not HAS_SMOOTHING and ROW_STATS != ROW_STATS_READ
    lane = tl.arange(0, BLOCK_P)
    row_in_tile = lane // SPLIT
    lane_class = (lane % SPLIT) * BLOCK_C  # first class of each lane within a class step
    offs_k = tl.arange(0, BLOCK_C)
    first_lane = (lane % SPLIT) == 0  # the lane that stores a row's values
    loss_acc = tl.zeros([BLOCK_P], dtype=ACC)

    for tile in range(pid, tiles, tl.num_programs(0)):
        n, p0 = tile_rows(tile, num_p_blocks, ROWS)
        p = p0 + row_in_tile
        p_mask = p < P
        x_row = row_ptr(logits, n, p)  # [BLOCK_P]
        x_lane = x_row + lane_class * stride_x_c

        # 1. The target of each row and its per-class factors.
        target_row = tl.load(row_ptr(target, n, p), mask=p_mask, other=ignore_index)
        row_ok, row_bad, safe_target = row_targets(target_row, p_mask, ignore_index, C)
        target_in_lane = (safe_target - lane_class).to(tl.int32)  # the target's class within a step
        gamma_y, alpha_y, w_y = target_factors(
            gamma_ptr, alpha_ptr, weight_ptr, safe_target, gamma, alpha, HAS_CLASS_GAMMA, HAS_CLASS_ALPHA, HAS_WEIGHT
        )
        v = 1.0
        if HAS_ELEMENT_WEIGHT:  # one load per row, of non-ignored rows only
            v = tl.load(row_ptr(element_weight, n, p), mask=row_ok, other=0.0).to(ACC)

        # 2. Softmax statistics, per lane: running max m and s_other, the sum of exp(x - m)
        #    over every class but the target (so that 1 - p_y has no cancellation). With label
        #    smoothing the sum takes every class: pass 3 gives 1 - p_y exactly instead.
        #    A backward after a forward that saved them reads them instead (three numbers a
        #    row, where the re-read of the logits would come from DRAM).
        row = n * P + p
        if ROW_STATS == ROW_STATS_READ:
            m = tl.load(stats_ptr + row, mask=p_mask, other=-FP32_MAX).to(ACC)
            s_other = tl.load(stats_ptr + num_rows + row, mask=p_mask, other=0.0).to(ACC)
            x_y = tl.load(stats_ptr + 2 * num_rows + row, mask=p_mask, other=0.0).to(ACC)
        else:
            # The running max starts at the lowest finite float32, not at -inf, so a row whose
            # lanes are all masked keeps s == 0 instead of forming exp(-inf + inf).
            m = tl.full([BLOCK_P], -FP32_MAX, dtype=ACC)
            s_other = tl.zeros([BLOCK_P], dtype=ACC)
            for c0 in range(0, C, CLASS_STEP):
                cls = c0 + offs_k[:, None]  # [BLOCK_C, 1] + the lane's first class below
                mask = (cls + lane_class[None, :] < C) & p_mask[None, :]
                x = _load_logits(x_lane[None, :] + cls * stride_x_c, mask, softcap, HAS_SOFTCAP, ACC)
                m_new = tl.maximum(m, tl.max(x, axis=0))
                e = tl.exp2((x - m_new[None, :]) * LOG2E)
                if not HAS_SMOOTHING:
                    e = tl.where(offs_k[:, None] == (target_in_lane - c0)[None, :], 0.0, e)
                s_other = s_other * tl.exp2((m - m_new) * LOG2E) + tl.sum(e, axis=0)
                m = m_new
            # The target's own term, from one gather of its logit.
            x_y = _load_logits(x_row + safe_target * stride_x_c, row_ok, softcap, HAS_SOFTCAP, ACC)
            m, s_other = _combine_lanes(m, s_other, ROWS, SPLIT)
            if ROW_STATS == ROW_STATS_WRITE:
                keep = p_mask & first_lane
                tl.store(stats_ptr + row, m, mask=keep)
                tl.store(stats_ptr + num_rows + row, s_other, mask=keep)
                tl.store(stats_ptr + 2 * num_rows + row, x_y, mask=keep)
        x_y = tl.where(row_ok, x_y, m)  # ignored rows: any finite value
        e_y = tl.exp2((x_y - m) * LOG2E)
        if HAS_SMOOTHING:
            s = s_other
        else:
            s = s_other + e_y
        log_s = log_sum(s)  # the log-sum-exp is m + log_s, kept apart for precision

        # 3. Label smoothing needs sum_c w_c f_c (loss) and S_g = sum_c w_c g_c (gradient).
        #    One class per row can have p > 1/2, and then it is the row's max (its exp(x - m)
        #    is exactly 1, so p = 1 / s > 1/2 iff s < 2, and a tie would make s >= 2). Every
        #    other class has 1 - p = q exact to an ulp; the dominant one gets q from the sum
        #    of the others' p (p_small), without cancellation.
        sum_w_f = tl.zeros([BLOCK_P], dtype=ACC)
        sum_w_g = tl.zeros([BLOCK_P], dtype=ACC)
        if HAS_SMOOTHING:
            has_big = s < 2.0
            p_small = tl.zeros([BLOCK_P], dtype=ACC)
            big_cls = tl.full([BLOCK_P], -1, tl.int32)  # index of the dominant class, if any
            for step in range(0, C, CLASS_STEP):
                c0 = _step_start(step, last_step, True)  # backwards: pass 1 ended at the row's end
                cls = c0 + offs_k[:, None] + lane_class[None, :]
                mask = (cls < C) & p_mask[None, :]
                x = _load_logits(x_row[None, :] + cls * stride_x_c, mask, softcap, HAS_SOFTCAP, ACC)
                gamma_c, w_c = _class_params(gamma_ptr, weight_ptr, cls, mask, gamma, HAS_CLASS_GAMMA, HAS_WEIGHT)
                log_p = _log_probs(x, m, log_s)
                p_j = tl.exp2(log_p * LOG2E)
                big = (x == m[None, :]) & has_big[None, :]
                f, g = _class_terms(x, log_p, p_j, big, gamma_c, GAMMA_INT)
                sum_w_f += tl.sum(w_c * f, axis=0)
                sum_w_g += tl.sum(w_c * g, axis=0)
                p_small += tl.sum(tl.where(big, 0.0, p_j), axis=0)
                if HAS_WEIGHT or HAS_CLASS_GAMMA:
                    big_cls = tl.maximum(big_cls, tl.max(tl.where(big, cls.to(tl.int32), -1), axis=0))
            sum_w_f = _row_total(sum_w_f, ROWS, SPLIT, False)
            sum_w_g = _row_total(sum_w_g, ROWS, SPLIT, False)
            p_small = _row_total(p_small, ROWS, SPLIT, False)
            big_cls = _row_total(big_cls, ROWS, SPLIT, True)
            w_f_big, w_g_big, g_big = _dominant_class(
                has_big & row_ok, big_cls, p_small, gamma_ptr, weight_ptr, gamma, HAS_CLASS_GAMMA, HAS_WEIGHT, GAMMA_INT
            )
            sum_w_f += w_f_big
            sum_w_g += w_g_big
            # The target's 1 - p_y: the others' p if it dominates, else exact to an ulp.
            q_y = tl.where(has_big & (x_y == m), p_small, 1.0 - tl.fdiv(e_y, s))
        else:
            q_y = tl.fdiv(s_other, s)  # 1 - p_y without cancellation
        p_y, f_y, g_y = target_focal(x_y - m, log_s, q_y, gamma_y, GAMMA_INT)
        poly_q = 0.0
        poly_g = 0.0
        if HAS_POLY:
            poly_q, poly_g = poly_term(q_y, p_y, gamma_y, GAMMA_INT)

        # 4. The loss of each row: stored, or summed into this program's partial sum.
        lse = m + log_s
        if compute_loss:
            row_losses = row_loss(
                f_y,
                w_y,
                alpha_y,
                sum_w_f,
                poly_q,
                lse,
                v,
                row_ok,
                row_bad,
                mean_scale,
                z_scale,
                label_smoothing,
                poly_epsilon,
                z_loss,
                C,
                HAS_SMOOTHING,
                HAS_POLY,
                HAS_Z_LOSS,
                HAS_ELEMENT_WEIGHT,
            )
            if PER_ELEMENT:
                tl.store(row_ptr(loss, n, p), row_losses.to(loss.ptr.dtype.element_ty), mask=p_mask & first_lane)
            else:
                loss_acc += tl.where(first_lane, row_losses, 0.0)

        # 5. The gradient: a second (third with smoothing) read, from L2.
        if store_grad:
            row_scale = row_grad_scale(grad_scale, grad_out, n, p, p_mask, GRAD_MODE, GRAD_OUT_IS_SCALAR, ACC)
            coef_y, coef_p, coef_smooth = row_coefficients(
                row_scale,
                g_y,
                w_y,
                alpha_y,
                sum_w_g,
                poly_g,
                lse,
                v,
                row_ok,
                mean_scale,
                z_scale,
                label_smoothing,
                poly_epsilon,
                z_loss,
                C,
                HAS_SMOOTHING,
                HAS_POLY,
                HAS_Z_LOSS,
                HAS_ELEMENT_WEIGHT,
            )
            # Ignored rows get 0 even where their logits are NaN; an out-of-range target
            # gets NaN rather than a silently wrong gradient.
            fill = tl.where(row_bad, float("nan"), 0.0)
            g_row = row_ptr(grad, n, p) + lane_class * stride_g_c
            for step in range(0, C, CLASS_STEP):
                c0 = _step_start(step, last_step, GRAD_BACKWARDS)
                cls = c0 + offs_k[:, None]
                mask = (cls + lane_class[None, :] < C) & p_mask[None, :]
                x = _load_logits(x_lane[None, :] + cls * stride_x_c, mask, softcap, HAS_SOFTCAP, ACC)
                is_target = offs_k[:, None] == (target_in_lane - c0)[None, :]
                log_p = _log_probs(x, m, log_s)
                p_j = tl.exp2(log_p * LOG2E)
                # p_j - [j == y], with p_y - 1 = -q_y from the other classes' mass.
                dx = coef_p[None, :] * p_j - tl.where(is_target, coef_y[None, :], 0.0)
                if HAS_SMOOTHING:
                    cls_j = cls + lane_class[None, :]
                    gamma_c, w_c = _class_params(gamma_ptr, weight_ptr, cls_j, mask, gamma, HAS_CLASS_GAMMA, HAS_WEIGHT)
                    big = (x == m[None, :]) & has_big[None, :]
                    _, g = _class_terms(x, log_p, p_j, big, gamma_c, GAMMA_INT)
                    g = tl.where(big, g_big[None, :], g)
                    dx -= coef_smooth[None, :] * (w_c * g)
                if HAS_SOFTCAP:
                    tanh = x / softcap
                    dx = dx * (1.0 - tanh * tanh)
                dx = tl.where(row_ok[None, :], dx, fill[None, :])
                tl.store(g_row[None, :] + cls * stride_g_c, dx.to(grad.ptr.dtype.element_ty), mask=mask)

    if REDUCED:
        # The programs' partial sums, added in a fixed order by the last one: bit-identical reruns.
        store_total(partial_ptr, ticket_ptr, loss.ptr, tl.sum(loss_acc, axis=0), 1.0, ACC)
