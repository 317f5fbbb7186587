"""What every fused loss shares: who writes the gradient, and how many programs a launch gets.

The gradient policy. Forward + backward of a fused loss is cheapest when the forward
computes the gradient while the logits are on chip and the backward has nothing to do: one
read of the logits, one write of the gradient. That holds only for ``grad_output == 1``
(plain ``loss.backward()``). Any other ``grad_output`` would then cost a read and a write of
the stored gradient more, so there the backward recomputes the gradient from the logits
instead (times ``grad_output``), and the forward stops storing it:

* a device flag per device, ``policy_flag``, says whether forwards store the gradient. Each
  backward with a 0-dim ``grad_output`` sets it to ``grad_output == 1``, on the device;
* each forward records in its own ``stored`` flag whether it stored the gradient; its
  backward exits at once when ``stored`` and ``grad_output == 1``, and otherwise recomputes;
* traced graphs (``torch.compile``) never store: their backward always recomputes into a new
  buffer. So does a backward that keeps the graph (``retain_graph=True``, ``gradcheck``),
  because a later backward must still find the forward's buffer untouched.

Nothing is decided on the host, so nothing waits for the GPU.

The user's switch, ``triton_focal.set_gradient_policy`` (``triton_focal/gradient_policy.py``):
``"auto"`` (the default) is the policy above;
``"recompute"`` makes every forward compute the loss only and every backward recompute the
gradient. That costs a read of the logits more per step, and saves holding a logits-sized
gradient from the forward to the backward: the choice where memory between them is what
runs out (many losses summed before one backward, long forwards after the loss).
"""

import contextlib
import functools

import torch
import triton

from .._autograd_state import graph_is_kept
from ..gradient_policy import gradient_policy
from ..kernels.grad_mode import GRAD_IF_POLICY
from ..kernels.scale_grad import _scale_grad_by_scalar_kernel

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


# --- the gradient policy ---------------------------------------------------------------------


def forward_may_store(needs_grad, reduction):
    """Whether a forward may store its gradient for ``grad_output == 1``: it needs a gradient,
    its loss is reduced, it is not traced (traced graphs always recompute), and the user's
    policy is ``"auto"``."""
    return needs_grad and reduction != "none" and not torch.compiler.is_compiling() and gradient_policy() == "auto"


_policy_flags = {}


def policy_flag(device):
    """``(1,)`` int32 on ``device``: 1 while forwards should store their gradient (see above)."""
    key = str(device)
    if key not in _policy_flags:
        _policy_flags[key] = torch.ones(1, dtype=torch.int32, device=device)
    return _policy_flags[key]


def finish_empty_launch(grad, stored, grad_mode):
    """What a launch with nothing to compute still owes: a zero gradient, and a forward that
    may store marks it stored (its backward then has nothing to add)."""
    if grad is not None:
        grad.zero_()
    if stored is not None and grad_mode == GRAD_IF_POLICY:
        stored.fill_(1)


def _traced(tensor):
    # A tracer hands in tensor subclasses (fake or functional tensors), and
    # torch.compiler.is_compiling() is False while AOTAutograd traces a backward.
    return torch.compiler.is_compiling() or type(tensor) is not torch.Tensor


def backward_in_place(grad):
    """Whether this backward may finish in the forward's gradient buffer ``grad``."""
    return grad.numel() > 0 and not _traced(grad) and not graph_is_kept()


# --- what the kernels do not do: second derivatives and torch.func --------------------------
# The kernels compute first derivatives. A second derivative (``create_graph=True``) and the
# ``torch.func`` transforms go through the eager reference instead: correct, and as fast as
# eager PyTorch.


def differentiable_grad(reference_loss, input, grad_loss):
    """``d loss / d input`` times ``grad_loss`` with a graph, from the reference's autograd,
    for a backward that was asked to ``create_graph``."""
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(reference_loss(input), input, grad_loss, create_graph=True)
    return grad


def save_options(ctx, tensors, options):
    """Save ``tensors`` and the loss's ``options`` (tensors among them saved, the rest kept)."""
    ctx.num_tensors = len(tensors)
    ctx.option_is_tensor = [isinstance(o, torch.Tensor) for o in options]
    ctx.options = [None if is_tensor else o for o, is_tensor in zip(options, ctx.option_is_tensor)]
    ctx.save_for_backward(*tensors, *(o for o in options if isinstance(o, torch.Tensor)))


def saved_options(ctx):
    """``(tensors, options)`` as given to ``save_options``."""
    saved = ctx.saved_tensors
    tensors, option_tensors = saved[: ctx.num_tensors], iter(saved[ctx.num_tensors :])
    options = [next(option_tensors) if is_tensor else o for o, is_tensor in zip(ctx.options, ctx.option_is_tensor)]
    return tensors, options


# Integer gammas up to this get their powers as products, compiled once per value (no MUFU).
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


# --- the in-place gradient (inplace_grad=True) ---------------------------------------------
# There the logits are overwritten by the gradient, so nothing can be recomputed: the backward
# rescales the stored gradient, in place, and not at all where a 0-dim grad_output is 1.

# Elements per program of the scaling pass: a plain streaming kernel, 16 per thread.
SCALE_BLOCK = 2048
SCALE_NUM_WARPS = 4


def is_dense(tensor):
    """Whether the elements fill one span of memory from ``data_ptr``, without gaps or
    overlaps, in any dimension order (channels_last too). Read from the strides alone."""
    expected = 1
    for size, stride in sorted(
        ((size, stride) for size, stride in zip(tensor.shape, tensor.stride()) if size != 1),
        key=lambda dim: (dim[1], dim[0]),
    ):
        if stride != expected:
            return False
        expected *= size
    return True


@torch.library.custom_op("triton_focal::scale_stored_grad_", mutates_args=("grad",))
def _scale_stored_grad_op(grad: torch.Tensor, grad_output: torch.Tensor) -> None:
    if grad.numel() == 0:
        return
    with launch_device(grad):
        _scale_grad_by_scalar_kernel[(triton.cdiv(grad.numel(), SCALE_BLOCK),)](
            grad,
            grad_output,
            grad.numel(),
            BLOCK=SCALE_BLOCK,
            ACC=acc_dtype(grad.dtype),
            num_warps=SCALE_NUM_WARPS,
        )


@_scale_stored_grad_op.register_fake
def _(grad, grad_output):
    return None


def scale_stored_grad(grad, grad_output):
    """``grad * grad_output`` for a gradient stored in the logits' place.

    Args:
        grad: the stored gradient, the logits' shape.
        grad_output: 0-dim, or broadcastable to ``grad`` with any strides.

    Returns:
        ``grad`` itself, scaled in place; a new product where the graph is kept or traced.
    """
    if _traced(grad) or graph_is_kept():
        return grad * grad_output
    if grad_output.dim() == 0 and is_dense(grad):
        _scale_stored_grad_op(grad, grad_output)
    else:
        grad.mul_(grad_output)
    return grad


def stored_flag(device, store_grad):
    """A forward's ``stored`` flag: written by the launch where it may store the gradient
    (so nothing fills it first), else 0 (that forward never stores)."""
    if store_grad:
        return torch.empty(1, dtype=torch.int32, device=device)
    return torch.zeros(1, dtype=torch.int32, device=device)
