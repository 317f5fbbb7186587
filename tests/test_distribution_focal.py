"""Distribution Focal Loss (GFL / YOLOv8 DFL) on every backend, against mmdet's formula written
out in float64, and against ultralytics' ``DFLoss`` / ``BboxLoss`` where ultralytics imports.

Shapes are small (the Triton interpreter costs about a second per 10^6 elements) and chosen for
what they exercise:

* ``(2, 6, 4, 16)``: YOLOv8's ``(B, A, 4, reg_max)`` layout, 48 rows of 16 bins (a power of two,
  no padded bins), fewer rows than one tile;
* ``(40, 17)``: GFL's ``reg_max + 1 = 17`` bins, padded to 32 in the kernel, rows not 16-byte
  aligned;
* ``(300, 16)`` where the row count matters: more than one tile (128 rows of 16 bins), a last
  tile cut short.

The compile backend compiles each configuration (seconds on a CPU), so it runs a few of them.
"""

import importlib.metadata
import math
import os
import tempfile

import pytest
import torch
import torch.nn.functional as F
from helpers import BACKENDS, TOLERANCES, assert_close

import triton_focal
from triton_focal import backends

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ALL_BACKENDS = BACKENDS  # every backend that runs here (helpers.BACKENDS)
EAGER_BACKENDS = [name for name in ALL_BACKENDS if name != "compile"]
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


# --- the gold: mmdet's distribution_focal_loss, float64 ------------------------------------


def mmdet_dfl(pred, label):
    """mmdet ``mmdet/models/losses/gfocal_loss.py: distribution_focal_loss``, transcribed, with the
    package's edge: ``dis_left`` is at most ``n - 2``, so ``y = n - 1`` puts its whole weight on
    the last bin (mmdet would index bin ``n``)."""
    dis_left = label.long().clamp(max=pred.shape[-1] - 2)
    dis_right = dis_left + 1
    weight_left = dis_right.to(label.dtype) - label
    weight_right = label - dis_left.to(label.dtype)
    return (
        F.cross_entropy(pred, dis_left, reduction="none") * weight_left
        + F.cross_entropy(pred, dis_right, reduction="none") * weight_right
    )


def gold(x, t, *, mask=None, weight=None, reduction="mean", normalizer=None):
    """The loss in float64 from the logits as given (rounded to their dtype), and the expectation."""
    x64 = x.detach().double().requires_grad_()
    rows = x64.reshape(-1, x.shape[-1])
    y = t.detach().double().reshape(-1)
    keep = torch.ones_like(y, dtype=torch.bool) if mask is None else mask.reshape(-1)
    loss = mmdet_dfl(torch.where(keep[:, None], rows, 0.0), torch.where(keep, y, 0.0))
    if weight is not None:
        loss = loss * weight.double().expand(t.shape).reshape(-1)
    loss = torch.where(keep, loss, 0.0)
    if reduction == "none":
        loss = loss.reshape(t.shape)
    elif normalizer is not None:
        loss = loss.sum() / normalizer
    elif reduction == "sum":
        loss = loss.sum()
    else:
        loss = loss.sum() / keep.sum().clamp(min=1)
    bins = torch.arange(x.shape[-1], dtype=torch.float64, device=x.device)
    expectation = torch.where(keep, (rows.softmax(-1) * bins).sum(-1), 0.0).reshape(t.shape)
    return x64, loss, expectation


