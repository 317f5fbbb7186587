"""mmseg's softmax ``TritonFocalLoss`` (``use_sigmoid=False``) with the per-pixel ``weight`` (the
``seg_weight`` of mmseg's OHEM pixel sampler) and ``avg_factor``, against mmseg's own
``cross_entropy`` (``mmseg/models/losses/cross_entropy_loss.py``, which loads alone: its imports are
relative) at ``gamma = 0``, and its ``weight_reduce_loss`` on the focal term otherwise.

Both go into one fused ``focal_loss(element_weight=..., reduction="sum", normalizer=...)`` call:
mmseg divides by the pixel count (or ``avg_factor + eps``), not by the weights' sum.
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import EAGER_BACKENDS, assert_close
from openmmlab_helpers import load_focal_loss

import triton_focal
from triton_focal.integrations import _openmmlab
from triton_focal.integrations.mmseg import TritonFocalLoss

EPS = torch.finfo(torch.float32).eps

MMSEG_CE, MMSEG_CE_MISSING = load_focal_loss(
    "mmseg", "mmsegmentation is not installed (pip install mmsegmentation mmengine)", name="cross_entropy_loss"
)
TOL = dict(dtype=torch.float32)  # the softmax kernel's float64 path is held to float32's tolerance


def _weight_reduce_loss(loss, weight, reduction, avg_factor):
    """mmseg's ``weight_reduce_loss`` (``mmseg/models/losses/utils.py``; mmdet's, the same)."""
    if MMSEG_CE is not None:
        return MMSEG_CE.weight_reduce_loss(loss, weight=weight, reduction=reduction, avg_factor=avg_factor)
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]
    return loss.sum() / (avg_factor + EPS) if reduction == "mean" else loss


def mmseg_cross_entropy(pred, label, weight, reduction, avg_factor, avg_non_ignore, ignore_index=255):
    """mmseg's ``cross_entropy`` without class weights (the real one where it loads)."""
    if MMSEG_CE is not None:
        return MMSEG_CE.cross_entropy(
            pred,
            label,
            weight,
            reduction=reduction,
            avg_factor=avg_factor,
            ignore_index=ignore_index,
            avg_non_ignore=avg_non_ignore,
        )
    loss = F.cross_entropy(pred, label, reduction="none", ignore_index=ignore_index)
    if avg_factor is None and reduction == "mean":
        avg_factor = label.numel() - (label == ignore_index).sum().item() if avg_non_ignore else label.numel()
    return _weight_reduce_loss(loss, None if weight is None else weight.float(), reduction, avg_factor)


