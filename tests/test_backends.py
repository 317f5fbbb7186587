"""Backend choice, the compile fallback, the modules, and a property test against float64."""

import pytest
import torch
from helpers import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st

import triton_focal
from triton_focal import backends


def test_available_backends_lists_reference_and_compile():
    names = triton_focal.available_backends("cpu")
    assert names[-2:] == ["compile", "reference"]
    assert ("triton" in names) == (__import__("os").environ.get("TRITON_INTERPRET") == "1")


def test_auto_prefers_the_environment_variable(monkeypatch):
    monkeypatch.setenv("TRITON_FOCAL_BACKEND", "reference")
    assert backends.resolve("auto", torch.device("cpu")) == "reference"
    monkeypatch.delenv("TRITON_FOCAL_BACKEND")
    assert backends.resolve("auto", torch.device("cpu")) == triton_focal.available_backends("cpu")[0]


@pytest.mark.slow
def test_compile_matches_reference_across_batch_sizes():
    # One configuration, compiled once with dynamic shapes, serves both batch sizes.
    for n in (3, 5):
        x = torch.randn(n, 4, 6, 6, requires_grad=True)
        target = torch.randint(0, 4, (n, 6, 6))
        target[0, 0] = -100
        results = {}
        for name in ("compile", "reference"):
            x.grad = None
            loss = triton_focal.focal_loss(x, target, gamma=2.0, alpha=0.25, backend=name)
            loss.backward()
            results[name] = (loss.detach(), x.grad.clone())
        assert_close(results["compile"][0], results["reference"][0], "loss")
        assert_close(results["compile"][1], results["reference"][1], "grad")
    x = torch.randn(50, 7, requires_grad=True)
    t = torch.randint(0, 8, (50,))  # 7 = background
    got = triton_focal.sigmoid_focal_loss(x, t, reduction="mean", backend="compile")
    assert_close(got, triton_focal.sigmoid_focal_loss(x, t, reduction="mean", backend="reference"), "sigmoid loss")


def test_modules_keep_tensor_arguments_as_buffers():
    alpha, weight, gamma = torch.rand(4), torch.rand(4) + 0.5, torch.tensor([0.0, 1.0, 2.0, 3.0])
    module = triton_focal.FocalLoss(gamma=gamma, alpha=alpha, weight=weight, ignore_index=255, backend="reference")
    assert set(dict(module.named_buffers())) == {"gamma", "alpha", "weight"}
    module = module.to(torch.float64)
    assert module.weight.dtype == torch.float64
    assert set(module.state_dict()) == {"gamma", "alpha", "weight"}
    x = torch.randn(2, 4, 3, 3)
    t = torch.randint(0, 4, (2, 3, 3))
    t[0, 0, 0] = 255
    expected = triton_focal.focal_loss(
        x, t, gamma=gamma, alpha=alpha, weight=weight, ignore_index=255, backend="reference"
    )
    assert_close(module(x, t), expected)
    sigmoid = triton_focal.SigmoidFocalLoss(weight=torch.ones(1, 4), reduction="sum", backend="reference")
    assert "weight" in dict(sigmoid.named_buffers())
    assert sigmoid(torch.zeros(2, 4), torch.zeros(2, 4)).item() > 0
    # A normalizer given at call time (the batch's number of positives) overrides the stored one.
    anchors, labels = x[:, :, 0, 0], t[:, 0, 0].clamp(max=3)
    assert_close(sigmoid(anchors, labels, normalizer=4.0), sigmoid(anchors, labels) / 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_modules_move_buffers_to_the_gpu():
    module = triton_focal.FocalLoss(alpha=torch.rand(3), weight=torch.rand(3)).cuda()
    assert module.alpha.is_cuda and module.weight.is_cuda
    x, t = torch.randn(4, 3, device="cuda"), torch.randint(0, 3, (4,), device="cuda")
    assert torch.isfinite(module(x, t))


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 9),
    spatial=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    gamma=st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 5.0]),
    ignore_p=st.floats(0.0, 1.0),
    scale=st.sampled_from([0.1, 1.0, 10.0, 100.0]),
    seed=st.integers(0, 2**16),
)
def test_property_matches_float64(n, c, spatial, gamma, ignore_p, scale, seed):
    """Random shapes, gamma, ignore masks and logit scales: float32 against float64."""
    gen = torch.Generator().manual_seed(seed)
    shape = (n, c, *spatial)
    x = torch.randn(shape, generator=gen) * scale
    target = torch.randint(0, c, (n, *spatial), generator=gen)
    target[torch.rand(target.shape, generator=gen) < ignore_p] = -100
    backend = triton_focal.available_backends("cpu")[0]
    backend = "reference" if backend == "compile" else backend
    x32 = x.clone().requires_grad_(True)
    loss = triton_focal.focal_loss(x32, target, gamma=gamma, backend=backend)
    loss.backward()
    x64 = x.double().requires_grad_(True)
    gold = triton_focal.focal_loss(x64, target, gamma=gamma, backend="reference")
    gold.backward()
    assert_close(loss, gold.float(), "loss", rtol=1e-4, atol=1e-5 * scale)
    assert_close(x32.grad, x64.grad.float(), "grad", rtol=1e-4, atol=1e-5)