def inputs(shape=(2, 6, 4, 16), dtype=torch.float32, seed=0, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    x = (scale * torch.randn(shape, generator=gen)).to(dtype).to(DEVICE)
    t = (torch.rand(shape[:-1], generator=gen) * (shape[-1] - 1)).to(DEVICE)
    mask = (torch.rand(shape[:-1], generator=gen) > 0.3).to(DEVICE)
    return x, t, mask


def tolerance(dtype):
    # The loss of a bf16/fp16 input is one rounding of a float32 result: the dtype's table.
    return TOLERANCES[dtype]


def run(backend, x, t, grad_output=None, **kwargs):
    """Loss (and expectation) and the logits' gradient for ``grad_output`` (1 if None)."""
    x = x.detach().clone().requires_grad_()
    out = triton_focal.distribution_focal_loss(x, t, backend=backend, **kwargs)
    loss = out[0] if isinstance(out, tuple) else out
    loss.backward(torch.ones_like(loss) if grad_output is None else grad_output)
    return out, x.grad


# --- values and gradients ------------------------------------------------------------------

# Every dtype on the eager backends; the compile backend compiles per dtype, so two of them.
DTYPE_CASES = [(b, d) for b in EAGER_BACKENDS for d in DTYPES] + [
    ("compile", d) for d in (torch.float32, torch.bfloat16) if "compile" in ALL_BACKENDS
]


@pytest.mark.parametrize("backend,dtype", DTYPE_CASES, ids=[f"{b}-{str(d)[6:]}" for b, d in DTYPE_CASES])
def test_matches_mmdet_formula(backend, dtype):
    """mmdet's formula, YOLOv8's layout: a mask, a per-anchor weight, ``sum / normalizer``, and
    ``loss * 2`` (a ``grad_output`` that is not 1)."""
    x, t, mask = inputs(dtype=dtype)
    weight = torch.rand(2, 6, 1, device=DEVICE)
    kwargs = dict(mask=mask, weight=weight, reduction="sum", normalizer=7.0)
    loss, grad = run(backend, x, t, torch.tensor(2.0, device=DEVICE), **kwargs)
    x64, expected, _ = gold(x, t, **kwargs)
    (expected * 2).backward()
    assert loss.dtype == dtype and grad.dtype == dtype
    assert_close(loss, expected, "loss", dtype)
    assert_close(grad, x64.grad, "gradient", dtype)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_reductions_with_random_grad_output(backend, reduction):
    """``"none"`` against a random, non-contiguous ``grad_output``; ``"mean"`` over the unmasked
    rows, rows beyond one tile (300)."""
    x, t, mask = inputs((300, 16), seed=1)
    grad_output = None
    if reduction == "none":
        grad_output = torch.randn(600, device=DEVICE)[::2]  # stride 2
    loss, grad = run(backend, x, t, grad_output, mask=mask, reduction=reduction)
    x64, expected, _ = gold(x, t, mask=mask, reduction=reduction)
    expected.backward(grad_output.double() if grad_output is not None else None)
    assert_close(loss, expected, "loss")
    assert_close(grad, x64.grad, "gradient")


@pytest.mark.skipif("triton" not in EAGER_BACKENDS, reason="the Triton backend cannot run here")
def test_programs_that_walk_many_tiles(monkeypatch):
    """A persistent grid smaller than the tiles (on a GPU, any batch beyond 2112 tiles): each
    program walks several tiles and sums them; reruns are bit-identical."""
    from triton_focal.ops.launch import PersistentGrid

    monkeypatch.setattr(PersistentGrid, "programs", lambda self, num_tiles, *args: min(2, num_tiles))
    x, t, mask = inputs((700, 16), seed=19)  # 6 tiles of 128 rows
    first, grad = run("triton", x, t, mask=mask, reduction="sum")
    again, _ = run("triton", x, t, mask=mask, reduction="sum")
    x64, expected, _ = gold(x, t, mask=mask, reduction="sum")
    expected.backward()
    assert_close(first, expected, "loss")
    assert_close(grad, x64.grad, "gradient")
    assert torch.equal(first, again)


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
def test_seventeen_bins_and_a_stride_zero_grad_output(backend):
    """GFL's 17 bins (padded to 32 in the kernel), ``reduction="none"`` summed (``grad_output``
    expanded, stride 0), a full ``(R,)`` weight."""
    x, t, _ = inputs((40, 17), seed=2)
    weight = torch.rand(40, device=DEVICE)
    loss, grad = run(backend, x, t, torch.ones((), device=DEVICE).expand(40), weight=weight, reduction="none")
    x64, expected, _ = gold(x, t, weight=weight, reduction="none")
    expected.sum().backward()
    assert_close(loss, expected, "loss")
    assert_close(grad, x64.grad, "gradient")


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
def test_a_weight_shared_by_many_rows(backend):
    """A per-image weight ``(B, 1, 1)`` over ``A * 4 = 24`` rows: more rows per weight than the
    kernel divides by a constant, so it divides at run time."""
    x, t, mask = inputs(seed=3)
    weight = torch.rand(2, 1, 1, device=DEVICE)
    loss, grad = run(backend, x, t, mask=mask, weight=weight, reduction="sum")
    x64, expected, _ = gold(x, t, mask=mask, weight=weight, reduction="sum")
    expected.backward()
    assert_close(loss, expected, "loss")
    assert_close(grad, x64.grad, "gradient")


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
def test_non_contiguous_input(backend):
    """Bins strided (a transposed ``(n, R)`` buffer) and rows cut out of a wider buffer."""
    gen = torch.Generator().manual_seed(4)
    transposed = torch.randn(16, 30, generator=gen).to(DEVICE).t()  # (30, 16), bins at stride 30
    wide = torch.randn(2, 6, 4, 20, generator=gen).to(DEVICE)[..., 2:18]  # rows at stride 20
    for x in (transposed, wide):
        t = (torch.rand(x.shape[:-1], generator=gen) * 15).to(DEVICE)
        loss, grad = run(backend, x, t, reduction="sum")
        x64, expected, _ = gold(x, t, reduction="sum")
        expected.backward()
        assert_close(loss, expected, "loss")
        assert_close(grad, x64.grad, "gradient")


# --- the expectation -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_expectation_values_and_gradient(backend):
    """``(loss, E)`` from one call: ``E = sum_j j softmax(x)_j``, 0 on masked rows; the gradient
    against both cotangents, and against the expectation's alone."""
    x, t, mask = inputs(seed=5)
    g_loss = torch.randn(2, 6, 4, device=DEVICE)
    g_exp = torch.randn(2, 6, 4, device=DEVICE)
    for use_loss in (True, False):
        xg = x.detach().clone().requires_grad_()
        loss, expectation = triton_focal.distribution_focal_loss(
            xg, t, mask=mask, reduction="none", return_expectation=True, backend=backend
        )
        total = (expectation * g_exp).sum() + ((loss * g_loss).sum() if use_loss else 0)
        total.backward()
        x64, expected, expected_e = gold(x, t, mask=mask, reduction="none")
        ((expected_e * g_exp.double()).sum() + ((expected * g_loss.double()).sum() if use_loss else 0)).backward()
        assert expectation.shape == t.shape
        assert_close(expectation, expected_e, "expectation")
        assert torch.all(expectation[~mask] == 0)
        assert_close(loss, expected, "loss")
        assert_close(xg.grad, x64.grad, "gradient")


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
def test_expectation_with_a_reduced_loss(backend):
    """A ``"mean"`` loss and its expectation: the loss's 0-dim cotangent and the expectation's
    per-row one meet in one backward."""
    x, t, _ = inputs(seed=6)
    xg = x.detach().clone().requires_grad_()
    loss, expectation = triton_focal.distribution_focal_loss(xg, t, return_expectation=True, backend=backend)
    (3 * loss + expectation.sum()).backward()
    x64, expected, expected_e = gold(x, t)
    (3 * expected + expected_e.sum()).backward()
    assert_close(loss, expected, "loss")
    assert_close(xg.grad, x64.grad, "gradient")


# --- edges ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_edge_positions(backend):
    """y = 0, integer y (the left bin takes it all), y = n - 1 (the last bin takes it all), and
    just below n - 1: the loss is continuous there."""
    n = 16
    x = torch.randn(6, n, generator=torch.Generator().manual_seed(7)).to(DEVICE)
    t = torch.tensor([0.0, 3.0, 7.5, n - 1.0, n - 1 - 1e-6, 14.0], device=DEVICE)
    loss, grad = run(backend, x, t, reduction="none")
    ce = -x.double().log_softmax(-1)
    assert_close(loss[0], ce[0, 0], "y = 0")
    assert_close(loss[1], ce[1, 3], "integer y")
    assert_close(loss[3], ce[3, n - 1], "y = n - 1")
    assert_close(loss[5], ce[5, 14], "y = n - 2")
    x64, expected, _ = gold(x, t, reduction="none")
    expected.sum().backward()
    assert_close(loss, expected, "loss")
    assert_close(grad, x64.grad, "gradient")
    # Continuity at n - 1: the same row at n - 1 and just below.
    same = torch.stack([x[3], x[3]])
    near, _ = run(backend, same, torch.tensor([n - 1.0, n - 1 - 1e-4], device=DEVICE), reduction="none")
    assert abs(near[0].item() - near[1].item()) < 1e-3


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
def test_masked_rows_are_not_read(backend):
    """NaN logits and targets (and targets out of range) on masked rows: finite loss, zero
    gradient there, left out of the mean."""
    x, t, mask = inputs(seed=8)
    x, t = x.clone(), t.clone()
    x[~mask] = float("nan")
    t[~mask] = float("nan")
    t[~mask & (torch.arange(4, device=DEVICE) == 0)] = 99.0
    (loss, expectation), grad = run(backend, x, t, mask=mask, return_expectation=True)
    assert torch.isfinite(loss) and torch.isfinite(expectation).all() and torch.isfinite(grad).all()
    assert torch.all(grad[~mask] == 0)
    clean = torch.where(mask[..., None], x, 0.0)
    x64, expected, _ = gold(clean, torch.where(mask, t, 0.0), mask=mask)
    expected.backward()
    assert_close(loss, expected, "loss")
    assert_close(grad, x64.grad, "gradient")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_all_masked_and_empty(backend):
    """Every row masked: the mean of nothing is 0 with a zero gradient (the sum too); an empty
    input: 0, an empty ``"none"`` loss and an empty gradient."""
    x, t, mask = inputs(seed=9)
    none = torch.zeros_like(mask)
    for reduction in ("mean", "sum"):
        loss, grad = run(backend, x, t, mask=none, reduction=reduction)
        assert loss.item() == 0 and torch.all(grad == 0)
    for reduction in ("mean", "sum", "none"):
        empty = torch.randn(0, 4, 16, device=DEVICE)
        (loss, expectation), grad = run(
            backend, empty, torch.zeros(0, 4, device=DEVICE), reduction=reduction, return_expectation=True
        )
        assert grad.shape == empty.shape and expectation.shape == (0, 4)
        assert loss.shape == ((0, 4) if reduction == "none" else ()) and (reduction == "none" or loss.item() == 0)


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_saturated_logits_stay_finite(backend, dtype):
    """Logits of +-1e4 in half precision: a finite loss (large where the target bin is at
    -1e4), a finite gradient and expectation; and the float64 gold's values."""
    gen = torch.Generator().manual_seed(10)
    x = (1e4 * torch.sign(torch.randn(48, 16, generator=gen))).to(dtype).to(DEVICE)
    t = (torch.rand(48, generator=gen) * 15).to(DEVICE)
    t[:8] = torch.arange(8.0, device=DEVICE)  # integer positions: one bin with all the weight
    (loss, expectation), grad = run(backend, x, t, reduction="none", return_expectation=True)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all() and torch.isfinite(expectation).all()
    x64, expected, expected_e = gold(x, t, reduction="none")
    expected.sum().backward()
    assert_close(loss, expected, "loss", rtol=1e-2, atol=1.0)  # losses up to 2e4
    assert_close(grad, x64.grad, "gradient")
    assert_close(expectation, expected_e, "expectation", atol=0.1)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_minus_inf_bins(backend):
    """A ``-inf`` bin has no mass and no gradient; at a bin of weight 0 (an integer target's
    right bin) it adds 0, not NaN; at a bin that carries weight the loss is inf, as CE's."""
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(11)).to(DEVICE)
    x[:, 10:] = float("-inf")
    x[2, 4] = float("-inf")  # row 2's right bin, weight 0 (y = 3)
    t = torch.tensor([2.5, 9.0, 3.0, 0.25], device=DEVICE)
    (loss, expectation), grad = run(backend, x, t, reduction="none", return_expectation=True)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all() and torch.isfinite(expectation).all()
    assert torch.all(grad[:, 10:] == 0)
    x64, expected, expected_e = gold(torch.where(torch.isinf(x), -1e30, x), t, reduction="none")
    expected.sum().backward()
    assert_close(loss, expected, "loss")
    assert_close(grad, x64.grad, "gradient")
    assert_close(expectation, expected_e, "expectation")
    x[0, 3] = float("-inf")  # row 0's right bin, weight 0.5
    assert torch.isinf(triton_focal.distribution_focal_loss(x, t, reduction="none", backend=backend)[0])


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
def test_normalizer(backend):
    """A number and a 0-dim tensor that requires grad (it gets ``-sum / normalizer ** 2``)."""
    x, t, mask = inputs(seed=12)
    normalizer = torch.tensor(5.0, device=DEVICE, requires_grad=True)
    xg = x.detach().clone().requires_grad_()
    loss = triton_focal.distribution_focal_loss(xg, t, mask=mask, normalizer=normalizer, backend=backend)
    loss.backward()
    x64, expected, _ = gold(x, t, mask=mask, reduction="sum")
    assert_close(loss, expected / 5, "loss")
    assert_close(normalizer.grad, -expected.detach() / 25, "normalizer gradient")
    by_number = triton_focal.distribution_focal_loss(x, t, mask=mask, normalizer=5, backend=backend)
    assert_close(by_number, expected / 5, "loss")


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
def test_gradcheck(backend):
    """float64 gradcheck of the loss and the expectation together, a mask and a weight."""
    x, t, mask = inputs((3, 2, 8), dtype=torch.float64, seed=13)
    weight = torch.rand(3, 1, dtype=torch.float64, device=DEVICE)
    x.requires_grad_()

    def both(x):
        return triton_focal.distribution_focal_loss(
            x, t, mask=mask, weight=weight, return_expectation=True, reduction="sum", backend=backend
        )

    assert torch.autograd.gradcheck(both, (x,))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_out_of_range_targets_poison_their_rows_where_not_checked(backend):
    """On the GPU without ``validate`` nothing checks the targets: such a row's loss, gradient
    and expectation are NaN on every backend (called here below the validation)."""
    xg = torch.randn(4, 16, device=DEVICE).requires_grad_()
    t = torch.tensor([1.5, -0.5, 15.5, float("nan")], device=DEVICE)
    loss, expectation = backends.load(backend).distribution_focal_loss(
        xg, t, mask=None, weight=None, reduction="none", normalizer=None, return_expectation=True
    )
    loss.sum().backward()
    assert torch.isfinite(loss[0]) and torch.isnan(loss[1:]).all()
    assert torch.isnan(expectation[1:]).all() and torch.isnan(xg.grad[1:]).all()


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change,error,message",
    [
        (dict(target=torch.rand(2, 6, 4, 16)), ValueError, "target shape"),
        (dict(target=torch.rand(48)), ValueError, r"target.reshape\(\(2, 6, 4\)\)"),
        (dict(target=torch.full((2, 6, 4), 15.5)), ValueError, r"positions in \[0, n - 1\] = \[0, 15\]"),
        (dict(target=torch.full((2, 6, 4), -1.0)), ValueError, "clamp it first"),
        (dict(target=torch.full((2, 6, 4), float("nan"))), ValueError, "target must hold positions"),
        (dict(target=torch.zeros(2, 6, 4, dtype=torch.long)), TypeError, r"target.float\(\)"),
        (dict(input=torch.randn(2, 6, 4, 1), target=torch.zeros(2, 6, 4)), ValueError, "at least 2 bins"),
        (dict(input=torch.randn(2, 6, 4, 16).long()), TypeError, "input must be"),
        (dict(input=torch.tensor(1.0), target=torch.tensor(0.0)), ValueError, r"bin logits \(\.\.\., n\)"),
        (dict(mask=torch.ones(2, 6, 4, dtype=torch.uint8)), TypeError, r"mask must be a bool.*mask.bool\(\)"),
        (dict(mask=torch.ones(2, 6, 1, dtype=torch.bool)), ValueError, "mask shape"),
        (dict(weight=torch.rand(2, 6, 3)), ValueError, "weight shape"),
        (dict(weight=torch.full((2, 6, 1), -1.0)), ValueError, "weight must be finite and non-negative"),
        (dict(weight=[1.0]), TypeError, "weight must be a float tensor"),
        (dict(reduction="avg"), ValueError, "reduction"),
        (dict(reduction="none", normalizer=2.0), ValueError, "normalizer"),
        (dict(normalizer=0.0), ValueError, "normalizer"),
        (dict(return_expectation=1), TypeError, "return_expectation"),
        (dict(backend="cuda"), ValueError, "backend"),
    ],
)
def test_bad_arguments_name_themselves(change, error, message):
    args = dict(input=torch.randn(2, 6, 4, 16), target=torch.rand(2, 6, 4) * 15)
    args.update(change)
    with pytest.raises(error, match=message):
        triton_focal.distribution_focal_loss(args.pop("input"), args.pop("target"), **args)


