"""The reductions inside the launches: the mean's divisors from one kernel over the targets,
and the loss total added by a launch's last program (no torch op around the kernels)."""

import pytest
import torch
from helpers import DEVICE

import triton_focal
from triton_focal.ops.denominators import target_denominators
from triton_focal.ops.launch import PersistentGrid
from triton_focal.ops.workspace import ticket_counter


@pytest.mark.parametrize("shape", [(1, 1), (7, 1), (1, 5000), (3, 700), (2, 1, 9)])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_divisors_match_torch(shape, dtype):
    g = torch.Generator().manual_seed(0)
    classes = 6
    target = torch.randint(0, classes + 1, shape, generator=g).to(device=DEVICE, dtype=dtype)
    target = target.view(shape[0], -1)
    ignore = classes  # an index the dtype holds, so some elements are ignored
    weight = torch.rand(classes, generator=g, dtype=torch.float64).to(DEVICE)
    valid = target != ignore
    expected_weighted = torch.where(valid, weight[target.long().clamp(max=classes - 1)], 0.0).sum()
    got = target_denominators(target, weight, ignore, classes, dtype=torch.float64)
    torch.testing.assert_close(got, torch.stack([expected_weighted, valid.sum().double()]))
    got = target_denominators(target, None, ignore, classes, dtype=torch.float32, scale=classes)
    assert got.tolist() == [valid.sum().item() * classes] * 2


def test_divisors_of_a_grid_smaller_than_the_tiles(monkeypatch):
    """The persistent grid walks several tiles a program (a GPU's grid for millions of pixels),
    across rows of targets, with class and per-element weights."""
    monkeypatch.setattr(PersistentGrid, "programs", lambda self, num_tiles, *a, **k: min(num_tiles, 2))
    g = torch.Generator().manual_seed(1)
    classes = 5
    target = torch.randint(-1, classes, (3, 2500), generator=g).to(DEVICE)  # 9 tiles, -1 ignored
    weight = torch.rand(classes, generator=g, dtype=torch.float64).to(DEVICE)
    v = torch.rand(3, 2500, generator=g, dtype=torch.float64).to(DEVICE)
    valid = target != -1
    w_y = torch.where(valid, weight[target.clamp(min=0)], 0.0)
    got = target_denominators(target, weight, -1, classes, dtype=torch.float64, element_weight=v)
    torch.testing.assert_close(got, torch.stack([(v * w_y).sum(), torch.where(valid, v, 0.0).sum()]))
    got = target_denominators(target, None, -1, classes, dtype=torch.float32)
    assert got.tolist() == [valid.sum().item()] * 2


def test_divisor_of_nothing_is_one_where_asked():
    target = torch.full((2, 40), -100, device=DEVICE)
    assert target_denominators(target, None, -100, 3, dtype=torch.float32).tolist() == [0.0, 0.0]
    assert target_denominators(target, None, -100, 3, dtype=torch.float32, zero_as_one=True).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_totals_are_bit_identical_across_runs_and_leave_the_counter_at_zero(loss):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 9, 300, generator=g).to(DEVICE)
    if loss == "softmax":
        target = torch.randint(0, 9, (4, 300), generator=g).to(DEVICE)
        run = lambda: triton_focal.focal_loss(x, target, backend="triton")  # noqa: E731
        reference = triton_focal.focal_loss(x.double(), target, backend="reference")
    else:
        target = torch.randint(0, 10, (4 * 300,), generator=g).to(DEVICE)
        flat = x.permute(0, 2, 1).reshape(-1, 9)
        run = lambda: triton_focal.sigmoid_focal_loss(flat, target, backend="triton", reduction="mean")  # noqa: E731
        reference = triton_focal.sigmoid_focal_loss(flat.double(), target, backend="reference", reduction="mean")
    first, second = run(), run()
    assert torch.equal(first, second)
    torch.testing.assert_close(first.double(), reference, rtol=1e-5, atol=1e-6)
    assert ticket_counter(x.device).item() == 0


def test_bfloat16_total_rounds_to_nearest():
    # the interpreter truncates float32 -> bfloat16; the total is rounded first, as a GPU does
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(32, 10, 4, generator=g) * 3).to(device=DEVICE, dtype=torch.bfloat16)
    target = (torch.rand(32, 10, 4, generator=g) < 0.2).float().to(DEVICE)
    got = triton_focal.sigmoid_focal_loss(x, target, backend="triton", reduction="mean")
    exact = triton_focal.sigmoid_focal_loss(x.double(), target.double(), backend="reference", reduction="mean")
    assert got == exact.to(torch.bfloat16)