def segmentation(c=4, seed=0, shape=(2, 5, 6), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    b, h, w = shape
    pred = (torch.randn(b, c, h, w, generator=g, dtype=torch.float64) * 2).to(dtype)
    labels = torch.randint(0, c, (b, h, w), generator=g)
    labels[0, 0, :4] = 255
    seg_weight = (torch.rand(b, h, w, generator=g) < 0.7).float()  # OHEM: kept pixels 1, the rest 0
    seg_weight[1] *= 0.5
    return pred, labels, seg_weight


def _grad(loss, x):
    return torch.autograd.grad(loss, x)[0]


REDUCTIONS = [("mean", None), ("mean", 17.0), ("mean", "tensor"), ("sum", None), ("none", None)]


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
@pytest.mark.parametrize("reduction,avg_factor", REDUCTIONS)
@pytest.mark.parametrize("avg_non_ignore", [False, True])
@pytest.mark.parametrize("weight_form", [None, "map", "flat"])
def test_gamma_0_equals_mmsegs_cross_entropy(backend, reduction, avg_factor, avg_non_ignore, weight_form):
    pred, labels, seg_weight = segmentation()
    avg = torch.tensor(23.0) if avg_factor == "tensor" else avg_factor
    weight = {None: None, "map": seg_weight, "flat": seg_weight.reshape(-1)}[weight_form]
    loss = TritonFocalLoss(
        use_sigmoid=False,
        gamma=0.0,
        reduction=reduction,
        avg_non_ignore=avg_non_ignore,
        loss_weight=0.4,
        backend=backend,
    )
    x = pred.clone().requires_grad_()
    ours = loss(x, labels, weight, avg_factor=avg, ignore_index=255)
    xr = pred.clone().requires_grad_()
    theirs = 0.4 * mmseg_cross_entropy(xr, labels, seg_weight if weight_form else None, reduction, avg, avg_non_ignore)
    assert_close(ours, theirs, "loss", **TOL)
    assert_close(_grad(ours.sum(), x), _grad(theirs.sum(), xr), "gradient", **TOL)


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
@pytest.mark.parametrize("reduction,avg_factor", [("mean", None), ("mean", 11.0), ("none", None)])
def test_focal_term_with_mmsegs_weight_reduce_loss(backend, reduction, avg_factor):
    pred, labels, seg_weight = segmentation()
    alpha = [0.5, 1.0, 2.0, 0.25]
    loss = TritonFocalLoss(use_sigmoid=False, gamma=2.0, alpha=alpha, reduction=reduction, backend=backend)
    x = pred.clone().requires_grad_()
    ours = loss(x, labels, seg_weight, avg_factor=avg_factor)
    xr = pred.clone().requires_grad_()
    per_pixel = triton_focal.focal_loss(
        xr, labels, gamma=2.0, alpha=torch.tensor(alpha, dtype=torch.float64), ignore_index=255, reduction="none"
    )
    theirs = _weight_reduce_loss(per_pixel, seg_weight, reduction, avg_factor)
    assert_close(ours, theirs, "loss", **TOL)
    assert_close(_grad(ours.sum(), x), _grad(theirs.sum(), xr), "gradient", **TOL)


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
def test_float32_and_bfloat16(backend):
    for dtype in (torch.float32, torch.bfloat16):
        pred, labels, seg_weight = segmentation(dtype=dtype)
        loss = TritonFocalLoss(use_sigmoid=False, gamma=0.0, backend=backend)
        x = pred.clone().requires_grad_()
        ours = loss(x, labels, seg_weight, avg_factor=13.0)
        xr = pred.float().requires_grad_()
        theirs = mmseg_cross_entropy(xr, labels, seg_weight, "mean", 13.0, False)
        assert ours.dtype == dtype
        assert_close(ours, theirs, f"{dtype} loss", dtype=dtype)
        assert_close(_grad(ours, x), _grad(theirs, xr), f"{dtype} gradient", dtype=dtype)


def test_one_fused_call_makes_no_per_pixel_loss(monkeypatch):
    """A reduced loss is one focal_loss call with the weight and the divisor in it."""
    calls = []
    real = _openmmlab.focal_loss

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(_openmmlab, "focal_loss", spy)
    pred, labels, seg_weight = segmentation()
    TritonFocalLoss(use_sigmoid=False, backend="reference")(pred, labels, seg_weight)
    TritonFocalLoss(use_sigmoid=False, avg_non_ignore=True, backend="reference")(pred, labels, seg_weight)
    assert [c["reduction"] for c in calls] == ["sum", "sum"]
    assert calls[0]["normalizer"] == labels.numel()
    assert calls[1]["normalizer"].item() == pytest.approx((labels != 255).sum().item() + EPS)
    assert all(c["element_weight"].shape == labels.shape for c in calls)


def test_weight_errors():
    pred, labels, seg_weight = segmentation()
    loss = TritonFocalLoss(use_sigmoid=False, backend="reference")
    with pytest.raises(ValueError, match="per pixel, not per class"):
        loss(pred, labels, seg_weight.unsqueeze(1).expand(-1, 4, -1, -1))
    with pytest.raises(ValueError, match="weight must be finite and non-negative"):
        loss(pred, labels, -seg_weight)
    with pytest.raises(ValueError, match="avg_factor must be a finite number >= 0"):
        loss(pred, labels, seg_weight, avg_factor=float("nan"))
