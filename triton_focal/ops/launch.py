"""What every fused launch shares: the device it runs on, how many programs it gets, and the
arithmetic dtype and constants it is compiled with. The block sizes of each kernel are its
launcher's (``softmax_focal.py``, ``sigmoid_focal.py``, ``distribution_focal.py``), next to the
reasons for them."""

import contextlib
import dataclasses
import functools

import torch

# --- the launch device -----------------------------------------------------------------------


def launch_device(tensor):
    """The context a kernel launch on ``tensor`` runs in: its CUDA device made current (Triton
    launches on the current device and stream, so a tensor on ``cuda:1`` while ``cuda:0`` is
    current would otherwise be launched on the wrong GPU). A device switch, no sync."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def on_input_device(launch):
    """``launch(input, ...)`` run on ``input``'s device (see :func:`launch_device`)."""

    @functools.wraps(launch)
    def guarded(input, *args, **kwargs):
        if not input.is_cuda:
            return launch(input, *args, **kwargs)
        with torch.cuda.device(input.device):
            return launch(input, *args, **kwargs)

    return guarded


# --- the persistent grid -------------------------------------------------------------------

# Stand-in device where none can be asked (the interpreter, the cost model): an H100 SXM.
STAND_IN_SMS = 132
STAND_IN_L2_BYTES = 50 * 2**20
STAND_IN_SHARED_BYTES_PER_SM = 228 * 1024
# Every NVIDIA GPU since Kepler: 64K 32-bit registers and at most 32 resident programs per SM.
REGISTERS_PER_SM = 65536
REGISTER_ALLOCATION_UNIT = 256  # registers, per warp
MAX_PROGRAMS_PER_SM = 32
MAX_WARPS_PER_SM = 64
SHARED_RESERVED_PER_PROGRAM = 1024  # the driver's own shared memory per CTA (sm_80 and later)
# A re-read is served by L2 for sure only while what the programs in flight read in between
# fits in about a quarter of the L2 (the cost model's sure-hit size: 12 of H100's 50 MB; up to
# the whole L2 it may or may not be, with replacement and the gradient's stores streaming
# through). The grid is kept that small only where every SM still gets a program with at
# least this many resident warps on average: idling SMs, or starving them of warps, for a
# re-read the L2 may not serve would be a bet on one side of an uncertain threshold.
# Otherwise the grid fills the GPU and the re-read comes from DRAM.
L2_REUSE_FRACTION = 0.25
MIN_WARPS_PER_SM_FOR_L2 = 8


@dataclasses.dataclass(frozen=True)
class Footprint:
    """What one program of a compiled kernel holds on an SM: registers per thread, its warps
    and its shared memory, which together bound how many programs an SM keeps resident."""

    registers: int
    num_warps: int
    shared_bytes: int = 0


# Footprints of kernels where no compiled kernel can be asked (the interpreter), keyed by
# :func:`footprint_key`. Empty unless someone who compiled the kernels fills it: ``perf.model``
# compiles every launch for sm_90 and puts its registers here, so that the grid it models is the
# one a GPU would get. Without an entry the grid assumes the warps alone limit residency.
STAND_IN_FOOTPRINTS = {}
_compiled_footprints = {}


def footprint_key(kernel_name, tensor_dtypes, meta):
    """What a kernel's footprint depends on: the kernel, its tensors' dtypes (in argument order,
    as ``"bfloat16"``...) and its keyword arguments (constexprs and ``num_warps``)."""
    return (kernel_name, tuple(tensor_dtypes), tuple(sorted((k, repr(v)) for k, v in meta.items())))


def launch_tensors(args):
    """The tensors among a launch's arguments, in order, those in argument groups
    (``kernels/params.py``) included."""
    out = []
    for arg in args:
        if isinstance(arg, tuple):
            out += launch_tensors(arg)
        elif isinstance(arg, torch.Tensor):
            out.append(arg)
    return out


def kernel_footprint(kernel, args, tensors, meta):
    """The :class:`Footprint` of ``kernel`` launched with ``args`` (whose tensors are
    ``tensors``, :func:`launch_tensors`) and ``meta``, or None where it
    cannot be known. On an NVIDIA GPU it is the compiled kernel's (Triton's ``warmup`` compiles
    what the launch would, once; its registers come from ptxas), asked once per configuration.
    Under the interpreter it is :data:`STAND_IN_FOOTPRINTS`'."""
    import torch

    on_gpu = tensors[0].is_cuda
    if (not on_gpu and not STAND_IN_FOOTPRINTS) or (on_gpu and torch.version.hip is not None):
        # nothing installed; or AMD, whose occupancy counts other registers (VGPRs per SIMD):
        # the warps decide
        return None
    dtypes = [str(t.dtype).replace("torch.", "") for t in tensors]
    key = footprint_key(kernel.fn.__qualname__, dtypes, meta)
    if not on_gpu:
        return STAND_IN_FOOTPRINTS.get(key)
    if key not in _compiled_footprints:
        try:
            compiled = kernel.warmup(*args, grid=(1,), **meta)
            compiled._init_handles()
            footprint = Footprint(int(compiled.n_regs), int(meta["num_warps"]), int(compiled.metadata.shared))
        except Exception:  # a Triton without these attributes: fall back to the warps' limit
            footprint = None
        _compiled_footprints[key] = footprint
    return _compiled_footprints[key]


