"""Who writes the gradient (ops/grad_policy.py): the forward for grad_output == 1, otherwise a
backward that recomputes it; and the in-place rescale of an inplace_grad gradient."""

import pytest
import torch
from helpers import DEVICE, assert_close, assert_same_gradient

import triton_focal
from triton_focal.ops import grad_policy, inplace_grad, sigmoid_focal, softmax_focal
from triton_focal.ops.launch import PersistentGrid


def _launches(monkeypatch, module, name):
    """Record (grad_mode, skip_if_stored) of every launch through ``module.name``."""
    seen = []
    launch = getattr(module, name)

    def spy(*args, **kwargs):
        seen.append((int(kwargs["grad_mode"]), kwargs.get("skip_if_stored", False)))
        return launch(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return seen


def _softmax(x, t):
    return triton_focal.focal_loss(x, t, gamma=2.0, label_smoothing=0.1, backend="triton")


def _sigmoid(x, t):
    return triton_focal.sigmoid_focal_loss(x, t, reduction="mean", backend="triton")


CASES = [
    (
        _softmax,
        softmax_focal,
        "softmax_focal_launch",
        lambda: (torch.randn(3, 7, 5).to(DEVICE), torch.randint(0, 7, (3, 5)).to(DEVICE)),
    ),
    (
        _sigmoid,
        sigmoid_focal,
        "sigmoid_focal_launch",
        lambda: (torch.randn(6, 5).to(DEVICE), torch.randint(0, 6, (6,)).to(DEVICE)),
    ),
]


@pytest.mark.parametrize("loss_fn,module,launcher,make", CASES)
def test_policy_follows_grad_output_on_the_device(monkeypatch, loss_fn, module, launcher, make):
    x, t = make()
    flag = grad_policy.policy_flag(x.device)
    flag.fill_(1)
    reference_grad = None
    for grad_output, stored_expected in [(1.0, 1), (1.0, 1), (2.0, 1), (2.0, 0), (1.0, 0), (1.0, 1)]:
        xt = x.clone().requires_grad_()
        loss = loss_fn(xt, t)
        loss.backward(torch.tensor(grad_output, device=DEVICE))
        # After a backward, the flag says what the next forward will do.
        assert int(flag) == int(grad_output == 1.0)
        if reference_grad is None:
            reference_grad = xt.grad.clone()
        assert_close(xt.grad, reference_grad * grad_output, f"grad_output {grad_output}")
    flag.fill_(1)


@pytest.mark.parametrize("loss_fn,module,launcher,make", CASES)
def test_each_forward_records_whether_it_stored(monkeypatch, loss_fn, module, launcher, make):
    x, t = make()
    flag = grad_policy.policy_flag(x.device)
    stored = []
    launch = getattr(module, launcher)

    def spy(*args, **kwargs):
        out = launch(*args, **kwargs)
        stored.append(int(kwargs["stored"]))
        return out

    monkeypatch.setattr(module, launcher, spy)
    for value in (1, 0):
        flag.fill_(value)
        loss_fn(x.clone().requires_grad_(), t)
    flag.fill_(1)
    assert stored == [1, 0]


@pytest.mark.parametrize("loss_fn,module,launcher,make", CASES)
def test_retained_graph_recomputes_into_a_new_buffer(monkeypatch, loss_fn, module, launcher, make):
    x, t = make()
    grad_policy.policy_flag(x.device).fill_(1)
    xt = x.clone().requires_grad_()
    loss = loss_fn(xt, t)
    (first,) = torch.autograd.grad(loss, xt, retain_graph=True)
    (second,) = torch.autograd.grad(loss, xt, retain_graph=True)
    (last,) = torch.autograd.grad(loss, xt)  # the forward's buffer, graph freed afterwards
    assert torch.equal(first, second)  # both recomputed by a backward
    assert_same_gradient(last, first)
    assert first.data_ptr() != second.data_ptr()


@pytest.mark.parametrize("scale", [1.0, 2.5, 0.0, -3.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_scale_in_place(device, scale, dtype):
    grad = torch.randn(3, 5, 7, device=device).to(dtype)
    expected = (grad.double() * scale).to(dtype)
    inplace_grad._scale_stored_grad_op(grad, torch.tensor(scale, device=device))
    # The interpreter rounds to bfloat16 by truncation, a GPU to nearest: one ulp apart.
    assert_close(grad, expected, "scaled gradient", rtol=2**-7 if dtype == torch.bfloat16 else 0, atol=0)


def test_scale_covers_a_permuted_dense_buffer(device):
    grad = torch.randn(2, 3, 4, 5, device=device).to(memory_format=torch.channels_last)
    expected = grad * 2
    inplace_grad._scale_stored_grad_op(grad, torch.tensor(2.0, device=device))
    assert torch.equal(grad, expected)


def test_scale_opcheck(device):
    torch.library.opcheck(
        inplace_grad._scale_stored_grad_op, (torch.randn(4, 3, 5, device=device), torch.tensor(2.0, device=device))
    )


def test_scale_per_element_and_broadcast_grad_output(device):
    grad = torch.randn(2, 3, 4, device=device)
    grad_output = torch.randn(2, 1, 4, device=device).expand(2, 3, 4)  # stride 0 along classes
    expected = grad * grad_output
    assert torch.equal(inplace_grad.scale_stored_grad(grad.clone(), grad_output), expected)


@pytest.mark.parametrize(
    "shape,options",
    [
        ((2, 7, 3, 5), dict(gamma=2.0)),  # channels-first
        ((5, 300), dict(gamma=0.5, z_loss=1e-3, softcap=4.0, weight="class", alpha=0.25)),  # rows, every option
        ((3, 6, 4), dict(gamma=1.5, reduction="none")),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_statistics_stand_in_for_a_dram_reread(monkeypatch, shape, options, dtype):
    # Where the re-read of the logits would come from DRAM (many classes), the forward saves
    # per-row statistics and a recomputing backward reads them instead of a statistics pass.
    monkeypatch.setattr(PersistentGrid, "rereads_in_l2", lambda self, num_warps, footprint: False)
    seen = []
    launch = softmax_focal.softmax_focal_launch
    monkeypatch.setattr(
        softmax_focal,
        "softmax_focal_launch",
        lambda *a, **k: seen.append(k.get("row_stats") is not None) or launch(*a, **k),
    )
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(shape, generator=gen) * 3).to(device=DEVICE, dtype=dtype)
    target = torch.randint(0, shape[1], shape[:1] + shape[2:], generator=gen).to(DEVICE)
    target.view(-1)[::4] = -100
    if options.get("weight") == "class":
        options = {**options, "weight": (torch.rand(shape[1], generator=gen, dtype=dtype) + 0.5).to(DEVICE)}
    for grad_output in (2.0, 3.0):  # the second step: the forward stored no gradient
        xt, xr = x.clone().requires_grad_(), x.double().clone().requires_grad_()
        loss = triton_focal.focal_loss(xt, target, backend="triton", **options)
        ref = triton_focal.focal_loss(
            xr,
            target,
            backend="reference",
            **{k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in options.items()},
        )
        go = torch.full(loss.shape, grad_output, dtype=loss.dtype, device=DEVICE)
        loss.backward(go)
        ref.backward(go.double())
        assert_close(loss, ref, "loss", dtype=dtype)
        assert_close(xt.grad, xr.grad, "grad", dtype=dtype)
    assert seen and all(seen)
    grad_policy.policy_flag(x.device).fill_(1)


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_recompute_policy_stores_nothing_in_the_forward(device, loss):
    # set_gradient_policy("recompute"): no forward may store its gradient, and the backward
    # recomputes the same gradient as the default policy gives.
    x = torch.randn(6, 5, device=device)
    t = torch.randint(0, 5, (6,), device=device)
    fn = triton_focal.focal_loss if loss == "softmax" else triton_focal.sigmoid_focal_loss

    def gradient():
        leaf = x.clone().requires_grad_(True)
        return torch.autograd.grad(fn(leaf, t, reduction="sum", backend="triton") * 2.0, leaf)[0]

    expected = gradient()
    assert grad_policy.forward_may_store(True, "sum")
    previous = triton_focal.set_gradient_policy("recompute")
    try:
        assert previous == "auto" and triton_focal.gradient_policy() == "recompute"
        assert not grad_policy.forward_may_store(True, "sum")
        got = gradient()
    finally:
        triton_focal.set_gradient_policy(previous)
    assert_close(got, expected)
    with pytest.raises(ValueError, match="policy must be one of"):
        triton_focal.set_gradient_policy("forward")
