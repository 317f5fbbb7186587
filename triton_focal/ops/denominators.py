"""Launcher of the mean's divisors (``kernels/denominators.py``)."""

from ..kernels.denominators import _target_count_kernel
from .launch import PersistentGrid, acc_dtype, cdiv, persistent_launch
from .workspace import partials, ticket_counter

# Targets per tile: 8 KB of int64 indices, 64 bytes in flight per thread. A persistent grid (one
# wave, ``PersistentGrid``) walks the tiles: one program per tile would leave a second, partial
# wave (4M pixels are 2048 tiles of 2048, 1.3 waves of 4-warp programs) that costs as long as a
# full one; tiles this small keep the programs' shares within one tile of each other.
BLOCK = 1024
NUM_WARPS = 4


def target_denominators(
    target, weight, ignore_index, num_classes, *, dtype, scale=1.0, zero_as_one=False, element_weight=None
):
    """``(2,)`` in ``dtype``: ``scale`` times the sum of ``w_y`` (the count without ``weight``)
    and times the count, over the elements of ``target`` (``(N, P)`` class indices) that are not
    ``ignore_index``. ``zero_as_one``: a divisor of nothing is 1 instead of 0. ``element_weight``
    (``(N, P)``, any strides): the sums of ``element_weight * w_y`` and of ``element_weight`` instead."""
    if target.shape[1] == 1:  # rows ((T, V) logits): one long line of targets, not T lines of one
        target = target.view(1, -1)  # a view whatever the row stride (the class dimension has size 1)
        element_weight = None if element_weight is None else element_weight.view(1, -1)
    n, p = target.shape
    denom = target.new_empty(2, dtype=dtype)
    block = BLOCK  # one configuration for every size: a short line leaves lanes masked, and compiles nothing new
    num_p_blocks = cdiv(p, block)
    num_tiles = n * num_p_blocks
    args = (
        target,
        weight if weight is not None else denom,
        element_weight if element_weight is not None else denom,
        partials(min(num_tiles, PersistentGrid.for_device(target.device).max_programs), 2, dtype, target.device),
        ticket_counter(target.device),
        denom,
        target.stride(0),
        target.stride(1),
        *(element_weight.stride() if element_weight is not None else (0, 0)),
        p,
        num_p_blocks,
        num_tiles,
        num_classes,
        int(ignore_index),
        float(scale),
    )
    meta = dict(
        HAS_WEIGHT=weight is not None,
        HAS_ELEMENT_WEIGHT=element_weight is not None,
        ZERO_AS_ONE=zero_as_one,
        BLOCK=block,
        ACC=acc_dtype(dtype),
        num_warps=NUM_WARPS,
    )
    persistent_launch(_target_count_kernel, num_tiles, 0, args, meta)  # nothing re-read
    return denom


def reduced_divisor(reduction, normalizer, normalizer_number, mean_count):
    """What divides a reduced loss, without a host sync: None for ``"none"`` and ``"sum"``, a
    normalizer (a device tensor, detached: its own gradient is the autograd formula's; or a
    number) where one is given, else the mean's count, ``mean_count()`` (a number, or a device
    tensor from :func:`target_denominators`; called only where the mean needs it)."""
    if reduction == "none":
        return None
    if normalizer is not None:
        return normalizer.detach()
    if normalizer_number is not None:
        return normalizer_number
    if reduction == "sum":
        return None
    return mean_count()
