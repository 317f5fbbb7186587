"""Shared test helpers: the backends that run here, the per-dtype tolerance table and a verbose
comparison."""

import contextlib
import importlib.metadata
import sys

import torch
import torch.nn.functional as F

import triton_focal

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Every backend that runs here: the reference, the compile fallback, and the Triton kernels
# where they can run (a GPU, or the interpreter on the CPU). The ``backend`` fixture
# (conftest.py) runs a test on each; conftest marks the compile cases slow.
BACKENDS = [name for name in ("reference", "compile", "triton") if name in triton_focal.available_backends(DEVICE)]
# The framework integrations call the public functions; the compile backend behind them is tested
# by the core files (every semantics, edge and error test), so an integration's own tests run the
# eager backends, where one case costs no compilation.
EAGER_BACKENDS = [name for name in BACKENDS if name != "compile"]


def skip_unless_on_cpu(backend):
    """For a test on CPU tensors: skip ``backend`` where it cannot take them (on a machine with
    a GPU the suite does not turn on Triton's interpreter, so the kernels need CUDA tensors)."""
    if backend not in triton_focal.available_backends("cpu"):
        import pytest

        pytest.skip(f"backend {backend!r} cannot run on CPU tensors here")


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


def assert_same_gradient(actual, expected, what="gradient"):
    """Two launches of one kernel that write the same gradient in different modes (the forward
    storing it, a backward recomputing it, in place or not). Under the interpreter they run the
    same arithmetic: bit for bit. Compiled for a GPU they are different specializations, whose
    multiply-adds the compiler may fuse differently (README: "Backends"): equal to rounding."""
    if not actual.is_cuda:
        assert torch.equal(actual, expected), f"{what}: not bit-identical"
        return
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    assert_close(actual, expected, what, rtol=1e-5, atol=1e-6 * scale)


def assert_no_worse_than_torch(actual, torch_result, gold, what="value", slack=1e-3):
    """The low-precision rule: the error against a float64 gold may not exceed the error of
    PyTorch's own computation in the same dtype, plus a small slack."""
    gold = gold.detach().double().cpu()
    ours = (actual.detach().double().cpu() - gold).abs().max().item()
    theirs = (torch_result.detach().double().cpu() - gold).abs().max().item()
    scale = gold.abs().max().item() + 1e-12
    assert ours <= theirs + slack * scale, f"{what}: error {ours:.3e} exceeds PyTorch's {theirs:.3e} (+slack)"


def torchvision_sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0, reduction="none"):
    """torchvision.ops.sigmoid_focal_loss, transcribed from its math (torchvision does not
    always import beside this torch)."""
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


def hide_broken_torchvision():
    """transformers imports torchvision whenever it is installed; one built for another torch
    fails at import. Marked absent, it is skipped by transformers, which needs none of it here."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # a broken build raises RuntimeError or ImportError
        sys.modules["torchvision"] = None


@contextlib.contextmanager
def torchvision_version_if_missing():
    """ultralytics reads torchvision's installed version when imported; where torchvision is
    absent, it reads "0.0" instead (ultralytics needs none of torchvision for these tests)."""
    original = importlib.metadata.version

    def version(name):
        if name == "torchvision":
            try:
                return original(name)
            except importlib.metadata.PackageNotFoundError:
                return "0.0"
        return original(name)

    importlib.metadata.version = version
    try:
        yield
    finally:
        importlib.metadata.version = original
