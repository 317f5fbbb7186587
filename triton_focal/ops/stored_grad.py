"""The backward shared by every fused loss: the stored gradient times ``grad_output``.

The forward launches compute ``d loss / d input`` for ``grad_output == 1`` while the logits
are in registers, and store it. Backward then only multiplies by ``grad_output``:

* the last backward over a graph scales the stored buffer in place; a 0-dim
  ``grad_output`` of exactly 1 (plain ``loss.backward()``) is recognized on the device and
  then no byte of the gradient moves;
* a backward that keeps the graph (``retain_graph=True``, ``gradcheck``), or one being
  traced (``torch.compile``, ``opcheck``), returns a new product instead, so that a later
  backward still finds the unscaled gradient.
"""

import torch
import triton

from ..kernels.scale_grad import _scale_grad_by_scalar_kernel

# Elements per program of the scaling pass: a plain streaming kernel, 16 per thread.
BLOCK = 2048
NUM_WARPS = 4


def is_dense(tensor):
    """Whether the elements fill one span of memory from ``data_ptr``, without gaps or
    overlaps, in any dimension order (channels_last too). Read from the strides alone."""
    expected = 1
    for size, stride in sorted(((size, stride) for size, stride in zip(tensor.shape, tensor.stride()) if size != 1),
                               key=lambda dim: (dim[1], dim[0])):
        if stride != expected:
            return False
        expected *= size
    return True


def scale_by_scalar_(grad, grad_output):
    """``grad *= grad_output`` in place for a dense ``grad`` and a 0-dim ``grad_output``;
    nothing moves where ``grad_output == 1``."""
    if grad.numel() == 0:
        return
    import triton.language as tl

    _scale_grad_by_scalar_kernel[(triton.cdiv(grad.numel(), BLOCK),)](
        grad, grad_output, grad.numel(),
        BLOCK=BLOCK, ACC=tl.float64 if grad.dtype == torch.float64 else tl.float32, num_warps=NUM_WARPS,
    )


@torch.library.custom_op("triton_focal::scale_stored_grad_", mutates_args=("grad",))
def _scale_stored_grad_op(grad: torch.Tensor, grad_output: torch.Tensor) -> None:
    scale_by_scalar_(grad, grad_output)


@_scale_stored_grad_op.register_fake
def _(grad, grad_output):
    return None


def _graph_is_kept():
    """Whether the running backward keeps the graph (``retain_graph=True``, gradcheck).

    A private autograd query (the one AOTAutograd uses); where it is missing, assume the
    graph is kept, which is always correct, only slower.
    """
    query = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if query is None else bool(query())


def stored_grad_times(grad, grad_output):
    """The gradient of a fused loss's input: ``grad * grad_output``.

    Args:
        grad: the gradient stored by the forward, ``input``'s shape.
        grad_output: 0-dim (``sum``/``mean``), or broadcastable to ``grad`` with any strides
            (``none``; stride 0 from ``expand`` included).

    Returns:
        ``grad`` itself, scaled in place, or a new tensor (see the module docstring).
    """
    # A tracer hands in tensor subclasses (fake or functional tensors), and
    # torch.compiler.is_compiling() is False while AOTAutograd traces a backward: either
    # sign means "traced", where mutating a forward output would be rejected.
    traced = torch.compiler.is_compiling() or type(grad) is not torch.Tensor
    if traced or _graph_is_kept():
        return grad * grad_output
    if grad_output.dim() == 0 and is_dense(grad):
        _scale_stored_grad_op(grad, grad_output)
    else:
        grad.mul_(grad_output)
    return grad
