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

from triton_focal.sigmoid_term import SigmoidTerm

pytest.importorskip("triton")
from triton_focal.ops import sigmoid_focal, softmax_focal  # noqa: E402
from triton_focal.ops.launch import PersistentGrid  # noqa: E402


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


@pytest.mark.parametrize("store_grad", [True, False])
@pytest.mark.parametrize("shape", [(2, 19, 128), (16, 300, 1)])  # channels-first; rows
def test_softmax_forward_allocates_only_the_gradient(device, store_grad, shape):
    x = torch.randn(shape, device=device)
    # The per-program partial sums are sized by the GPU, not the logits: keep them smaller.
    assert PersistentGrid.for_device(x.device).max_programs < x.numel()
    target = torch.randint(0, shape[1], (shape[0], shape[2]), device=device)
    weight = torch.rand(shape[1], device=device)
    options = (None, 2.0, None, 0.25, weight, -100, "mean", 0.1, 0.0, None)
    with AllocationRecorder() as recorder:
        softmax_focal._forward_op._init_fn(x, target, store_grad, True, *options)  # the op body, not the op
    assert recorder.logits_sized(x.numel()) == (["aten.empty_like.default"] if store_grad else [])


@pytest.mark.parametrize("store_grad", [True, False])
def test_sigmoid_forward_allocates_only_the_gradient(device, store_grad):
    x = torch.randn(64, 80, device=device).unsqueeze(2)
    target = torch.randint(0, 81, (64, 1), device=device)
    weight = torch.rand(64, 1, 1, device=device).expand_as(x)  # per anchor, never expanded in memory
    with AllocationRecorder() as recorder:
        sigmoid_focal._forward_op._init_fn(
            x,
            target,
            None,
            None,
            None,
            weight,
            None,
            SigmoidTerm("focal", alpha=0.25, gamma=2.0).encode(),
            -100,
            "sum",
            store_grad,
        )
    assert recorder.logits_sized(x.numel()) == (["aten.empty_like.default"] if store_grad else [])


@pytest.mark.parametrize("grad_output", [1.0, 2.0])
@pytest.mark.parametrize("inplace_grad", [False, True])
def test_softmax_forward_and_backward_allocate_one_gradient(device, inplace_grad, grad_output):
    # The whole training step through the op: one logits-sized tensor, the gradient, whoever
    # writes it (the forward, or a backward that recomputes it); none at all with inplace_grad.
    leaf = torch.randn(2, 19, 40, device=device, requires_grad=True)
    target = torch.randint(0, 19, (2, 40), device=device)
    logits = leaf.clone()  # a non-leaf, so the in-place gradient may overwrite it
    with AllocationRecorder() as recorder:
        loss = softmax_focal.softmax_focal_loss(
            logits,
            target,
            gamma=2.0,
            alpha=None,
            weight=None,
            ignore_index=-100,
            reduction="mean",
            label_smoothing=0.0,
            inplace_grad=inplace_grad,
        )
        (grad,) = torch.autograd.grad(loss, leaf, torch.tensor(grad_output, device=device))
    expected = [] if inplace_grad else ["triton_focal.softmax_focal_fwd.default"]
    assert recorder.logits_sized(logits.numel()) == expected
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_is_dense_reads_strides_only(layout):
    from triton_focal.ops.inplace_grad import is_dense

    x = torch.empty(2, 3, 4, 5)
    view = {"contiguous": x, "channels_last": x.to(memory_format=torch.channels_last), "transposed": x.transpose(1, 3)}[
        layout
    ]
    assert is_dense(view)
    assert not is_dense(x[:, :2]) and not is_dense(torch.empty(3, 1).expand(3, 4))


@pytest.mark.parametrize("grad_output", [1.0, 0.5])
def test_sigmoid_forward_and_backward_allocate_one_gradient(device, grad_output):
    leaf = torch.randn(64, 80, 1, device=device, requires_grad=True)
    logits = leaf.clone()
    target = torch.randint(0, 81, (64, 1), device=device)
    with AllocationRecorder() as recorder:
        loss = sigmoid_focal.sigmoid_focal_loss(
            logits, target, alpha=0.25, gamma=2.0, weight=None, ignore_index=-100, reduction="sum", normalizer=None
        )
        (grad,) = torch.autograd.grad(loss, leaf, torch.tensor(grad_output, device=device))
    assert recorder.logits_sized(logits.numel()) == ["triton_focal.sigmoid_focal_fwd.default"]
    assert torch.isfinite(grad).all()
