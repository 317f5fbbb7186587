"""fused_linear_focal_loss equals focal_loss of the materialized logits, value and gradients."""

import pytest
import torch
from helpers import assert_close

import triton_focal


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_materialized_logits(backend, device, reduction, with_bias):
    gen = torch.Generator().manual_seed(0)
    tokens, hidden_size, vocab = 37, 16, 50  # 37 rows in chunks of 8: a ragged last chunk
    hidden = torch.randn(tokens, hidden_size, generator=gen, dtype=torch.float64).to(device).requires_grad_(True)
    lm_weight = torch.randn(vocab, hidden_size, generator=gen, dtype=torch.float64).to(device).requires_grad_(True)
    bias = torch.randn(vocab, generator=gen, dtype=torch.float64).to(device).requires_grad_(True) if with_bias else None
    target = torch.randint(0, vocab, (tokens,), generator=gen).to(device)
    target[::5] = -100
    kwargs = dict(
        gamma=1.5,
        weight=torch.rand(vocab, dtype=torch.float64, device=device) + 0.1,
        label_smoothing=0.1,
        reduction=reduction,
        backend=backend,
    )
    params = [p for p in (hidden, lm_weight, bias) if p is not None]

    fused = triton_focal.fused_linear_focal_loss(hidden, lm_weight, target, bias, chunk_size=8, **kwargs)
    grad_output = torch.randn_like(fused)
    fused_grads = torch.autograd.grad(fused, params, grad_output)
    logits = hidden @ lm_weight.t() + (bias if bias is not None else 0)
    plain = triton_focal.focal_loss(logits, target, **kwargs)
    plain_grads = torch.autograd.grad(plain, params, grad_output)

    assert_close(fused, plain, "loss", rtol=1e-9, atol=1e-12)
    for name, got, expected in zip(("hidden", "lm_weight", "bias"), fused_grads, plain_grads):
        assert_close(got, expected, f"grad of {name}", rtol=1e-9, atol=1e-12)


def test_each_call_gets_its_own_gamma(backend, device):
    """The row steps take a float gamma at run time: a later call with another gamma gets its own
    (torch 2.13's Inductor kept the first call's exponent in ``q ** gamma`` where the compiled
    graph used gamma again; the steps' powers are ``exp(gamma * log q)``)."""
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(12, 8, generator=gen, dtype=torch.float64).to(device)
    lm_weight = torch.randn(30, 8, generator=gen, dtype=torch.float64).to(device)
    target = torch.randint(0, 30, (12,), generator=gen).to(device)
    for gamma in (2.0, 0.5, 0.0):
        kwargs = dict(gamma=gamma, label_smoothing=0.1, reduction="none")
        fused = triton_focal.fused_linear_focal_loss(hidden, lm_weight, target, backend=backend, **kwargs)
        plain = triton_focal.focal_loss(hidden @ lm_weight.t(), target, backend="reference", **kwargs)
        assert_close(fused, plain, f"loss at gamma={gamma}", rtol=1e-9, atol=1e-12)


def test_rejects_mismatched_shapes():
    hidden, target = torch.randn(4, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="lm_weight"):
        triton_focal.fused_linear_focal_loss(hidden, torch.randn(10, 7), target)
    with pytest.raises(ValueError, match="bias"):
        triton_focal.fused_linear_focal_loss(hidden, torch.randn(10, 8), target, torch.randn(9))
    with pytest.raises(ValueError, match="target shape"):
        triton_focal.fused_linear_focal_loss(hidden, torch.randn(10, 8), torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match="unexpected keyword"):
        triton_focal.fused_linear_focal_loss(hidden, torch.randn(10, 8), target, gama=2.0)
