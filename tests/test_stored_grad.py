"""The shared backward: the stored gradient times grad_output, in place or not."""

import pytest
import torch
from helpers import assert_close

from triton_focal.ops import stored_grad


@pytest.mark.parametrize("scale", [1.0, 2.5, 0.0, -3.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_scale_by_scalar_in_place(device, scale, dtype):
    grad = torch.randn(3, 5, 7, device=device).to(dtype)
    expected = (grad.double() * scale).to(dtype)
    stored_grad.scale_by_scalar_(grad, torch.tensor(scale, device=device))
    # The interpreter rounds to bfloat16 by truncation, a GPU to nearest: one ulp apart.
    assert_close(grad, expected, "scaled gradient", rtol=2 ** -7 if dtype == torch.bfloat16 else 0, atol=0)


def test_scale_by_scalar_covers_a_permuted_dense_buffer(device):
    grad = torch.randn(2, 3, 4, 5, device=device).to(memory_format=torch.channels_last)
    expected = grad * 2
    stored_grad.scale_by_scalar_(grad, torch.tensor(2.0, device=device))
    assert torch.equal(grad, expected)


def test_opcheck(device):
    torch.library.opcheck(stored_grad._scale_stored_grad_op, (torch.randn(4, 3, 5, device=device), torch.tensor(2.0, device=device)))


def test_per_element_and_broadcast_grad_output(device):
    grad = torch.randn(2, 3, 4, device=device)
    grad_output = torch.randn(2, 1, 4, device=device).expand(2, 3, 4)  # stride 0 along classes
    expected = grad * grad_output
    assert torch.equal(stored_grad.stored_grad_times(grad.clone(), grad_output), expected)
