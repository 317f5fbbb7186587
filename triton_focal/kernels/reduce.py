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

SUM_BLOCK = tl.constexpr(512)  # programs' partials added per step by the last program


@triton.jit
def sum_partials(partial_ptr, ticket_ptr, partial, WIDTH: tl.constexpr, ACC: tl.constexpr):
    """Store this program's ``partial`` (``[WIDTH]``) and take a ticket. Returns ``(is_last,
    totals)``: in the program with the last ticket, the sums over all programs' partials
    (added in program order; the counter is reset), elsewhere zeros. ``partial_ptr`` holds
    ``num_programs * WIDTH`` values in ``ACC``."""
    pid = tl.program_id(0).to(tl.int64)  # 64-bit offsets, as everywhere
    programs = tl.num_programs(0)
    cols = tl.arange(0, WIDTH)
    tl.store(partial_ptr + pid * WIDTH + cols, partial)
    # acq_rel: this program's partials are visible before its ticket is; the last program sees
    # all of them once it holds the last ticket.
    ticket = tl.atomic_add(ticket_ptr, 1, sem="acq_rel")
    is_last = ticket == programs - 1
    total = tl.zeros([SUM_BLOCK, WIDTH], dtype=ACC)
    if is_last:
        for start in range(0, programs, SUM_BLOCK):
            rows = start + tl.arange(0, SUM_BLOCK).to(tl.int64)
            # .cg: from L2, never a stale L1 line
            total += tl.load(partial_ptr + rows[:, None] * WIDTH + cols[None, :], mask=(rows < programs)[:, None],
                             other=0.0, cache_modifier=".cg")
        tl.atomic_xchg(ticket_ptr, 0)
    return is_last, tl.sum(total, axis=0)


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
    """The launch's total of one scalar per program, times ``scale``, to ``out_ptr`` (in its
    element type), written by the last program."""
    is_last, total = sum_partials(partial_ptr, ticket_ptr, tl.full([1], 0.0, ACC) + partial, 1, ACC)
    if is_last:
        total = total * scale
        if out_ptr.dtype.element_ty == tl.bfloat16:
            total = _rounded_for(total.to(tl.float32), tl.bfloat16)
        tl.store(out_ptr + tl.arange(0, 1), total.to(out_ptr.dtype.element_ty))
