"""Triton kernel of the Distribution Focal Loss (GFL, YOLOv8's DFL): loss, expectation and
gradient of short rows of bin logits, in one read of each row.

A *row* is one box side's ``n`` bin logits (``n`` = 16 or 17 in practice), so a whole row fits
in registers: a program takes tiles of ``BLOCK_R`` rows by ``BLOCK_N = next_pow2(n)`` bins (the
padded bins masked to ``-inf``), computes each row's softmax statistics once
(``focal_math.row_softmax``: ``m``, ``e = exp(x - m)``, ``s``) and from them, per row::

    w_j  = max(0, 1 - |j - y|)                   (the two-hot: w_l at left, w_r at right)
    loss = sum_j w_j (m - x_j) + log s            (= w_l (-log p_left) + w_r (-log p_right))
    E    = sum_j j p_j                            (the decoded side)
    d loss / d x_j = p_j - w_j,   d E / d x_j = p_j (j - E)

Three row reductions (max, sum, the weighted ``m - x``), one more with the expectation: rows
of 16 bins span two threads, and each reduction costs a shuffle.

Who writes the gradient is the package's policy (``grad_mode.py``, ``ops/grad_policy.py``): the
forward stores it for ``grad_output == 1`` when the device flag says so; the backward recomputes
it, times ``grad_output`` (and plus the expectation's part, where the expectation has a
gradient), unless it was stored and ``grad_output == 1``.
"""

import triton
import triton.language as tl

from .focal_math import LN2, fast_log2, join_float, row_softmax
from .grad_mode import GRAD_BACKWARD, GRAD_IF_POLICY, GRAD_NONE, gradient_plan
from .reduce import store_total


