"""Where a tile of a persistent grid lies: every kernel walks tiles ``pid, pid + grid, ...`` of
``(N, P)`` rows, ``num_p_blocks`` tiles to an image."""

import triton
import triton.language as tl


@triton.jit
def tile_rows(tile, num_p_blocks, ROWS: tl.constexpr):
    """``(n, p0)`` of tile ``tile``: its image and its first row, 64-bit before any multiply
    (``N * C * P`` may exceed ``2**31``, and the tile index meets sizes and strides here)."""
    tile64 = tl.cast(tile, tl.int64)
    return tile64 // num_p_blocks, (tile64 % num_p_blocks) * ROWS
