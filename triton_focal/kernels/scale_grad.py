"""The backward of every fused loss: scale the stored gradient by a scalar grad_output."""

import triton
import triton.language as tl


@triton.jit
def _scale_grad_by_scalar_kernel(
    grad_ptr,  # (numel,) the stored gradient, a dense buffer, scaled in place
    grad_output_ptr,  # () d total / d loss
    numel,
    BLOCK: tl.constexpr,
    ACC: tl.constexpr,  # float32, or float64 for a float64 gradient
):
    scale = tl.load(grad_output_ptr).to(ACC)
    # loss.backward() hands exactly 1: decided here, on the device, without a host sync,
    # and then not one byte of the gradient is read or written.
    if scale != 1.0:
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        grad = tl.load(grad_ptr + offs, mask=mask).to(ACC)
        tl.store(grad_ptr + offs, (grad * scale).to(grad_ptr.dtype.element_ty), mask=mask)
