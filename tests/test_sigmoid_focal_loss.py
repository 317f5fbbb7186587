"""sigmoid_focal_loss and FL* against the torchvision formula and the one-hot form."""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, torchvision_sigmoid_focal_loss

import triton_focal


def grad_of(fn, x, grad_output=None):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    out.backward(torch.ones_like(out) if grad_output is None else grad_output)
    return out.detach(), x.grad


def detection_inputs(shape=(12, 5), seed=0, soft=False):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    t = torch.rand(shape, generator=gen, dtype=torch.float64)
    t = t if soft else (t < 0.3).double()
    return x, t


@pytest.mark.compile_sample
@pytest.mark.parametrize("alpha", [0.25, 0.5, -1.0])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("soft", [False, True])
def test_dense_matches_torchvision(backend, device, alpha, gamma, reduction, soft):
    x, t = (v.to(device) for v in detection_inputs(soft=soft))
    g = torch.randn_like(x) if reduction == "none" else None
    ours = grad_of(
        lambda z: triton_focal.sigmoid_focal_loss(z, t, alpha=alpha, gamma=gamma, reduction=reduction, backend=backend),
        x,
        g,
    )
    theirs = grad_of(lambda z: torchvision_sigmoid_focal_loss(z, t, alpha, gamma, reduction), x, g)
    assert_close(ours[0], theirs[0], "loss", rtol=1e-9, atol=1e-12)
    assert_close(ours[1], theirs[1], "grad", rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("shape", [(10, 4), (2, 3, 4, 5)])  # detection (N, C) and a channels-first heatmap
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_class_index_equals_one_hot(backend, device, shape, reduction):
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2).to(device)
    num_classes = shape[1]
    target = torch.randint(0, num_classes + 1, shape[:1] + shape[2:], generator=gen).to(device)  # C = background
    target.view(-1)[::4] = -100  # ignored rows
    valid = target != -100
    one_hot = F.one_hot(target.clamp(0), num_classes + 1)[..., :num_classes].movedim(-1, 1).double()
    row_mask = valid.unsqueeze(1).expand_as(x)

    def dense(z):
        loss = torch.where(row_mask, torchvision_sigmoid_focal_loss(z, one_hot), 0.0)
        return {"none": loss, "sum": loss.sum(), "mean": loss.sum() / row_mask.sum()}[reduction]

    g = torch.randn_like(x) if reduction == "none" else None
    ours = grad_of(lambda z: triton_focal.sigmoid_focal_loss(z, target, reduction=reduction, backend=backend), x, g)
    theirs = grad_of(dense, x, g)
    assert_close(ours[0], theirs[0], "loss", rtol=1e-9, atol=1e-12)
    assert_close(ours[1], theirs[1], "grad", rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("weight_shape", [(12, 1), (5,), (12, 5)])  # per anchor, per class, per element
def test_weight_broadcasts(backend, device, weight_shape):
    x, t = (v.to(device) for v in detection_inputs())
    weight = torch.rand(weight_shape, dtype=torch.float64, device=device)
    ours = triton_focal.sigmoid_focal_loss(x, t, weight=weight, reduction="sum", backend=backend)
    assert_close(ours, (torchvision_sigmoid_focal_loss(x, t) * weight).sum(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_normalizer_divides_the_sum(backend, device, as_tensor):
    x, t = (v.to(device) for v in detection_inputs())
    num_pos = t.sum()
    normalizer = num_pos if as_tensor else float(num_pos)
    ours = grad_of(
        lambda z: triton_focal.sigmoid_focal_loss(z, t, reduction="sum", normalizer=normalizer, backend=backend), x
    )
    theirs = grad_of(lambda z: torchvision_sigmoid_focal_loss(z, t, reduction="sum") / num_pos, x)
    assert_close(ours[0], theirs[0], "loss", rtol=1e-9, atol=1e-12)
    assert_close(ours[1], theirs[1], "grad", rtol=1e-9, atol=1e-12)


def test_per_class_gamma(backend, device):
    x, t = (v.to(device) for v in detection_inputs())
    gamma = torch.tensor([0.0, 0.5, 1.0, 2.0, 5.0], device=device)
    expected = torch.cat(
        [torchvision_sigmoid_focal_loss(x[:, c], t[:, c], gamma=float(gamma[c])).unsqueeze(1) for c in range(5)], 1
    )
    assert_close(triton_focal.sigmoid_focal_loss(x, t, gamma=gamma, backend=backend), expected, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("alpha", [-1.0, 0.25])
@pytest.mark.parametrize("gamma", [1.0, 3.0])
def test_fl_star(backend, device, alpha, gamma):
    x, t = (v.to(device) for v in detection_inputs())

    def formula(z):
        loss = -F.logsigmoid(gamma * z * (2 * t - 1)) / gamma
        return loss * (alpha * t + (1 - alpha) * (1 - t)) if alpha >= 0 else loss

    ours = grad_of(lambda z: triton_focal.sigmoid_focal_loss_star(z, t, alpha=alpha, gamma=gamma, backend=backend), x)
    theirs = grad_of(formula, x)
    assert_close(ours[0], theirs[0], "loss", rtol=1e-9, atol=1e-12)
    assert_close(ours[1], theirs[1], "grad", rtol=1e-9, atol=1e-12)


@pytest.mark.compile_sample
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_extreme_logits(backend, device, dtype, gamma):
    big = 6e4 if dtype == torch.float16 else 1e4
    x = torch.tensor([[100.0, -100.0, big, -big]], dtype=dtype, device=device, requires_grad=True)
    t = torch.tensor([[1.0, 0.0, 1.0, 0.0]], dtype=dtype, device=device)
    loss = triton_focal.sigmoid_focal_loss(x, t, gamma=gamma, backend=backend)
    loss.sum().backward()
    # The right label at +-100 costs nothing: exactly 0, or a float32 subnormal (e**-100 = 3.7e-44).
    assert (loss.float().abs() < torch.finfo(torch.float32).tiny).all(), loss
    assert torch.isfinite(x.grad).all()
    wrong = triton_focal.sigmoid_focal_loss(x.detach(), 1 - t, gamma=gamma, alpha=-1.0, backend=backend)
    assert torch.isfinite(wrong).all() and (wrong.float()[0, :2] > 99).all()


def test_gradcheck(backend, device):
    x, t = (v.to(device) for v in detection_inputs((4, 3)))
    target = torch.tensor([0, 3, -100, 2], device=device)
    weight = torch.rand(4, 1, dtype=torch.float64, device=device)
    for tgt in (t, target):
        fn = lambda z: triton_focal.sigmoid_focal_loss(
            z, tgt, gamma=0.5, weight=weight, reduction="mean", backend=backend
        )  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x.requires_grad_(True),), eps=1e-6, atol=1e-5)


def test_all_ignored_mean_is_zero(backend, device):
    x = torch.randn(3, 4, device=device, requires_grad=True)
    loss = triton_focal.sigmoid_focal_loss(x, torch.full((3,), -100, device=device), reduction="mean", backend=backend)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))
