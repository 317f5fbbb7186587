"""The mean's divisors from the targets, in one launch: ``sum w_y`` and the count of the rows
that are not ignored (``F.cross_entropy``'s mean; the sigmoid loss's count of elements).

A loss whose forward writes the gradient needs them before its pass over the logits, so they
cannot come from that pass; this reads the targets only (a few bytes a row), and a per-element
weight where one is given (``HAS_ELEMENT_WEIGHT``: ``sum v * w_y`` and ``sum v``, a weighted mean).
"""

import triton
import triton.language as tl

from .reduce import sum_partials
from .tiles import tile_rows


@triton.jit
def _target_count_kernel(
    target_ptr,  # (N, P) class indices, any int dtype
    weight_ptr,  # (C,) class weights in ACC (HAS_WEIGHT)
    element_weight_ptr,  # (N, P) by strides, any float dtype (HAS_ELEMENT_WEIGHT)
    partial_ptr,  # (num_programs, 2) ACC
    ticket_ptr,  # (1,) int32, 0 between launches
    denom_ptr,  # (2,) ACC out: (sum of w_y, count), each times ``scale``
    stride_t_n,
    stride_t_p,
    stride_v_n,
    stride_v_p,
    P,
    num_p_blocks,
    num_tiles,
    C,
    ignore_index,
    scale,
    HAS_WEIGHT: tl.constexpr,
    HAS_ELEMENT_WEIGHT: tl.constexpr,
    ZERO_AS_ONE: tl.constexpr,  # a divisor of nothing is 1 (its sum is 0 anyway)
    BLOCK: tl.constexpr,
    ACC: tl.constexpr,
):
    # A persistent grid (one wave): each program walks tiles pid, pid + grid, ... of BLOCK
    # targets and keeps per-lane sums; the lanes are added once, at the end.
    count = tl.zeros([BLOCK], dtype=ACC)
    weighted = tl.zeros([BLOCK], dtype=ACC)
    for tile in range(tl.program_id(0), num_tiles, tl.num_programs(0)):
        n, p0 = tile_rows(tile, num_p_blocks, BLOCK)
        p = p0 + tl.arange(0, BLOCK)
        mask = p < P
        target = tl.load(target_ptr + n * stride_t_n + p * stride_t_p, mask=mask, other=ignore_index).to(tl.int64)
        valid = mask & (target != ignore_index)
        if HAS_ELEMENT_WEIGHT:
            v = tl.load(element_weight_ptr + n * stride_v_n + p * stride_v_p, mask=valid, other=0.0).to(ACC)
        else:
            v = valid.to(ACC)
        count += v
        if HAS_WEIGHT:
            # An out-of-range index weighs 0 here; the loss kernel turns its row into NaN.
            safe = valid & (target >= 0) & (target < C)
            w_y = tl.load(weight_ptr + tl.where(safe, target, 0), mask=safe, other=0.0)
            weighted += v * w_y
    count_total = tl.sum(count, axis=0)
    if HAS_WEIGHT:
        weighted_total = tl.sum(weighted, axis=0)
    else:
        weighted_total = count_total
    cols = tl.arange(0, 2)
    is_last, totals = sum_partials(partial_ptr, ticket_ptr, tl.where(cols == 0, weighted_total, count_total), 2, ACC)
    if is_last:
        totals = totals * scale
        if ZERO_AS_ONE:
            totals = tl.where(totals > 0, totals, 1.0)
        tl.store(denom_ptr + cols, totals)
