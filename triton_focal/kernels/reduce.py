"""A launch's partial sums, added by its last program: no torch reduction after the kernel.

Each program stores its partial sums and takes a ticket (an atomic counter); the program that
draws the last ticket adds every program's partials in program order and writes the totals.
The order is fixed, so reruns are bit-identical (an atomic add of the partials would not be),
and the totals are ready when the launch ends, without a second launch. The last program also
puts the counter back to 0, so one counter per device and stream serves every launch on it
(``ops/workspace.py``).
"""

import triton
import triton.language as tl

SUM_BLOCK = tl.constexpr(1024)  # partials the last program adds per step


@triton.jit
def _is_last(ticket_ptr):
    """Take a ticket, after this program stored its partials: is this the last program?
    acq_rel: the partials are visible before the ticket is, and the last program sees every
    program's partials once it holds the last ticket."""
    return tl.atomic_add(ticket_ptr, 1, sem="acq_rel") == tl.num_programs(0) - 1


@triton.jit
def _rounded_for(value, DTYPE: tl.constexpr):
    """``value`` (float32) rounded to nearest-even in ``DTYPE`` and still float32, so that the
    conversion that follows is exact: the interpreter's float32 -> bfloat16 truncates, a GPU's
    rounds, and the one number a reduction returns must agree on both."""
    if DTYPE == tl.bfloat16:
        bits = value.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    return value


@triton.jit
def store_total(partial_ptr, ticket_ptr, out_ptr, partial, scale, ACC: tl.constexpr):
    """``scale`` times the sum of every program's scalar ``partial``, written to ``out_ptr`` (in
    its element type) by the last program. ``partial_ptr``: ``num_programs`` values in ``ACC``.

    1-D on purpose: the same sum over a ``[programs, 1]`` tile (``sum_partials``) made ptxas
    spill in the main loop of the softmax kernel."""
    programs = tl.num_programs(0)
    tl.store(partial_ptr + tl.program_id(0), partial)
    if _is_last(ticket_ptr):
        total = tl.zeros([SUM_BLOCK], dtype=ACC)
        for start in range(0, programs, SUM_BLOCK):
            rows = start + tl.arange(0, SUM_BLOCK)
            # .cg: from L2, never a stale L1 line
            total += tl.load(partial_ptr + rows, mask=rows < programs, other=0.0, cache_modifier=".cg")
        tl.atomic_xchg(ticket_ptr, 0)
        total = tl.sum(total, axis=0) * scale
        if out_ptr.dtype.element_ty == tl.bfloat16:
            total = _rounded_for(total.to(tl.float32), tl.bfloat16)
        tl.store(out_ptr, total.to(out_ptr.dtype.element_ty))


@triton.jit
def sum_partials(partial_ptr, ticket_ptr, partial, WIDTH: tl.constexpr, ACC: tl.constexpr):
    """Store this program's ``partial`` (``[WIDTH]``) and take a ticket. Returns ``(is_last,
    totals)``: in the last program, the sums over every program's partials (in program order;
    the counter is reset), elsewhere zeros. ``partial_ptr``: ``num_programs * WIDTH`` in ``ACC``."""
    programs = tl.num_programs(0)
    cols = tl.arange(0, WIDTH)
    tl.store(partial_ptr + tl.program_id(0).to(tl.int64) * WIDTH + cols, partial)
    is_last = _is_last(ticket_ptr)
    total = tl.zeros([SUM_BLOCK, WIDTH], dtype=ACC)
    if is_last:
        for start in range(0, programs, SUM_BLOCK):
            rows = start + tl.arange(0, SUM_BLOCK).to(tl.int64)
            total += tl.load(
                partial_ptr + rows[:, None] * WIDTH + cols[None, :],
                mask=(rows < programs)[:, None],
                other=0.0,
                cache_modifier=".cg",
            )
        tl.atomic_xchg(ticket_ptr, 0)
    return is_last, tl.sum(total, axis=0)
