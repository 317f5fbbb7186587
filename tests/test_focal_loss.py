"""focal_loss against F.cross_entropy (gamma = 0) and independent float64 formulas.

The formulas here are written out from the math, independently of triton_focal.reference,
so that a shared mistake cannot hide. Every test runs on each eager backend (`backend`
fixture: the reference, and the Triton kernels where they can run).
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, assert_same_gradient

import triton_focal


def focal_formula(logits, target, gamma, alpha=None, ignore_index=-100, reduction="mean"):
    """Multi-class focal loss, float64, classes in dimension 1: -alpha[y] (1 - p_y)^gamma log p_y."""
    x = logits.double()
    valid = target != ignore_index
    y = torch.where(valid, target, 0).unsqueeze(1)
    p_y = torch.softmax(x, dim=1).gather(1, y).squeeze(1)
    g = torch.as_tensor(gamma, dtype=torch.float64)
    if g.dim() == 1:
        g = g[y.squeeze(1)]
    loss = -((1 - p_y) ** g) * torch.log(p_y)
    if alpha is not None:
        a = torch.as_tensor(alpha, dtype=torch.float64)
        loss = loss * (a[y.squeeze(1)] if a.dim() == 1 else a)
    loss = torch.where(valid, loss, 0.0)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum().clamp_min(1)


def value_and_grad(fn, x, grad_output=None):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    out.backward(grad_output if grad_output is not None else torch.ones_like(out))
    return out.detach(), x.grad


# Shapes: a single unbatched row, a batch of rows, segmentation 2-D and 3-D; C=3 is below
# any block, 7 is not a power of two.
SHAPES = [(7,), (5, 7), (2, 3, 4, 5), (2, 7, 3, 2, 4)]


def make_inputs(shape, dtype=torch.float64, ignore_fraction=0.2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype) * 3
    num_classes = shape[0] if len(shape) == 1 else shape[1]
    target_shape = () if len(shape) == 1 else shape[:1] + shape[2:]
    target = torch.randint(0, num_classes, target_shape, generator=gen)
    if target.dim() > 0:
        target[torch.rand(target_shape, generator=gen) < ignore_fraction] = num_classes - 1  # a repeated class
        target[torch.rand(target_shape, generator=gen) < ignore_fraction] = -100
    return x, target


@pytest.mark.compile_sample
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize(
    "options", [{}, {"weight": True}, {"label_smoothing": 0.1}, {"weight": True, "label_smoothing": 0.3}]
)
def test_gamma_zero_is_cross_entropy(backend, device, shape, reduction, options):
    x, target = make_inputs(shape)
    x, target = x.to(device), target.to(device)
    num_classes = x.shape[0] if x.dim() == 1 else x.shape[1]
    weight = torch.rand(num_classes, dtype=torch.float64, device=device) + 0.1 if options.get("weight") else None
    smoothing = options.get("label_smoothing", 0.0)
    kwargs = dict(weight=weight, reduction=reduction, label_smoothing=smoothing)
    grad_output = torch.randn(target.shape, dtype=torch.float64, device=device) if reduction == "none" else None
    ours = value_and_grad(
        lambda z: triton_focal.focal_loss(z, target, gamma=0.0, backend=backend, **kwargs), x, grad_output
    )
    theirs = value_and_grad(lambda z: F.cross_entropy(z, target, **kwargs), x, grad_output)
    assert_close(ours[0], theirs[0], "loss", rtol=1e-9, atol=1e-9)
    assert_close(ours[1], theirs[1], "grad", rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gamma_zero_is_cross_entropy_non_contiguous(backend, device, dtype):
    # A channels-last tensor viewed channels-first and a sliced, transposed (N, C): no copy needed.
    seg = torch.randn(2, 4, 6, 5, device=device, dtype=torch.float64).to(dtype).to(memory_format=torch.channels_last)
    rows = torch.randn(7, 12, device=device, dtype=torch.float64).to(dtype).t()[::2]  # (6, 7), strides (2, 12)
    for x in (seg, rows):
        assert not x.is_contiguous()
        target = torch.randint(0, x.shape[1], x.shape[:1] + x.shape[2:], device=device)
        ours = value_and_grad(lambda z: triton_focal.focal_loss(z, target, gamma=0.0, backend=backend), x)
        gold = value_and_grad(lambda z: F.cross_entropy(z, target), x.double())
        assert_close(ours[0], gold[0].to(dtype), "loss", dtype=dtype)
        assert_close(ours[1], gold[1].to(dtype), "grad", dtype=dtype)


@pytest.mark.compile_sample
@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("alpha", [None, 0.25, "per-class"])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_matches_float64_formula(backend, device, gamma, alpha, reduction):
    x, target = make_inputs((3, 5, 4, 3))
    x, target = x.to(device), target.to(device)
    if alpha == "per-class":
        alpha = torch.tensor([0.1, 0.9, 0.5, 0.3, 2.0], dtype=torch.float64, device=device)
    grad_output = torch.randn(target.shape, dtype=torch.float64, device=device) if reduction == "none" else None
    ours = value_and_grad(
        lambda z: triton_focal.focal_loss(z, target, gamma=gamma, alpha=alpha, reduction=reduction, backend=backend),
        x,
        grad_output,
    )
    gold = value_and_grad(lambda z: focal_formula(z, target, gamma, alpha, reduction=reduction), x, grad_output)
    assert_close(ours[0], gold[0], "loss", rtol=1e-9, atol=1e-10)
    assert_close(ours[1], gold[1], "grad", rtol=1e-9, atol=1e-10)


def test_per_class_gamma(backend, device):
    x, target = make_inputs((6, 4))
    x, target = x.to(device), target.to(device)
    gamma = torch.tensor([0.0, 0.5, 2.0, 5.0], device=device)
    ours = value_and_grad(lambda z: triton_focal.focal_loss(z, target, gamma=gamma, backend=backend), x)
    gold = value_and_grad(lambda z: focal_formula(z, target, gamma.double()), x)
    assert_close(ours[0], gold[0], "loss", rtol=1e-7, atol=1e-9)
    assert_close(ours[1], gold[1], "grad", rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_against_float64(backend, device, dtype):
    x, target = make_inputs((2, 6, 5, 4), dtype=dtype)
    x, target = x.to(device), target.to(device)
    ours = value_and_grad(lambda z: triton_focal.focal_loss(z, target, gamma=2.0, backend=backend), x)
    gold = value_and_grad(lambda z: focal_formula(z, target, 2.0), x.double())
    assert ours[0].dtype == dtype and ours[1].dtype == dtype
    assert_close(ours[0], gold[0], "loss", dtype=dtype)
    assert_close(ours[1], gold[1], "grad", dtype=dtype)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_gradcheck(backend, device, gamma):
    x, target = make_inputs((3, 4, 2, 2))
    x, target = x.to(device), target.to(device)
    assert (target == -100).any()
    weight = torch.rand(4, dtype=torch.float64, device=device) + 0.5
    for reduction in ("none", "mean"):
        fn = lambda z: triton_focal.focal_loss(  # noqa: E731
            z, target, gamma=gamma, alpha=0.3, weight=weight, label_smoothing=0.1, reduction=reduction, backend=backend
        )
        assert torch.autograd.gradcheck(fn, (x.requires_grad_(True),), eps=1e-6, atol=1e-5)


# The formulas of widely used implementations, written out from their math.


def test_tf_sparse_categorical_focal_loss(backend, device):
    # TF focal-loss SparseCategoricalFocalLoss(gamma): -(1 - p_y)^gamma log p_y, batch mean.
    x, target = make_inputs((16, 10), ignore_fraction=0.0)
    x, target = x.to(device), target.to(device)
    p = torch.softmax(x, dim=-1)
    p_y = p[torch.arange(16), target]
    expected = (-((1 - p_y) ** 2.0) * torch.log(p_y)).mean()
    assert_close(triton_focal.focal_loss(x, target, gamma=2.0, backend=backend), expected, rtol=1e-9, atol=1e-12)


def test_binary_bce_focal_with_alpha_t(backend, device):
    # The binary snippet: bce = BCEWithLogits; p_t = exp(-bce); alpha_t (1 - p_t)^gamma bce, mean.
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, generator=gen, dtype=torch.float64).to(device) * 4
    t = (torch.rand(64, 3, generator=gen) < 0.3).double().to(device)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = torch.exp(-bce)
    alpha_t = 0.25 * t + 0.75 * (1 - t)
    expected = (alpha_t * (1 - p_t) ** 2 * bce).mean()
    ours = triton_focal.sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0, reduction="mean", backend=backend)
    assert_close(ours, expected, rtol=1e-9, atol=1e-12)


def test_multiclass_focal_alpha_indexed_by_target(backend, device):
    # -alpha[targets] (1 - p_y)^gamma log p_y, summed.
    x, target = make_inputs((20, 6), ignore_fraction=0.0)
    x, target = x.to(device), target.to(device)
    alpha = torch.tensor([0.5, 1.0, 2.0, 0.25, 1.5, 0.75], dtype=torch.float64, device=device)
    log_p = torch.log_softmax(x, dim=1)[torch.arange(20), target]
    expected = (-alpha[target] * (1 - log_p.exp()) ** 1.5 * log_p).sum()
    ours = triton_focal.focal_loss(x, target, gamma=1.5, alpha=alpha, reduction="sum", backend=backend)
    assert_close(ours, expected, rtol=1e-9, atol=1e-12)


def test_detection_class_alpha_convention(backend, device):
    # (B, N, C) detection logits with alpha = [a, 1-a, 1-a, ...] (background class 0 gets a):
    # classes are last, so they are passed as a (B, C, N) view.
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 50, 5, generator=gen, dtype=torch.float64).to(device)
    target = torch.randint(0, 5, (2, 50), generator=gen).to(device)
    a = 0.25
    alpha = torch.tensor([a] + [1 - a] * 4, dtype=torch.float64, device=device)
    p_y = torch.softmax(logits, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    expected = (-alpha[target] * (1 - p_y) ** 2 * torch.log(p_y)).mean()
    ours = triton_focal.focal_loss(logits.permute(0, 2, 1), target, alpha=alpha, backend=backend)
    assert_close(ours, expected, rtol=1e-9, atol=1e-12)


# Edge cases.

EXTREMES = {torch.float32: 1e4, torch.float64: 1e4, torch.float16: 6e4, torch.bfloat16: 1e4}


@pytest.mark.compile_sample
@pytest.mark.parametrize("dtype", list(EXTREMES))
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 5.0])
def test_extreme_logits_are_finite(backend, device, dtype, gamma):
    big = EXTREMES[dtype]
    # Right and wrong confident predictions, a tie, uniform logits, and p_t exactly 0 or 1 in
    # floating point; no logit gap exceeds `big`, so the loss itself fits the dtype.
    x = torch.tensor(
        [[big, 0.0, 0.0], [0.0, big, 0.0], [big, big, 0.0], [0.0, 0.0, 0.0], [-big, 0.0, -big]], dtype=dtype
    ).to(device)
    target = torch.tensor([0, 0, 1, 2, 1], device=device)
    x.requires_grad_(True)
    loss = triton_focal.focal_loss(x, target, gamma=gamma, reduction="none", label_smoothing=0.1, backend=backend)
    loss.sum().backward()
    assert torch.isfinite(loss).all(), loss
    assert torch.isfinite(x.grad).all(), x.grad
    # A wrong confident prediction costs about its logit gap.
    assert loss[1].float() > 0.9 * big


def test_all_ignored_mean_is_zero_with_zero_grad(backend, device):
    x = torch.randn(4, 3, 5, device=device, requires_grad=True)
    target = torch.full((4, 5), -100, device=device)
    loss = triton_focal.focal_loss(x, target, backend=backend)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_empty_batch(backend, device):
    x = torch.randn(0, 4, 3, device=device, requires_grad=True)
    target = torch.zeros(0, 3, dtype=torch.long, device=device)
    assert triton_focal.focal_loss(x, target, reduction="none", backend=backend).shape == (0, 3)
    for reduction in ("mean", "sum"):
        loss = triton_focal.focal_loss(x, target, reduction=reduction, backend=backend)
        loss.backward()
        assert loss.item() == 0.0 and x.grad.shape == x.shape


def test_nan_input_gives_nan_for_that_element(backend, device):
    x = torch.randn(3, 4, device=device)
    x[1, 2] = float("nan")
    loss = triton_focal.focal_loss(x, torch.tensor([0, 1, 2], device=device), reduction="none", backend=backend)
    assert torch.isnan(loss[1]) and torch.isfinite(loss[[0, 2]]).all()


def test_reruns_are_bit_identical(backend, device):
    x, target = make_inputs((4, 9, 8, 8), dtype=torch.float32)
    x, target = x.to(device), target.to(device)
    first = value_and_grad(lambda z: triton_focal.focal_loss(z, target, backend=backend), x)
    second = value_and_grad(lambda z: triton_focal.focal_loss(z, target, backend=backend), x)
    third = value_and_grad(lambda z: triton_focal.focal_loss(z, target, backend=backend), x)
    # The first call may write its gradient in another mode than the later ones (the gradient
    # policy settles on the first backward): the same formula; from then on, the same bits.
    assert torch.equal(first[0], second[0])
    assert_same_gradient(first[1], second[1])
    assert torch.equal(second[0], third[0]) and torch.equal(second[1], third[1])
