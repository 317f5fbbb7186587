"""Reliability of the autograd wiring on every backend: second derivatives are right or
refused (never a silent 0), torch.func.grad works, the in-place gradient works through the
public API for every rank, and the fused linear head survives a retained graph and an
empty batch.

Gold values: the float64 reference for first derivatives, and central differences of that
gradient for Hessian-vector products (independent of any double backward).
"""

import re

import pytest
import torch
from helpers import DEVICE, assert_close

import triton_focal

pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")

# The settings of tests/test_reliability.py's shared case, so the compile backend reuses
# its compilation (gamma=2, label smoothing 0.1, a class weight, mean over float32 rows).
SOFTMAX_CASE = dict(gamma=2.0, label_smoothing=0.1)
SIGMOID_CASE = dict(gamma=2.0, alpha=0.25, reduction="mean")
# A refusal must say what was refused.
DOUBLE_BACKWARD_REFUSAL = re.compile(r"double backward|second derivative|create_graph|differentiate twice", re.I)


def softmax_loss(x, backend, weight):
    target = torch.tensor([0, 2, 4, -100, 1, 3], device=x.device)[: x.shape[0]]
    return triton_focal.focal_loss(x, target, weight=weight, backend=backend, **SOFTMAX_CASE)


def sigmoid_loss(x, backend, weight):
    target = torch.tensor([0, 5, 4, -100, 1, 3], device=x.device)[: x.shape[0]]  # 5 = background
    return triton_focal.sigmoid_focal_loss(x, target, backend=backend, **SIGMOID_CASE)


LOSSES = {"softmax": softmax_loss, "sigmoid": sigmoid_loss}


def gold_gradient(loss_fn, x, weight):
    """The float64 reference gradient."""
    x = x.detach().double().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(x, "reference", weight.double()), x)
    return grad


def gold_hvp(loss_fn, x, v, weight, step=1e-5):
    """``H v`` by central differences of the float64 reference gradient."""
    x, v = x.detach().double(), v.double()
    return (gold_gradient(loss_fn, x + step * v, weight) - gold_gradient(loss_fn, x - step * v, weight)) / (2 * step)


def hvp_or_refusal(loss, x, v):
    """``H v`` through ``loss``, or None where the backend refused with a clear error.

    The ``0 * x`` term keeps the second backward possible even when the first gradient has
    no graph: a backend that silently drops its part then returns 0, and the comparison fails.
    """
    try:
        (grad,) = torch.autograd.grad(loss, x, create_graph=True)
        (hvp,) = torch.autograd.grad((grad * v).sum() + (0 * x).sum(), x)
    except (RuntimeError, NotImplementedError) as err:
        assert DOUBLE_BACKWARD_REFUSAL.search(str(err)), f"unclear refusal of a second derivative: {err}"
        return None
    return hvp


def inputs(seed=0, num_classes=5):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(6, num_classes, generator=gen) * 2
    v = torch.randn(6, num_classes, generator=gen)
    weight = torch.rand(num_classes, generator=gen) + 0.5
    return x.to(DEVICE), v.to(DEVICE), weight.to(DEVICE)


# second derivatives and torch.func --------------------------------------------------------


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_hessian_vector_product_is_right_or_refused(backend, kind):
    loss_fn = LOSSES[kind]
    x, v, weight = inputs()
    x.requires_grad_(True)
    hvp = hvp_or_refusal(loss_fn(x, backend, weight), x, v)
    if backend == "reference":
        assert hvp is not None, "the reference must compute second derivatives"
    if hvp is not None:
        assert_close(hvp, gold_hvp(loss_fn, x, v, weight), "Hessian-vector product", dtype=torch.float32, atol=1e-5)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_torch_func_grad(backend, kind):
    loss_fn = LOSSES[kind]
    x, _, weight = inputs()
    grad = torch.func.grad(lambda z: loss_fn(z, backend, weight))(x)
    assert_close(grad, gold_gradient(loss_fn, x, weight), "torch.func.grad", dtype=torch.float32)


# the in-place gradient through the public API ---------------------------------------------


@pytest.mark.compile_sample
@pytest.mark.parametrize("shape", [(5,), (4, 5), (2, 5, 3), (2, 5, 3, 2)], ids=["C", "NC", "NCL", "NCHW"])
@pytest.mark.parametrize("api", ["focal_loss", "FocalLoss"])
def test_inplace_grad_through_the_public_api(backend, api, shape):
    """``inplace_grad=True`` on a network's output (a non-leaf) of every rank: the gradient
    that reaches the network is the reference's (other backends ignore the flag)."""
    gen = torch.Generator().manual_seed(5)
    weights = torch.randn(shape, generator=gen).to(DEVICE).requires_grad_(True)
    target = torch.randint(0, 5, shape[:1] + shape[2:] if len(shape) > 1 else (), generator=gen).to(DEVICE)
    logits = weights * 2.0  # what a network hands the loss: a non-leaf
    if api == "FocalLoss":
        loss = triton_focal.FocalLoss(gamma=2.0, backend=backend, inplace_grad=True)(logits, target)
    else:
        loss = triton_focal.focal_loss(logits, target, gamma=2.0, backend=backend, inplace_grad=True)
    loss.backward()

    gold_weights = weights.detach().double().requires_grad_(True)
    gold = triton_focal.focal_loss(gold_weights * 2.0, target, gamma=2.0, backend="reference")
    gold.backward()
    assert_close(loss, gold, "loss", dtype=torch.float32)
    assert_close(weights.grad, gold_weights.grad, "grad", dtype=torch.float32)