@triton.jit
def _dfl_tile(
    x_ptr,
    target_ptr,
    mask_ptr,
    weight_ptr,
    loss_ptr,
    expect_ptr,
    grad_ptr,
    grad_out_ptr,
    grad_exp_ptr,
    stride_x_r,
    stride_x_n,
    stride_t,
    stride_m,
    stride_w,
    stride_l,
    stride_e,
    stride_g_r,
    stride_g_n,
    stride_go,
    stride_ge,
    r,  # [BLOCK_R] int64 row indices of this tile
    R,
    w_group,
    grad_scale,
    loss_acc,
    N: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    W_GROUP: tl.constexpr,
    REDUCE: tl.constexpr,
    WITH_EXPECT: tl.constexpr,
    GRAD_OUT_IS_SCALAR: tl.constexpr,
    HAS_GRAD_EXPECT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    ACC: tl.constexpr,
    WITH_LOSS: tl.constexpr,
    WITH_GRAD: tl.constexpr,
    SCALED: tl.constexpr,
):
    """One tile's rows: the loss (into ``loss_acc``, or stored), the expectation and the
    gradient (times ``grad_scale``, and ``grad_output`` per row where ``SCALED``)."""
    # 1. Which rows count: a masked row is read no further (its logits and target may be padding).
    in_rows = r < R
    keep = in_rows
    if HAS_MASK:
        keep = keep & (tl.load(mask_ptr + r * stride_m, mask=in_rows, other=0) != 0)

    # 2. The row's logits, read once; padded bins at -inf (no mass), skipped rows at 0 (finite).
    # N is a constant: at N == BLOCK_N (16 bins) the bin masks fold away.
    j = tl.arange(0, BLOCK_N)
    bin_ok = j < N
    x = tl.load(
        x_ptr + r[:, None] * stride_x_r + (j * stride_x_n)[None, :],
        mask=keep[:, None] & bin_ok[None, :],
        other=0.0,
    ).to(ACC)
    x = tl.where(bin_ok[None, :], x, float("-inf"))
    m, e, s = row_softmax(x)
    inv_s = 1.0 / s
    bins = j.to(ACC)[None, :]

    # 3. The two-hot target: max(0, 1 - |j - y|) is w_l = right - y at left = min(floor(y), n - 2),
    # w_r = y - left at right, 0 elsewhere (the last bin takes all at y = n - 1), with no floor.
    # A position outside [0, n - 1] (or NaN) on a kept row makes that row NaN: a silently
    # extrapolated loss would train on a wrong target (a check on the GPU would cost a host
    # sync; validate=True makes one).
    y = tl.load(target_ptr + r * stride_t, mask=keep, other=0.0).to(ACC)
    in_range = (y >= 0.0) & (y <= N - 1.0)
    good = keep & in_range
    fill = tl.where(keep & ~in_range, float("nan"), 0.0)
    two_hot = tl.maximum(1.0 - tl.abs(bins - y[:, None]), 0.0)
    if HAS_WEIGHT:
        if W_GROUP > 0:
            w_row = tl.load(weight_ptr + (r // W_GROUP) * stride_w, mask=good, other=0.0).to(ACC)
        else:
            w_row = tl.load(weight_ptr + (r // w_group) * stride_w, mask=good, other=0.0).to(ACC)

    # 4. The loss, sum_j w_j (-log p_j) = sum_j w_j (m - x_j) + log s (the two weights add up to
    # 1), and the expectation. m - x_j is exact where p_j is near 1; a bin of weight 0 adds 0
    # even at a -inf logit (0 * inf would be NaN).
    if WITH_LOSS:
        log_s = fast_log2(s) * LN2  # s in [1, n]: lg2.approx is exact to 2**-22 there
        loss = tl.sum(tl.where(two_hot > 0.0, two_hot * (m[:, None] - x), 0.0), axis=1) + log_s
        if HAS_WEIGHT:
            loss = loss * w_row
        loss = tl.where(good, loss, fill)
        if REDUCE:
            loss_acc += loss
        else:
            tl.store(loss_ptr + r * stride_l, loss.to(loss_ptr.dtype.element_ty), mask=in_rows)
        if WITH_EXPECT:
            expectation = tl.where(good, tl.sum(bins * e, axis=1) * inv_s, fill)
            tl.store(expect_ptr + r * stride_e, expectation.to(expect_ptr.dtype.element_ty), mask=in_rows)

    # 5. The gradient: softmax minus the two-hot (in float32, rounded once), times grad_output,
    # the weight and the divisor; plus the expectation's p_j (j - E) times its own grad_output.
    if WITH_GRAD:
        row_scale = tl.zeros_like(s) + grad_scale  # per row from here
        if HAS_WEIGHT:
            row_scale = row_scale * w_row
        if SCALED and not GRAD_OUT_IS_SCALAR:
            row_scale = row_scale * tl.load(grad_out_ptr + r * stride_go, mask=good, other=0.0).to(ACC)
        p = e * inv_s[:, None]
        grad = (p - two_hot) * row_scale[:, None]
        if HAS_GRAD_EXPECT:
            g_e = tl.load(grad_exp_ptr + r * stride_ge, mask=good, other=0.0).to(ACC)
            expectation = tl.sum(bins * p, axis=1)
            grad += g_e[:, None] * p * (bins - expectation[:, None])
        grad = tl.where(good[:, None], grad, fill[:, None])
        tl.store(
            grad_ptr + r[:, None] * stride_g_r + (j * stride_g_n)[None, :],
            grad.to(grad_ptr.dtype.element_ty),
            mask=in_rows[:, None] & bin_ok[None, :],
        )
    return loss_acc


@triton.jit
def _distribution_focal_kernel(
    # pointers
    x_ptr,  # (R, N) bin logits
    target_ptr,  # (R,) float positions
    mask_ptr,  # (R,) uint8, nonzero = the row counts (HAS_MASK)
    weight_ptr,  # (R // G,) one weight per G rows (HAS_WEIGHT)
    denom_ptr,  # () divisor of the reduced loss, any float dtype (HAS_DENOM)
    loss_ptr,  # (R,) per-row loss, or () in x's dtype: the total if REDUCE
    expect_ptr,  # (R,) expectation in x's dtype (WITH_EXPECT)
    partial_ptr,  # (num_programs,) ACC: each program's partial sum (REDUCE)
    ticket_ptr,  # (1,) int32, 0 between launches (kernels/reduce.py)
    grad_ptr,  # (R, N) d total / d x, in x's dtype
    grad_out_ptr,  # () or (R,) by stride: d total / d loss (GRAD_BACKWARD)
    grad_exp_ptr,  # (R,) by stride: d total / d expectation (HAS_GRAD_EXPECT)
    policy_ptr,  # (1,) int32 device flag: forwards store the gradient
    stored_ptr,  # (1,) int32: whether this call's forward stored the gradient
    # strides
    stride_x_r,
    stride_x_n,
    stride_t,
    stride_m,
    stride_w,
    stride_l,
    stride_e,
    stride_g_r,
    stride_g_n,
    stride_go,
    stride_ge,
    # sizes
    R,
    w_group,  # rows per weight where W_GROUP is 0
    num_tiles,
    # scalars: float32 (hi, lo) halves (ops/scalars.py)
    denom_hi,
    denom_lo,  # the divisor where it is a number (not HAS_DENOM); 1.0 for none
    # constants
    N: tl.constexpr,  # bins per row (a handful of values in practice: 16, 17)
    BLOCK_R: tl.constexpr,  # rows per tile
    BLOCK_N: tl.constexpr,  # next_pow2(N) bins
    HAS_MASK: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    W_GROUP: tl.constexpr,  # rows per weight, a compile-time constant up to 16; 0: w_group
    REDUCE: tl.constexpr,
    HAS_DENOM: tl.constexpr,
    WITH_EXPECT: tl.constexpr,
    GRAD_MODE: tl.constexpr,  # GRAD_NONE, GRAD_ALWAYS, GRAD_IF_POLICY or GRAD_BACKWARD
    GRAD_OUT_IS_SCALAR: tl.constexpr,
    HAS_GRAD_EXPECT: tl.constexpr,
    SKIP_IF_STORED: tl.constexpr,
    ACC: tl.constexpr,  # float32, or float64 for float64 logits
):
    pid = tl.program_id(0)
    # a constexpr: an ``and`` of constants is not folded (see softmax_focal.py)
    REDUCED: tl.constexpr = GRAD_MODE != GRAD_BACKWARD and REDUCE

    # 0. What this launch writes, decided on the device (no host sync).
    compute_loss = GRAD_MODE != GRAD_BACKWARD
    store_grad, grad_scale, tiles = gradient_plan(
        policy_ptr, stored_ptr, grad_out_ptr, num_tiles, GRAD_MODE, GRAD_OUT_IS_SCALAR, SKIP_IF_STORED, ACC
    )
    if HAS_DENOM:
        inv_denom = 1.0 / tl.load(denom_ptr).to(ACC)
    else:
        inv_denom = 1.0 / join_float(denom_hi, denom_lo, ACC)
    grad_scale = grad_scale * inv_denom

    # 64-bit offsets: row * stride passes 2**31 at 2**27 rows of 16 bins. Widened once per
    # program; a stride the JIT specialized to 1 stays a constant.
    stride_x_r = tl.cast(stride_x_r, tl.int64)
    stride_g_r = tl.cast(stride_g_r, tl.int64)
    rows = tl.arange(0, BLOCK_R)
    loss_acc = tl.zeros([BLOCK_R], dtype=ACC)
    for tile in range(pid, tiles, tl.num_programs(0)):
        r = tl.cast(tile, tl.int64) * BLOCK_R + rows
        tile_args = (
            x_ptr,
            target_ptr,
            mask_ptr,
            weight_ptr,
            loss_ptr,
            expect_ptr,
            grad_ptr,
            grad_out_ptr,
            grad_exp_ptr,
            stride_x_r,
            stride_x_n,
            stride_t,
            stride_m,
            stride_w,
            stride_l,
            stride_e,
            stride_g_r,
            stride_g_n,
            stride_go,
            stride_ge,
            r,
            R,
            w_group,
            grad_scale,
            loss_acc,
        )
        # A forward that may store the gradient picks, per launch and on the device, the
        # variant with or without the gradient's arithmetic.
        if GRAD_MODE == GRAD_IF_POLICY:
            if store_grad:
                loss_acc = _dfl_tile(
                    *tile_args,
                    N,
                    HAS_MASK,
                    HAS_WEIGHT,
                    W_GROUP,
                    REDUCE,
                    WITH_EXPECT,
                    GRAD_OUT_IS_SCALAR,
                    HAS_GRAD_EXPECT,
                    BLOCK_N,
                    ACC,
                    True,
                    True,
                    False,
                )
            else:
                loss_acc = _dfl_tile(
                    *tile_args,
                    N,
                    HAS_MASK,
                    HAS_WEIGHT,
                    W_GROUP,
                    REDUCE,
                    WITH_EXPECT,
                    GRAD_OUT_IS_SCALAR,
                    HAS_GRAD_EXPECT,
                    BLOCK_N,
                    ACC,
                    True,
                    False,
                    False,
                )
        else:
            loss_acc = _dfl_tile(
                *tile_args,
                N,
                HAS_MASK,
                HAS_WEIGHT,
                W_GROUP,
                REDUCE,
                WITH_EXPECT,
                GRAD_OUT_IS_SCALAR,
                HAS_GRAD_EXPECT,
                BLOCK_N,
                ACC,
                compute_loss,
                GRAD_MODE != GRAD_NONE,
                GRAD_MODE == GRAD_BACKWARD,
            )

    if REDUCED:
        # The programs' partial sums, added in a fixed order by the last one (bit-identical
        # reruns), over the divisor.
        store_total(partial_ptr, ticket_ptr, loss_ptr, tl.sum(loss_acc, axis=0), inv_denom, ACC)
