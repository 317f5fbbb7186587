"""The one-read softmax kernel (few classes, positions contiguous): which launches take it, and
that it and the class-step kernel give the float64 loss and gradient on the same inputs."""

import pytest
import torch
from helpers import DEVICE

import triton_focal

if "triton" not in triton_focal.available_backends(DEVICE):
    pytest.skip("the Triton backend does not run here", allow_module_level=True)

from triton_focal.ops import softmax_focal as ops  # noqa: E402


def _kernels_used(monkeypatch, x, target, **options):
    used = []
    for name in ("_softmax_focal_kernel", "_softmax_focal_one_read_kernel"):
        kernel = getattr(ops, name)

        class Logged:
            fn = kernel.fn

            def __getitem__(self, grid, kernel=kernel, name=name):
                used.append(name)
                return kernel[grid]

        monkeypatch.setattr(ops, name, Logged())
    triton_focal.focal_loss(x, target, backend="triton", **options)
    return set(used)


@pytest.mark.parametrize(
    "shape,layout,options,kernel",
    [
        ((2, 19, 4, 4), "contiguous", {}, "_softmax_focal_one_read_kernel"),
        ((2, 32, 4, 4), "contiguous", dict(z_loss=1e-3, poly_epsilon=0.5), "_softmax_focal_one_read_kernel"),
        ((2, 33, 4, 4), "contiguous", {}, "_softmax_focal_kernel"),  # more classes than it holds
        ((2, 19, 4, 4), "contiguous", dict(label_smoothing=0.1), "_softmax_focal_kernel"),
        ((2, 19, 4, 4), "contiguous", dict(softcap=5.0), "_softmax_focal_kernel"),
        ((2, 19, 4, 4), "channels_last", {}, "_softmax_focal_kernel"),  # classes contiguous
        ((16, 10), "contiguous", {}, "_softmax_focal_kernel"),  # (N, C) rows
    ],
)
def test_which_kernel(monkeypatch, shape, layout, options, kernel):
    x = torch.randn(shape, device=DEVICE)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    target = torch.randint(0, shape[1], shape[:1] + shape[2:], device=DEVICE)
    assert _kernels_used(monkeypatch, x, target, **options) == {kernel}


def _gold(x, target, grad_output, **options):
    x64 = x.detach().double().requires_grad_()
    opts = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in options.items()}
    loss = triton_focal.focal_loss(x64, target, backend="reference", **opts)
    (loss * grad_output.double()).sum().backward()
    return loss.detach(), x64.grad


@pytest.mark.parametrize("one_read", [True, False], ids=["one_read", "class_steps"])
@pytest.mark.parametrize(
    "classes,options",
    [
        (1, {}),  # p_y = 1: zero loss and gradient
        (2, dict(gamma=0.5)),
        (17, dict(reduction="none")),  # 16 + 1
        (19, dict(gamma="class", alpha="class", weight=True)),
        (24, dict(reduction="sum", z_loss=1e-3, poly_epsilon=0.3)),  # 16 + 8, no masked class
        (32, dict(gamma=0.0)),  # cross entropy
        (5, dict(element_weight=True, normalizer=7.0, reduction="sum")),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("positions", [(5, 7), (16, 32)], ids=["partial_tile", "whole_tiles"])
def test_matches_float64_on_both_kernels(monkeypatch, one_read, classes, options, dtype, positions):
    if not one_read:
        monkeypatch.setattr(ops, "ONE_READ_MAX_CLASSES", 0)
    gen = torch.Generator().manual_seed(classes)
    shape = (2, classes, *positions)  # 35 positions: a partial tile; 512: whole tiles, no mask
    x = (torch.randn(shape, generator=gen) * 4).to(dtype).to(DEVICE)
    target = torch.randint(0, classes, (2, *positions), generator=gen).to(DEVICE)
    target.view(-1)[::3] = -100
    x.view(2, classes, -1)[:, :, ::6] = float("nan")  # NaN logits on ignored positions (0, 6, ...)
    target.view(2, -1)[:, ::6] = -100
    options = dict(options)
    acc = torch.float32
    if options.pop("gamma", None) == "class":
        options["gamma"] = torch.rand(classes, generator=gen, dtype=acc).to(DEVICE) * 3
    elif "gamma" not in options:
        options["gamma"] = 2.0
    if options.pop("alpha", None) == "class":
        options["alpha"] = torch.rand(classes, generator=gen, dtype=acc).to(DEVICE)
    if options.pop("weight", False):
        options["weight"] = torch.rand(classes, generator=gen, dtype=acc).to(DEVICE) + 0.5
    if options.pop("element_weight", False):
        options["element_weight"] = torch.rand(2, *positions, generator=gen).to(DEVICE)
    none = options.get("reduction") == "none"
    grad_output = torch.randn(2, *positions, generator=gen).to(DEVICE) if none else torch.tensor(1.5, device=DEVICE)
    xt = x.detach().clone().requires_grad_()
    loss = triton_focal.focal_loss(xt, target, backend="triton", **options)
    (loss * grad_output).sum().backward()
    expected, expected_grad = _gold(x, target, grad_output, **options)
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss.double(), expected, **tol)
    torch.testing.assert_close(xt.grad.double(), expected_grad, **tol)
    assert torch.isfinite(xt.grad).all()
    assert (xt.grad.view(2, classes, -1)[:, :, ::6] == 0).all()  # ignored NaN rows: zero gradient


def test_out_of_range_target_is_nan_not_a_wrong_number(monkeypatch):
    """With validation skipped (values unknown, as under capture), a bad index gives NaN."""
    from triton_focal import _validation

    monkeypatch.setattr(_validation, "values_known", lambda tensor, validate: False)
    x = torch.randn(1, 4, 8, device=DEVICE, requires_grad=True)
    target = torch.zeros(1, 8, dtype=torch.long, device=DEVICE)
    target[0, 3] = 9
    loss = triton_focal.focal_loss(x, target, backend="triton", reduction="none")
    assert torch.isnan(loss[0, 3]) and torch.isfinite(loss[0, :3]).all()