def test_masked_targets_are_not_checked():
    t = torch.full((2, 6, 4), 99.0)
    mask = torch.zeros(2, 6, 4, dtype=torch.bool)
    assert triton_focal.distribution_focal_loss(torch.randn(2, 6, 4, 16), t, mask=mask, backend="reference") == 0


def test_learnable_weight_is_refused_off_the_reference():
    weight = torch.rand(2, 6, 1, device=DEVICE, requires_grad=True)
    x, t, _ = inputs()
    if "triton" in EAGER_BACKENDS:
        with pytest.raises(ValueError, match="weight requires grad"):
            triton_focal.distribution_focal_loss(x, t, weight=weight, backend="triton")
    triton_focal.distribution_focal_loss(x, t, weight=weight, backend="reference").backward()
    assert weight.grad is not None


def test_module():
    with pytest.raises(TypeError, match="keyword arguments only.*reduction='sum'"):
        triton_focal.DistributionFocalLoss("sum")
    with pytest.raises(ValueError, match="reduction"):
        triton_focal.DistributionFocalLoss(reduction="avg")
    criterion = triton_focal.DistributionFocalLoss(
        reduction="sum", normalizer=torch.tensor(4.0, device=DEVICE), backend="reference"
    )
    assert "reduction='sum'" in repr(criterion) and "normalizer=tensor(4)" in repr(criterion)
    assert "normalizer" in criterion.state_dict()
    x, t, mask = inputs()
    loss, expectation = criterion(x, t, mask=mask, return_expectation=True)
    _, expected, expected_e = gold(x, t, mask=mask, reduction="sum", normalizer=4.0)
    assert_close(loss, expected, "loss")
    assert_close(expectation, expected_e, "expectation")
    assert_close(criterion(x, t, mask=mask, normalizer=2.0), expected * 2, "loss, normalizer in forward")


