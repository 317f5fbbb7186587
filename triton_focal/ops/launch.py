"""What every fused launch shares: the device it runs on, how many programs it gets, and the
arithmetic dtype and constants it is compiled with. The block sizes of each kernel are its
launcher's (``softmax_focal.py``, ``sigmoid_focal.py``, ``distribution_focal.py``), next to the
reasons for them."""

import contextlib
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
MAX_WARPS_PER_SM = 64
# A re-read is served by L2 only while what the programs in flight read in between fits in
# about half the L2 (the cost model's rule: H100's L2 is two partitions of 25 MB); 45%
# leaves room for the gradient being written meanwhile. Keeping the programs that few is
# worth idling SMs down to this many resident warps per SM on average; below it, latency
# would cost more than the re-read saves, and the grid fills the GPU instead (the re-read
# then comes from DRAM).
L2_REUSE_FRACTION = 0.45
MIN_WARPS_PER_SM_FOR_L2 = 8


class PersistentGrid:
    """How many programs a persistent launch gets: each walks tiles ``pid, pid + grid, ...``."""

    def __init__(self, num_sms, l2_bytes):
        self.num_sms = num_sms
        self.l2_bytes = l2_bytes

    @staticmethod
    @functools.cache
    def for_device(device):
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            return PersistentGrid(props.multi_processor_count, props.L2_cache_size)
        return PersistentGrid(STAND_IN_SMS, STAND_IN_L2_BYTES)

    def rereads_in_l2(self, num_warps, footprint):
        """Whether programs of ``num_warps`` warps that each re-read ``footprint`` bytes can be
        few enough for L2 to serve the re-reads and still keep the GPU busy."""
        return self._in_l2(footprint) * num_warps >= self.num_sms * MIN_WARPS_PER_SM_FOR_L2

    def programs(self, num_tiles, num_warps, footprint):
        """Programs for ``num_tiles`` tiles of ``num_warps`` warps that each re-read
        ``footprint`` bytes: few enough that the re-reads stay in L2 where that still keeps
        the GPU busy, else as many as fit the GPU."""
        resident = self.num_sms * max(MAX_WARPS_PER_SM // num_warps, 1)
        if self.rereads_in_l2(num_warps, footprint):
            resident = min(resident, self._in_l2(footprint))
        return max(1, min(num_tiles, resident))

    def _in_l2(self, footprint):
        return int(self.l2_bytes * L2_REUSE_FRACTION) // max(footprint, 1)


MAX_INTEGER_GAMMA = 4


def integer_gamma(gamma):
    """``gamma`` as a compile-time integer where it is one (2, the usual, included), else -1."""
    if isinstance(gamma, torch.Tensor) or gamma != int(gamma) or not 0 <= gamma <= MAX_INTEGER_GAMMA:
        return -1
    return int(gamma)


def acc_dtype(dtype):
    """Triton's arithmetic dtype: float32, or float64 for float64 logits (gradcheck)."""
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32
