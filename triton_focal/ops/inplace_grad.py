"""The in-place gradient (``inplace_grad=True``): the logits' storage holds the gradient, so the
backward can only rescale it, in place, and not at all where a 0-dim ``grad_output`` is 1."""

import torch

from .._autograd_state import graph_is_kept
from ..kernels.scale_grad import _scale_grad_by_scalar_kernel
from .autograd import traced
from .launch import acc_dtype, cdiv, launch_device

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
        _scale_grad_by_scalar_kernel[(cdiv(grad.numel(), SCALE_BLOCK),)](
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
    if traced(grad) or graph_is_kept():
        return grad * grad_output
    if grad_output.dim() == 0 and is_dense(grad):
        _scale_stored_grad_op(grad, grad_output)
    else:
        grad.mul_(grad_output)
    return grad