# the fused linear head --------------------------------------------------------------------

FUSED_CASE = dict(gamma=2.0, label_smoothing=0.1)


def fused_inputs(tokens=7, hidden_size=4, vocab=9, seed=6):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, hidden_size, generator=gen, dtype=torch.float64)
    lm_weight = torch.randn(vocab, hidden_size, generator=gen, dtype=torch.float64)
    bias = torch.randn(vocab, generator=gen, dtype=torch.float64)
    target = torch.randint(0, vocab, (tokens,), generator=gen)
    target[::3] = -100
    return [t.to(DEVICE) for t in (hidden, lm_weight, bias, target)]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fused_linear_second_backward_with_retained_graph(backend, reduction):
    hidden, lm_weight, bias, target = fused_inputs()
    params = [t.requires_grad_(True) for t in (hidden, lm_weight, bias)]
    loss = triton_focal.fused_linear_focal_loss(
        hidden, lm_weight, target, bias, chunk_size=3, reduction=reduction, backend=backend, **FUSED_CASE
    )
    grad_output = torch.rand_like(loss) + 0.5
    first = torch.autograd.grad(loss, params, grad_output, retain_graph=True)
    second = torch.autograd.grad(loss, params, 2 * grad_output)
    for name, a, b in zip(("hidden", "lm_weight", "bias"), first, second):
        assert_close(b, 2 * a, f"grad of {name} on the second backward")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fused_linear_empty_batch(backend, reduction):
    """No tokens: the loss focal_loss gives (0, or no rows) and zero gradients."""
    hidden, lm_weight, bias, target = fused_inputs(tokens=0)
    params = [t.requires_grad_(True) for t in (hidden, lm_weight, bias)]
    loss = triton_focal.fused_linear_focal_loss(hidden, lm_weight, target, bias, reduction=reduction, backend=backend)
    expected = triton_focal.focal_loss(hidden @ lm_weight.t() + bias, target, reduction=reduction, backend="reference")
    assert loss.shape == expected.shape and (loss == 0).all()
    grads = torch.autograd.grad(loss.sum(), params)
    for param, grad in zip(params, grads):
        assert grad.shape == param.shape and (grad == 0).all()


def test_fused_linear_mean_with_zero_denominator(backend):
    """Every present class weighted 0, with label smoothing: 0 and zero gradients, as focal_loss."""
    hidden, lm_weight, bias, target = fused_inputs()
    weight = torch.ones(lm_weight.shape[0], dtype=torch.float64, device=DEVICE)
    weight[target[target >= 0]] = 0
    params = [t.requires_grad_(True) for t in (hidden, lm_weight, bias)]
    loss = triton_focal.fused_linear_focal_loss(
        hidden, lm_weight, target, bias, weight=weight, backend=backend, **FUSED_CASE
    )
    assert loss.item() == 0.0
    assert all((grad == 0).all() for grad in torch.autograd.grad(loss, params))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_fused_linear_hessian_vector_product(backend, reduction):
    """create_graph=True through the fused head: the gradients can be differentiated again,
    and give the Hessian-vector product of the materialized logits' loss."""
    hidden, lm_weight, bias, target = fused_inputs()
    gen = torch.Generator().manual_seed(7)
    directions = [
        torch.randn(t.shape, generator=gen, dtype=torch.float64).to(DEVICE) for t in (hidden, lm_weight, bias)
    ]
    grad_output = torch.rand(hidden.shape[0] if reduction == "none" else (), generator=gen, dtype=torch.float64).to(
        DEVICE
    )

    def gradients(params, create_graph, fused=True):
        hidden, lm_weight, bias = params
        if fused:
            loss = triton_focal.fused_linear_focal_loss(
                hidden, lm_weight, target, bias, chunk_size=3, reduction=reduction, backend=backend, **FUSED_CASE
            )
        else:
            loss = triton_focal.focal_loss(
                hidden @ lm_weight.t() + bias, target, reduction=reduction, backend="reference", **FUSED_CASE
            )
        return torch.autograd.grad(loss, params, grad_output, create_graph=create_graph)

    params = [t.clone().requires_grad_(True) for t in (hidden, lm_weight, bias)]
    grads = gradients(params, create_graph=True)
    assert all(g.requires_grad for g in grads), "create_graph=True gave gradients that cannot be differentiated"
    hvp = torch.autograd.grad(sum((g * d).sum() for g, d in zip(grads, directions)), params)

    step = 1e-6
    plus = gradients(
        [(t + step * d).requires_grad_(True) for t, d in zip((hidden, lm_weight, bias), directions)], False, False
    )
    minus = gradients(
        [(t - step * d).requires_grad_(True) for t, d in zip((hidden, lm_weight, bias), directions)], False, False
    )
    for name, got, p, m in zip(("hidden", "lm_weight", "bias"), hvp, plus, minus):
        assert_close(got, (p - m) / (2 * step), f"Hessian-vector product, {name} block", rtol=1e-6, atol=1e-7)
