"""The Triton kernels of the vocabulary-parallel steps against the torch statement of the same
steps (``triton_focal/_row_math.py``), which the gloo tests in test_distributed.py check
against the unsharded float64 loss."""

import pytest
import torch
from helpers import DEVICE, assert_close

from triton_focal import _row_math
from triton_focal.ops import vocab_shard

INF = float("inf")


def shard(num_classes, dtype, seed=0):
    """Logits of one shard with a masked class, and local targets: in the shard or -1."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(6, num_classes, generator=gen) * 3).to(device=DEVICE, dtype=dtype)
    x[1, 2 % num_classes] = -INF
    target = torch.tensor([0, 2, -1, num_classes - 1, 3, -1], device=DEVICE) % num_classes
    target[[2, 5]] = -1
    return x, target


# 7 classes: one block; 5000: several 4096-class steps with a masked tail.
@pytest.mark.parametrize("num_classes", [7, 5000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("softcap", [None, 4.0])
def test_statistics(num_classes, dtype, softcap):
    x, target = shard(num_classes, dtype)
    for name, ours, theirs in zip(
        ("m", "s", "s_other", "z_target"),
        vocab_shard.shard_softmax_stats(x, target, softcap),
        _row_math.shard_softmax_stats(x, target, softcap),
    ):
        assert_close(ours, theirs, name, dtype=dtype)


@pytest.mark.parametrize("num_classes", [7, 5000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma,weighted", [(2.0, False), (0.5, True), ("class", False)])
@pytest.mark.parametrize("softcap", [None, 4.0])
def test_smoothing_sums_and_gradient(num_classes, dtype, gamma, weighted, softcap):
    x, target = shard(num_classes, dtype)
    gen = torch.Generator().manual_seed(1)
    gamma = (torch.rand(num_classes, generator=gen, dtype=dtype) * 3).to(DEVICE) if gamma == "class" else gamma
    weight = (torch.rand(num_classes, generator=gen, dtype=dtype) + 0.5).to(DEVICE) if weighted else None
    m, s, _, _ = _row_math.shard_softmax_stats(x, target, softcap)
    lse = m + torch.log(s)
    for ours, theirs in zip(
        vocab_shard.shard_smoothing_sums(x, lse, softcap, gamma, weight),
        _row_math.shard_smoothing_sums(x, lse, softcap, gamma, weight),
    ):
        assert_close(ours, theirs, "smoothing sums", dtype=dtype)
    p_coef, target_coef, smooth_coef = (torch.rand(6, generator=gen, dtype=dtype).to(DEVICE) for _ in range(3))
    for smooth in (None, smooth_coef):
        ours = vocab_shard.shard_focal_grad(x, lse, p_coef, target_coef, smooth, target, softcap, gamma, weight)
        theirs = _row_math.shard_focal_grad(x, lse, p_coef, target_coef, smooth, target, softcap, gamma, weight)
        assert_close(ours, theirs, "gradient", dtype=dtype)


def test_the_triton_backend_runs_the_kernels():
    assert _row_math._shard_function("shard_focal_grad", "triton") is vocab_shard.shard_focal_grad


def test_strided_shard():
    # A shard that is a view with classes two apart (a sliced, transposed buffer).
    x, target = shard(300, torch.float64)
    strided = torch.empty(300, 2, 6, dtype=torch.float64, device=DEVICE)[:, 0].t()
    strided.copy_(x)
    assert strided.stride(1) != 1
    for ours, theirs in zip(
        vocab_shard.shard_softmax_stats(strided, target, None), _row_math.shard_softmax_stats(x, target, None)
    ):
        assert_close(ours, theirs, "statistics of a strided shard")
    m, s, _, _ = _row_math.shard_softmax_stats(x, target, None)
    rows = torch.rand(6, dtype=torch.float64).to(DEVICE)
    ours = vocab_shard.shard_focal_grad(strided, m + torch.log(s), rows, rows, rows, target, None, 2.0, None)
    theirs = _row_math.shard_focal_grad(x, m + torch.log(s), rows, rows, rows, target, None, 2.0, None)
    assert_close(ours, theirs, "gradient of a strided shard")
