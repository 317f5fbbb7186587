"""The launchers allocate one logits-sized tensor, the gradient, and nothing else of that size.

Every torch allocation the forward launch makes is recorded with a dispatch mode (in-place
ops and views allocate nothing and are left out; so are the interpreter's own copies, which
are in-place). On a GPU, tests/test_softmax_triton.py checks the same with
torch.cuda.max_memory_allocated.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

pytest.importorskip("triton")
from triton_focal.ops import sigmoid_focal, softmax_focal  # noqa: E402


class AllocationRecorder(TorchDispatchMode):
    """Sizes of the new tensors made by ops (not in-place ops, not views)."""

    def __init__(self):
        super().__init__()
        self.allocations = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func._schema.is_mutable and not func.is_view:
            self.allocations += [(str(func), t.numel()) for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        return out

    def logits_sized(self, numel):
        return [name for name, size in self.allocations if size >= numel]


@pytest.mark.parametrize("compute_grad", [True, False])
@pytest.mark.parametrize("shape", [(2, 19, 40), (3, 300, 1)])  # channels-first; rows
def test_softmax_forward_allocates_only_the_gradient(device, compute_grad, shape):
    x = torch.randn(shape, device=device)
    target = torch.randint(0, shape[1], (shape[0], shape[2]), device=device)
    weight = torch.rand(shape[1], device=device)
    for reduction in ("mean", "none"):
        with AllocationRecorder() as recorder:
            softmax_focal.softmax_focal_fwd(x, target, 2.0, 0.25, weight, -100, reduction, 0.1, compute_grad)
        assert recorder.logits_sized(x.numel()) == (["aten.empty_like.default"] if compute_grad else [])


@pytest.mark.parametrize("compute_grad", [True, False])
def test_sigmoid_forward_allocates_only_the_gradient(device, compute_grad):
    x = torch.randn(64, 80, device=device).unsqueeze(2)
    target = torch.randint(0, 81, (64, 1), device=device)
    weight = torch.rand(64, 1, 1, device=device).expand_as(x)  # per anchor, never expanded in memory
    with AllocationRecorder() as recorder:
        sigmoid_focal.sigmoid_focal_fwd(
            x, target, weight=weight, class_gamma=None, denominator=None, alpha=0.25, gamma=2.0,
            ignore_index=-100, reduce=True, star=False, compute_grad=compute_grad,
        )
    assert recorder.logits_sized(x.numel()) == (["aten.empty_like.default"] if compute_grad else [])