@pytest.mark.skipif("triton" not in EAGER_BACKENDS, reason="the Triton backend cannot run here")
def test_triton_under_torch_compile_fullgraph():
    """The Triton op inside a user's ``torch.compile(fullgraph=True)``: loss and expectation,
    the gradient against both."""
    x, t, mask = inputs(seed=14)

    def step(x):
        loss, expectation = triton_focal.distribution_focal_loss(
            x, t, mask=mask, reduction="sum", return_expectation=True, backend="triton"
        )
        return loss + (expectation * expectation).sum()

    xg = x.detach().clone().requires_grad_()
    torch.compile(step, fullgraph=True)(xg).backward()
    xe = x.detach().clone().requires_grad_()
    step(xe).backward()
    assert_close(xg.grad, xe.grad, "gradient")


@pytest.mark.skipif("triton" not in EAGER_BACKENDS, reason="the Triton backend cannot run here")
def test_opcheck():
    """The ops as a traced graph runs them (the forward stores no gradient): masked mean with a
    grouped weight, a normalizer tensor or number with the expectation, ``"none"``; the backward
    against either cotangent or both."""
    from triton_focal.ops import distribution_focal as ops

    x, t, mask = inputs((12, 16), seed=17)
    x.requires_grad_()
    weight = torch.rand(3, 1, device=DEVICE).expand(3, 4)
    for args in [
        (x, t, mask, weight, None, None, "mean", False, False),
        (x, t, None, None, torch.tensor(3.0, device=DEVICE), None, "sum", True, False),
        (x, t, mask, None, None, 2.0, "sum", True, False),
        (x, t, None, weight, None, None, "none", True, False),
    ]:
        torch.library.opcheck(ops._forward_op, args)
    x = x.detach()
    count = ops._count_divisor(x, mask, None, None, "mean")
    rows = torch.rand(12, device=DEVICE)
    for args in [
        (torch.rand((), device=DEVICE), None, x, t, mask, weight, None, None, count, "mean"),
        (None, rows, x, t, None, weight, torch.tensor(2.0, device=DEVICE), None, x.new_empty(0), "sum"),
        (rows, rows, x, t, None, None, None, None, x.new_empty(0), "none"),
    ]:
        torch.library.opcheck(ops._backward_op, args)


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
def test_second_derivatives_and_torch_func(backend):
    """``create_graph=True`` (a Hessian-vector product through loss and expectation) and
    ``torch.func.grad`` give the reference's values."""
    x, t, mask = inputs((12, 16), seed=18)

    def hvp(name):
        xg = x.detach().clone().requires_grad_()
        loss, expectation = triton_focal.distribution_focal_loss(
            xg, t, mask=mask, return_expectation=True, backend=name
        )
        (grad,) = torch.autograd.grad(loss + expectation.sum(), xg, create_graph=True)
        return torch.autograd.grad((grad * grad).sum(), xg)[0]

    assert_close(hvp(backend), hvp("reference"), "Hessian-vector product")
    grad = torch.func.grad(lambda x: triton_focal.distribution_focal_loss(x, t, mask=mask, backend=backend))(x)
    _, expected = run("reference", x, t, mask=mask)
    assert_close(grad, expected, "torch.func.grad")