class PersistentGrid:
    """How many programs a persistent launch gets: each walks tiles ``pid, pid + grid, ...``.

    As many as the SMs keep resident at once (one wave: a second, partial wave would run at
    the tail's occupancy for as long as a full one), or fewer where the re-reads must stay in
    L2 or there are fewer tiles."""

    def __init__(self, num_sms, l2_bytes, shared_bytes_per_sm=STAND_IN_SHARED_BYTES_PER_SM):
        self.num_sms = num_sms
        self.l2_bytes = l2_bytes
        self.shared_bytes_per_sm = shared_bytes_per_sm

    @staticmethod
    @functools.cache
    def for_device(device):
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            shared = getattr(props, "shared_memory_per_multiprocessor", STAND_IN_SHARED_BYTES_PER_SM)
            return PersistentGrid(props.multi_processor_count, props.L2_cache_size, shared)
        return PersistentGrid(STAND_IN_SMS, STAND_IN_L2_BYTES)

    @property
    def max_programs(self):
        """An upper bound on :meth:`programs` (room for per-program partial sums)."""
        return self.num_sms * MAX_PROGRAMS_PER_SM

    def programs_per_sm(self, num_warps, footprint=None):
        """Resident programs per SM: the tightest of warps, registers and shared memory
        (only the warps where the compiled kernel is unknown)."""
        per_sm = min(MAX_WARPS_PER_SM // num_warps, MAX_PROGRAMS_PER_SM)
        if footprint is not None:
            unit = REGISTER_ALLOCATION_UNIT
            per_warp = -(-max(footprint.registers, 1) * 32 // unit) * unit
            per_sm = min(per_sm, REGISTERS_PER_SM // per_warp // num_warps)
            if footprint.shared_bytes:
                per_sm = min(per_sm, self.shared_bytes_per_sm // (footprint.shared_bytes + SHARED_RESERVED_PER_PROGRAM))
        return max(per_sm, 1)

    def rereads_in_l2(self, num_warps, footprint):
        """Whether programs of ``num_warps`` warps that each re-read ``footprint`` bytes can be
        few enough for L2 to serve the re-reads and still keep every SM busy."""
        in_l2 = self._in_l2(footprint)
        return in_l2 >= self.num_sms and in_l2 * num_warps >= self.num_sms * MIN_WARPS_PER_SM_FOR_L2

    def programs(self, num_tiles, num_warps, footprint, compiled=None):
        """Programs for ``num_tiles`` tiles of ``num_warps`` warps that each re-read
        ``footprint`` bytes: few enough that the re-reads stay in L2 where that still keeps
        the GPU busy, else as many as the SMs keep resident (``compiled``: the kernel's
        :class:`Footprint`, where known)."""
        resident = self.num_sms * self.programs_per_sm(num_warps, compiled)
        if self.rereads_in_l2(num_warps, footprint):
            resident = min(resident, self._in_l2(footprint))
        return max(1, min(num_tiles, resident))

    def _in_l2(self, footprint):
        return int(self.l2_bytes * L2_REUSE_FRACTION) // max(footprint, 1)


def persistent_launch(kernel, num_tiles, footprint, args, meta):
    """Launch ``kernel(*args, **meta)`` on its persistent grid (:class:`PersistentGrid`) for
    ``num_tiles`` tiles that each re-read ``footprint`` bytes; returns the number of programs.
    Per-program buffers in ``args`` need room for ``PersistentGrid.max_programs``."""
    tensors = launch_tensors(args)
    grid = PersistentGrid.for_device(tensors[0].device)
    compiled = kernel_footprint(kernel, args, tensors, meta)
    num_programs = grid.programs(num_tiles, meta["num_warps"], footprint, compiled)
    kernel[(num_programs,)](*args, **meta)
    return num_programs


MAX_INTEGER_GAMMA = 4


# Integer helpers of the launchers: Triton's (``triton.cdiv``, ``triton.next_power_of_2``) are
# constexpr functions in recent releases, which cost a few microseconds a call on the host.
def cdiv(x, y):
    return -(-x // y)


def next_power_of_2(n):
    """The smallest power of 2 ``>= n`` (0 for 0), as ``triton.next_power_of_2``."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def fold_rows(shape, *strides):
    """``(N, C, 1)`` rows (vocabularies, detection heads) seen as one image of ``N`` positions,
    so that a program takes several short rows at once; ``(N, C, P)`` unchanged. Returns
    ``(N, P, strides)`` of the launch, each of ``strides`` an ``(n, c, p)`` or ``(n, p)``
    tuple of the caller's. The grid is 1-D either way, so N is never limited by grid.y."""
    n, _, p = shape
    if p == 1 and n > 1:
        return 1, n, [(0, s[1], s[0]) if len(s) == 3 else (0, s[0]) for s in strides]
    return n, p, list(strides)


def integer_gamma(gamma):
    """``gamma`` as a compile-time integer where it is one (2, the usual, included), else -1."""
    if isinstance(gamma, torch.Tensor) or gamma != int(gamma) or not 0 <= gamma <= MAX_INTEGER_GAMMA:
        return -1
    return int(gamma)


def acc_dtype(dtype):
    """Triton's arithmetic dtype: float32, or float64 for float64 logits (gradcheck)."""
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32
