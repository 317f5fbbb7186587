"""Shared test helpers: the per-dtype tolerance table and a verbose comparison."""

import torch

# Tolerances for a backend's result against the float64 reference, by input dtype.
# Low-precision inputs are also held to the "no worse than PyTorch" rule in
# assert_no_worse_than_torch.
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=2e-5, atol=2e-6),
    torch.float16: dict(rtol=1e-2, atol=1e-3),
    torch.bfloat16: dict(rtol=2e-2, atol=1e-2),
}


def assert_close(actual, expected, what="value", dtype=None, **overrides):
    """torch.testing.assert_close with the dtype's tolerance and the worst element named."""
    dtype = dtype or actual.dtype
    tol = {**TOLERANCES[dtype], **overrides}
    actual_f = actual.detach().double().cpu()
    expected_f = expected.detach().double().cpu()
    assert actual_f.shape == expected_f.shape, f"{what}: shape {tuple(actual_f.shape)} != {tuple(expected_f.shape)}"
    try:
        torch.testing.assert_close(actual_f, expected_f, equal_nan=True, **tol)
    except AssertionError as err:
        diff = (actual_f - expected_f).abs().nan_to_num(float("inf"))
        worst = int(diff.flatten().argmax()) if diff.numel() else 0
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), diff.shape)) if diff.dim() else ()
        raise AssertionError(
            f"{what} mismatch ({dtype}): worst at {index}: got {actual_f.flatten()[worst].item()!r}, "
            f"expected {expected_f.flatten()[worst].item()!r}\n{err}"
        ) from None


def assert_no_worse_than_torch(actual, torch_result, gold, what="value", slack=1e-3):
    """The low-precision rule: the error against a float64 gold may not exceed the error of
    PyTorch's own computation in the same dtype, plus a small slack."""
    gold = gold.detach().double().cpu()
    ours = (actual.detach().double().cpu() - gold).abs().max().item()
    theirs = (torch_result.detach().double().cpu() - gold).abs().max().item()
    scale = gold.abs().max().item() + 1e-12
    assert ours <= theirs + slack * scale, f"{what}: error {ours:.3e} exceeds PyTorch's {theirs:.3e} (+slack)"