# --- ultralytics ---------------------------------------------------------------------------


def _import_ultralytics_loss():
    """ultralytics' loss module, or a skip. It reads torchvision's version when imported and
    needs none of torchvision for a loss: where torchvision is missing, that lookup says "0.0"
    (as tests/test_integration_ultralytics.py does)."""
    original = importlib.metadata.version

    def version(name):
        if name == "torchvision":
            try:
                return original(name)
            except importlib.metadata.PackageNotFoundError:
                return "0.0"
        return original(name)

    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="ultralytics-config-"))
    os.environ.setdefault("YOLO_VERBOSE", "False")
    importlib.metadata.version = version
    try:
        return pytest.importorskip("ultralytics.utils.loss")
    except Exception as err:  # an install that fails otherwise skips with its reason
        pytest.skip(f"ultralytics does not import: {type(err).__name__}: {err}")
    finally:
        importlib.metadata.version = original


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
def test_matches_ultralytics(backend):
    """``DFLoss`` per anchor (its clamp to ``n - 1.01`` passed explicitly), and ``BboxLoss``'s DFL
    term over the foreground anchors as one masked call, values and gradients."""
    loss_module = _import_ultralytics_loss()
    from ultralytics.utils.tal import bbox2dist

    n, batch, anchors = 16, 2, 6
    x, _, fg = inputs((batch, anchors, 4, n), seed=15)
    fg = fg[..., 0]
    t = (torch.rand(batch, anchors, 4) * 17 - 1).to(DEVICE)  # beyond [0, n - 1] on both sides: the clamp decides

    theirs_x = x.detach().clone().requires_grad_()
    theirs = loss_module.DFLoss(n)(theirs_x.view(-1, n), t.clone().view(-1, 4)).view(batch, anchors)
    theirs.sum().backward()
    ours_x = x.detach().clone().requires_grad_()
    ours = triton_focal.distribution_focal_loss(ours_x, t.clamp(0, n - 1.01), reduction="none", backend=backend)
    ours.mean(-1).sum().backward()
    assert_close(ours.mean(-1), theirs, "DFLoss")
    assert_close(ours_x.grad, theirs_x.grad, "DFLoss gradient")

    # BboxLoss: anchors, boxes and scores; its loss_dfl only (the IoU term is not ours).
    gen = torch.Generator().manual_seed(16)
    anchor_points = (torch.rand(anchors, 2, generator=gen) * 20).to(DEVICE)
    centers = anchor_points.expand(batch, anchors, 2) + torch.randn(batch, anchors, 2, generator=gen).to(DEVICE)
    sizes = (torch.rand(batch, anchors, 2, generator=gen) * 20 + 1).to(DEVICE)
    target_bboxes = torch.cat([centers - sizes / 2, centers + sizes / 2], -1)
    target_scores = torch.rand(batch, anchors, 3, generator=gen).to(DEVICE)
    target_scores_sum = target_scores.sum()
    box_x = x.detach().clone().requires_grad_()
    pred_bboxes = torch.cat([anchor_points - 1, anchor_points + 1], -1).expand(batch, anchors, 4)
    _, loss_dfl = loss_module.BboxLoss(n)(
        box_x.view(batch, anchors, 4 * n),
        pred_bboxes,
        anchor_points,
        target_bboxes,
        target_scores,
        target_scores_sum,
        fg,
        torch.tensor([640.0, 640.0], device=DEVICE),
        torch.ones(anchors, 1, device=DEVICE),
    )
    loss_dfl.backward()
    ours_x = x.detach().clone().requires_grad_()
    ours = triton_focal.distribution_focal_loss(
        ours_x,
        bbox2dist(anchor_points, target_bboxes).clamp(0, n - 1.01),
        mask=fg[..., None].expand(batch, anchors, 4),
        weight=target_scores.sum(-1, keepdim=True),
        reduction="sum",
        normalizer=4 * target_scores_sum,
        backend=backend,
    )
    ours.backward()
    assert_close(ours, loss_dfl, "BboxLoss DFL")
    assert_close(ours_x.grad, box_x.grad, "BboxLoss DFL gradient")
    assert not math.isnan(ours.item())
