"""The focal family's mmdetection drop-ins against mmdet's own losses: ``TritonQualityFocalLoss``,
``TritonDistributionFocalLoss`` (``mmdet/models/losses/gfocal_loss.py``) and ``TritonVarifocalLoss``
(``mmdet/models/losses/varifocal_loss.py``), and the softmax ``TritonFocalLoss``'s fused weight.

mmdet's package ``mmdet.models`` imports mmcv's compiled ops, which an mmcv built without them
lacks. ``varifocal_loss.py`` imports its siblings relatively and loads alone
(``load_focal_loss``); ``gfocal_loss.py`` imports ``mmdet.models.losses.utils`` by its absolute
name, so it is loaded with stand-in packages for ``mmdet.models`` and ``mmdet.models.losses``
(their ``__init__`` files, which import the compiled ops, are not run). Without mmdet the
formulas of those files, transcribed below from mmdet 3.3, stand in.
"""

import importlib
import os
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from helpers import EAGER_BACKENDS, assert_close
from openmmlab_helpers import build_from_config, load_focal_loss, training_losses

import triton_focal
from triton_focal.integrations import _openmmlab
from triton_focal.integrations.mmdet import (
    TritonDistributionFocalLoss,
    TritonFocalLoss,
    TritonQualityFocalLoss,
    TritonVarifocalLoss,
)

EPS = torch.finfo(torch.float32).eps
NOT_INSTALLED = "mmdet is not installed (pip install mmdet mmengine; mmcv built with MMCV_WITH_OPS=0 suffices)"
# Every backend here, the compile one included (conftest marks its cases slow).


def _load_gfocal():
    module, why = load_focal_loss("mmdet", NOT_INSTALLED, name="gfocal_loss")
    if module is not None or importlib.util.find_spec("mmdet") is None:
        return module, why
    models = os.path.join(os.path.dirname(importlib.util.find_spec("mmdet").origin), "models")
    names = ("mmdet.models", "mmdet.models.losses", "mmdet.models.losses.utils", "mmdet.models.losses.gfocal_loss")
    saved = {name: sys.modules.get(name) for name in names}
    try:
        for name, path in ((names[0], models), (names[1], os.path.join(models, "losses"))):
            package = types.ModuleType(name)
            package.__path__ = [path]
            sys.modules[name] = package
        return importlib.import_module(names[3]), None
    except Exception as err:  # noqa: BLE001 - the reason is reported in the skip
        return None, f"{why}; with stand-in packages: {type(err).__name__}: {err}"
    finally:  # the stand-ins leave: a later import of mmdet.models must fail (or succeed) as before
        for name, module_before in saved.items():
            if module_before is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module_before


GFOCAL, GFOCAL_MISSING = _load_gfocal()
VARIFOCAL, VARIFOCAL_MISSING = load_focal_loss("mmdet", NOT_INSTALLED, name="varifocal_loss")


def test_mmdets_losses_load_where_mmdet_is_installed():
    """The comparisons below run against mmdet itself wherever it is installed."""
    if importlib.util.find_spec("mmdet") is None:
        pytest.skip(NOT_INSTALLED)
    assert GFOCAL is not None, GFOCAL_MISSING
    assert VARIFOCAL is not None, VARIFOCAL_MISSING


# --- mmdet 3.3's formulas, the stand-ins where mmdet is absent -------------------------------


def _weight_reduce_loss(loss, weight, reduction, avg_factor):
    """``mmdet/models/losses/utils.py: weight_reduce_loss``."""
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]
    if reduction == "mean":
        return loss.sum() / (avg_factor + EPS)
    if reduction == "none":
        return loss
    raise ValueError('avg_factor can not be used with reduction="sum"')


def _qfl_dense(pred, target, beta, activated=False):
    """``gfocal_loss.py: quality_focal_loss_tensor_target`` (the tuple form is its one-hot case)."""
    s = pred if activated else pred.sigmoid()
    bce = F.binary_cross_entropy if activated else F.binary_cross_entropy_with_logits
    loss = bce(pred, torch.zeros_like(pred), reduction="none") * s.pow(beta)
    pos = target != 0
    loss[pos] = bce(pred[pos], target[pos], reduction="none") * (target[pos] - s[pos]).abs().pow(beta)
    return loss.sum(dim=1)


def mmdet_qfl(pred, target, weight=None, avg_factor=None, reduction="mean", beta=2.0, loss_weight=1.0, activated=False):
    if GFOCAL is not None:
        module = GFOCAL.QualityFocalLoss(beta=beta, reduction=reduction, loss_weight=loss_weight, activated=activated)
        return module(pred, target, weight, avg_factor=avg_factor)
    if not isinstance(target, torch.Tensor):
        label, score = target
        c = pred.shape[1]
        pos = (label >= 0) & (label < c)
        one_hot = F.one_hot(torch.where(pos, label, c), c + 1)[:, :c].type_as(pred)
        target = one_hot * score[:, None]
    loss = _qfl_dense(pred, target.type_as(pred), beta, activated)
    return loss_weight * _weight_reduce_loss(loss, weight, reduction, avg_factor)


def mmdet_vfl(pred, target, weight=None, avg_factor=None, reduction="mean", alpha=0.75, gamma=2.0, iou_weighted=True):
    if VARIFOCAL is not None:
        module = VARIFOCAL.VarifocalLoss(alpha=alpha, gamma=gamma, iou_weighted=iou_weighted, reduction=reduction)
        return module(pred, target, weight, avg_factor=avg_factor)
    s = pred.sigmoid()
    target = target.type_as(pred)
    positive = (target > 0).float()
    focal = (target if iou_weighted else 1.0) * positive + alpha * (s - target).abs().pow(gamma) * (1 - positive)
    loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none") * focal
    return _weight_reduce_loss(loss, weight, reduction, avg_factor)


def mmdet_dfl(pred, target, weight=None, avg_factor=None, reduction="mean", loss_weight=1.0):
    if GFOCAL is not None:
        module = GFOCAL.DistributionFocalLoss(reduction=reduction, loss_weight=loss_weight)
        return module(pred, target, weight, avg_factor=avg_factor)
    left = target.long()
    right = left + 1
    loss = F.cross_entropy(pred, left, reduction="none") * (right.float() - target) + F.cross_entropy(
        pred, right, reduction="none"
    ) * (target - left.float())
    return loss_weight * _weight_reduce_loss(loss, weight, reduction, avg_factor)


# --- inputs ---------------------------------------------------------------------------------


def anchors(n=29, c=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    pred = (torch.randn(n, c, generator=g, dtype=torch.float64) * 2).to(dtype)
    label = torch.randint(0, c + 1, (n,), generator=g)  # c = background
    label[:2] = c
    label[2:4] = torch.tensor([0, 3])
    label[4] = -1  # mmdet: a label outside [0, C) is background too
    score = torch.rand(n, generator=g, dtype=torch.float64)
    score[label >= c] = 0.0
    return pred, label, score


def dense_scores(n=29, c=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, c, generator=g, dtype=torch.float64)
    return t * (torch.rand(n, c, generator=g) < 0.3)  # mostly 0: negatives, as IoU targets are


def weights(kind, n, c, seed=2):
    g = torch.Generator().manual_seed(seed)
    return {
        None: None,
        "N": torch.rand(n, generator=g, dtype=torch.float64),
        "NC": torch.rand(n, c, generator=g, dtype=torch.float64),
        "N*C": torch.rand(n * c, generator=g, dtype=torch.float64),
    }[kind]


REDUCTIONS = [("mean", None), ("mean", 7.5), ("mean", "tensor"), ("sum", None), ("none", None), ("none", 3.0)]


def _avg(avg_factor):
    return torch.tensor(6) if avg_factor == "tensor" else avg_factor  # a count of positives, as heads pass it


def _grad(loss, x):
    return torch.autograd.grad(loss, x)[0]


def _compare(ours_fn, theirs_fn, pred, what, **tol):
    x = pred.clone().requires_grad_()
    ours = ours_fn(x)
    xr = pred.clone().requires_grad_()
    theirs = theirs_fn(xr)
    assert ours.dtype == pred.dtype
    assert_close(ours, theirs, f"{what} loss", **tol)
    assert_close(_grad(ours.sum(), x), _grad(theirs.sum(), xr), f"{what} gradient", **tol)


# --- QualityFocalLoss -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
@pytest.mark.parametrize("reduction,avg_factor", REDUCTIONS)
@pytest.mark.parametrize("weight_kind", [None, "N"])
def test_qfl_label_score_equals_mmdet(backend, reduction, avg_factor, weight_kind):
    pred, label, score = anchors()
    w = weights(weight_kind, *pred.shape)
    avg = _avg(avg_factor)
    loss = TritonQualityFocalLoss(beta=2.0, reduction=reduction, loss_weight=0.7, backend=backend)
    _compare(
        lambda x: loss(x, (label, score), w, avg_factor=avg),
        lambda x: mmdet_qfl(x, (label, score), w, avg, reduction, loss_weight=0.7),
        pred,
        "QFL (label, score)",
    )


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
@pytest.mark.parametrize("reduction,avg_factor", [("mean", None), ("mean", 4.0), ("sum", None), ("none", None)])
@pytest.mark.parametrize("beta", [2.0, 1.5])
def test_qfl_dense_target_equals_mmdet(backend, reduction, avg_factor, beta):
    pred, _, _ = anchors()
    target = dense_scores()
    w = weights("N", *pred.shape)
    loss = TritonQualityFocalLoss(beta=beta, reduction=reduction, backend=backend)
    _compare(
        lambda x: loss(x, target, w, avg_factor=avg_factor),
        lambda x: mmdet_qfl(x, target, w, avg_factor, reduction, beta=beta),
        pred,
        "QFL dense",
    )


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
def test_qfl_dense_target_beyond_two_dims(backend):
    """mmdet's tensor-target QFL sums over dimension 1 of any (N, C, ...) shape; weight is then (N, ...)."""
    g = torch.Generator().manual_seed(6)
    pred = torch.randn(6, 4, 5, generator=g, dtype=torch.float64)
    target = torch.rand(6, 4, 5, generator=g, dtype=torch.float64) * (torch.rand(6, 4, 5, generator=g) < 0.3)
    w = torch.rand(6, 5, generator=g, dtype=torch.float64)
    for reduction in ("mean", "none"):
        loss = TritonQualityFocalLoss(reduction=reduction, backend=backend)
        _compare(
            lambda x: loss(x, target, w),
            lambda x: mmdet_qfl(x, target, w, reduction=reduction),
            pred,
            f"QFL (N, C, L) {reduction}",
        )


@pytest.mark.parametrize("form", ["tuple", "dense"])
def test_qfl_activated_equals_mmdet_with_prob(form):
    pred, label, score = anchors()
    prob = pred.sigmoid().detach()
    target = (label, score) if form == "tuple" else dense_scores()
    w = weights("N", *pred.shape)
    loss = TritonQualityFocalLoss(activated=True, backend="triton" if "triton" in EAGER_BACKENDS else "reference")
    _compare(
        lambda p: loss(p, target, w, avg_factor=5.0),
        lambda p: mmdet_qfl(p, target, w, 5.0, activated=True),
        prob,
        f"QFL activated {form}",
    )
    assert_close(
        TritonQualityFocalLoss(activated=True, reduction="none")(prob, target),
        mmdet_qfl(prob, target, reduction="none", activated=True),
        "per anchor",
    )


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
def test_qfl_float32_and_reduction_override(backend):
    pred, label, score = anchors(dtype=torch.float32)
    loss = TritonQualityFocalLoss(reduction="sum", backend=backend)
    _compare(
        lambda x: loss(x, (label, score.float()), avg_factor=3.0, reduction_override="mean"),
        lambda x: mmdet_qfl(x, (label, score.float()), avg_factor=3.0),
        pred,
        "QFL float32",
    )


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
def test_qfl_bfloat16(backend):
    """bf16 logits: the fused loss computes in float32; mmdet on the float32 copy is the reference."""
    pred, label, score = anchors(dtype=torch.bfloat16)
    x = pred.clone().requires_grad_()
    ours = TritonQualityFocalLoss(backend=backend)(x, (label, score.float()), avg_factor=4.0)
    xr = pred.float().requires_grad_()
    theirs = mmdet_qfl(xr, (label, score.float()), avg_factor=4.0)
    assert ours.dtype == torch.bfloat16
    assert_close(ours, theirs, "QFL bf16 loss")
    assert_close(_grad(ours, x), _grad(theirs, xr), "QFL bf16 gradient", dtype=torch.bfloat16)


# --- VarifocalLoss --------------------------------------------------------------------------


def _mmdet_weight(weight, n, c):
    """mmdet's ``loss * weight`` broadcasts ``(N, C)``; ``(N,)`` (per anchor here) and ``(N * C,)``
    are given to it in the shape they stand for."""
    if weight is None or weight.shape == (n, c):
        return weight
    return weight.reshape(n, 1) if weight.numel() == n else weight.reshape(n, c)


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
@pytest.mark.parametrize("reduction,avg_factor", REDUCTIONS)
@pytest.mark.parametrize("weight_kind", [None, "N", "NC", "N*C"])
@pytest.mark.parametrize("iou_weighted", [True, False])
def test_vfl_equals_mmdet(backend, reduction, avg_factor, weight_kind, iou_weighted):
    pred, _, _ = anchors()
    n, c = pred.shape
    target = dense_scores()
    w = weights(weight_kind, n, c)
    avg = _avg(avg_factor)
    loss = TritonVarifocalLoss(
        alpha=0.6, gamma=1.5, iou_weighted=iou_weighted, reduction=reduction, loss_weight=1.3, backend=backend
    )
    _compare(
        lambda x: loss(x, target, w, avg_factor=avg),
        lambda x: 1.3 * mmdet_vfl(x, target, _mmdet_weight(w, n, c), avg, reduction, 0.6, 1.5, iou_weighted),
        pred,
        "VFL",
    )


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
def test_vfl_float32_bfloat16_and_integer_one_hot(backend):
    pred, label, _ = anchors(dtype=torch.float32)
    one_hot = F.one_hot(label.clamp(0, 5), 6)[:, :5]  # integer one-hot: mmdet casts it with type_as
    _compare(
        lambda x: TritonVarifocalLoss(backend=backend)(x, one_hot, avg_factor=2.0),
        lambda x: mmdet_vfl(x, one_hot, avg_factor=2.0),
        pred,
        "VFL float32",
    )
    target = dense_scores()
    x = pred.bfloat16().requires_grad_()
    ours = TritonVarifocalLoss(backend=backend)(x, target.bfloat16())
    xr = pred.bfloat16().float().requires_grad_()
    theirs = mmdet_vfl(xr, target.bfloat16().float())
    assert ours.dtype == torch.bfloat16
    assert_close(ours, theirs, "VFL bf16 loss")
    assert_close(_grad(ours, x), _grad(theirs, xr), "VFL bf16 gradient", dtype=torch.bfloat16)


# --- DistributionFocalLoss ------------------------------------------------------------------


def bins(n=23, reg_max=7, seed=3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    pred = (torch.randn(n, reg_max + 1, generator=g, dtype=torch.float64) * 2).to(dtype)
    target = torch.rand(n, generator=g, dtype=torch.float64) * (reg_max - 0.01)  # mmdet's range: below reg_max
    target[:3] = torch.tensor([0.0, 2.0, 5.5], dtype=torch.float64)  # integers: the left bin takes it all
    return pred, target.to(dtype if dtype != torch.bfloat16 else torch.float32)


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
@pytest.mark.parametrize("reduction,avg_factor", REDUCTIONS)
@pytest.mark.parametrize("weight_kind", [None, "N"])
def test_dfl_equals_mmdet(backend, reduction, avg_factor, weight_kind):
    pred, target = bins()
    w = weights(weight_kind, pred.shape[0], 1)
    avg = _avg(avg_factor)
    loss = TritonDistributionFocalLoss(reduction=reduction, loss_weight=0.25, backend=backend)
    _compare(
        lambda x: loss(x, target, w, avg_factor=avg),
        lambda x: mmdet_dfl(x, target, w, avg, reduction, loss_weight=0.25),
        pred,
        "DFL",
    )


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
def test_dfl_gfl_heads_weight_and_float32(backend):
    """GFLHead's call: four sides per anchor, weight = the anchor's score repeated 4 times, avg_factor 4 * sum."""
    pred, target = bins(n=24, dtype=torch.float32)
    score = torch.rand(6, generator=torch.Generator().manual_seed(4))
    w = score[:, None].expand(-1, 4).reshape(-1)
    avg = 4.0 * score.sum()
    _compare(
        lambda x: TritonDistributionFocalLoss(loss_weight=0.25, backend=backend)(x, target, w, avg_factor=avg),
        lambda x: mmdet_dfl(x, target, w, avg, loss_weight=0.25),
        pred,
        "DFL float32",
    )


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
def test_dfl_bfloat16(backend):
    pred, target = bins(dtype=torch.bfloat16)
    x = pred.clone().requires_grad_()
    ours = TritonDistributionFocalLoss(backend=backend)(x, target)
    xr = pred.float().requires_grad_()
    theirs = mmdet_dfl(xr, target)
    assert ours.dtype == torch.bfloat16
    assert_close(ours, theirs, "DFL bf16 loss")
    assert_close(_grad(ours, x), _grad(theirs, xr), "DFL bf16 gradient", dtype=torch.bfloat16)


def test_dfl_last_bin_is_defined():
    """At target = reg_max mmdet's right bin is past the last one (an index error); here the last bin
    takes the whole weight: the cross entropy of that bin."""
    pred, _ = bins(n=4)
    target = torch.full((4,), float(pred.shape[1] - 1), dtype=torch.float64)
    ours = TritonDistributionFocalLoss(reduction="none", backend="reference")(pred, target)
    assert_close(ours, F.cross_entropy(pred, target.long(), reduction="none"), "last bin")


# --- what the three share -------------------------------------------------------------------


def test_empty_batch_gives_zero():
    """mmdet's mean over zero anchors is NaN; here it is 0, as TritonFocalLoss gives."""
    pred = torch.zeros(0, 5, requires_grad=True)
    label = torch.zeros(0, dtype=torch.long)
    for loss in (
        TritonQualityFocalLoss(backend="reference")(pred, (label, torch.zeros(0))),
        TritonVarifocalLoss(backend="reference")(pred, torch.zeros(0, 5)),
        TritonDistributionFocalLoss(backend="reference")(pred, torch.zeros(0)),
    ):
        assert loss.item() == 0.0
        assert _grad(loss, pred).shape == (0, 5)


def test_errors_name_the_argument():
    pred, label, score = anchors()
    qfl = TritonQualityFocalLoss(backend="reference")
    with pytest.raises(ValueError, match='avg_factor can not be used with reduction="sum"'):
        qfl(pred, (label, score), avg_factor=2.0, reduction_override="sum")
    with pytest.raises(ValueError, match="reduction_override"):
        qfl(pred, (label, score), reduction_override="avg")
    with pytest.raises(ValueError, match="avg_factor must be a finite number >= 0"):
        qfl(pred, (label, score), avg_factor=-1.0)
    with pytest.raises(TypeError, match=r"target must be a tuple \(label, score\)"):
        qfl(pred, (label,))
    with pytest.raises(TypeError, match="target's label must be"):
        qfl(pred, (label.float(), score))
    with pytest.raises(ValueError, match=r"label and score must both be \(29,\)"):
        qfl(pred, (label, score[:5]))
    with pytest.raises(ValueError, match="one value per anchor"):
        qfl(pred, (label, score), torch.ones(29, 5))
    with pytest.raises(ValueError, match="score values must lie in"):
        qfl(pred, (label, score + 2))
    with pytest.raises(ValueError, match="tensor target must have pred's shape"):
        qfl(pred, score)
    with pytest.raises(ValueError, match="use_sigmoid must be True"):
        TritonQualityFocalLoss(use_sigmoid=False)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        TritonQualityFocalLoss(beta=-1.0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        TritonVarifocalLoss(reduction="avg")
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        TritonVarifocalLoss(alpha=-0.5)
    with pytest.raises(ValueError, match="use_sigmoid must be True"):
        TritonVarifocalLoss(use_sigmoid=False)
    with pytest.raises(TypeError, match="iou_weighted"):
        TritonVarifocalLoss(iou_weighted=1)
    vfl = TritonVarifocalLoss(backend="reference")
    with pytest.raises(ValueError, match="same shape"):
        vfl(pred, label)
    with pytest.raises(ValueError, match=r"weight has shape \(5,\)"):
        vfl(pred, dense_scores(), torch.ones(5))
    dfl = TritonDistributionFocalLoss(backend="reference")
    bin_logits, target = bins()
    with pytest.raises(ValueError, match=r"target \(N,\) positions"):
        dfl(bin_logits, target[:, None])
    with pytest.raises(ValueError, match="weight"):
        dfl(bin_logits, target, torch.ones(23, 1))
    with pytest.raises(ValueError, match="target"):
        dfl(bin_logits, target + 10)
    with pytest.raises(TypeError, match="loss_weight must be a number"):
        TritonDistributionFocalLoss(loss_weight="1")
    with pytest.raises(ValueError, match="backend"):
        TritonDistributionFocalLoss(backend="cuda")


def test_attributes_heads_read():
    qfl = TritonQualityFocalLoss(beta=1.5, loss_weight=2.0)
    assert qfl.use_sigmoid is True and qfl.beta == 1.5 and qfl.loss_weight == 2.0 and qfl.activated is False
    vfl = TritonVarifocalLoss()
    assert vfl.use_sigmoid is True and (vfl.alpha, vfl.gamma, vfl.iou_weighted) == (0.75, 2.0, True)
    assert TritonDistributionFocalLoss().reduction == "mean"


@pytest.mark.parametrize(
    "config,cls",
    [
        ("type='TritonQualityFocalLoss', use_sigmoid=True, beta=2.0, loss_weight=1.0", TritonQualityFocalLoss),
        (
            "type='TritonVarifocalLoss', use_sigmoid=True, alpha=0.75, gamma=2.0, iou_weighted=True, loss_weight=1.0",
            TritonVarifocalLoss,
        ),
        ("type='TritonDistributionFocalLoss', loss_weight=0.25", TritonDistributionFocalLoss),
    ],
)
def test_registered_and_built_from_a_config(tmp_path, config, cls):
    loss = build_from_config(tmp_path, "mmdet", "gfl.py", "loss", config + ", backend='reference'")
    assert type(loss) is cls
    if cls is TritonQualityFocalLoss:
        pred, label, score = anchors()
        ours, theirs = loss(pred, (label, score), avg_factor=4.0), mmdet_qfl(pred, (label, score), avg_factor=4.0)
    elif cls is TritonVarifocalLoss:
        pred, _, _ = anchors()
        ours, theirs = loss(pred, dense_scores(), avg_factor=4.0), mmdet_vfl(pred, dense_scores(), avg_factor=4.0)
    else:
        pred, target = bins()
        ours, theirs = loss(pred, target), mmdet_dfl(pred, target, loss_weight=0.25)
    assert_close(ours, theirs, "built loss")


def test_trains_a_gfl_style_head(backend):
    """QFL on the classes and DFL on four box sides, avg_factor = the positives, a few SGD steps."""
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 4 + 4 * 8)
    features = torch.randn(48, 8)
    label = (features[:, :4].argmax(1) + features[:, 4].gt(0).long() * 4).clamp(max=4)  # 4 = background
    score = features[:, 5].sigmoid()
    sides = features[:, 6:8].repeat(1, 2).sigmoid() * 6.5
    pos = label < 4
    qfl = TritonQualityFocalLoss(backend=backend)
    dfl = TritonDistributionFocalLoss(loss_weight=0.25, backend=backend)

    def step():
        out = head(features)
        cls_loss = qfl(out[:, :4], (label, score), avg_factor=pos.sum().float())
        box = out[pos, 4:].reshape(-1, 8)
        return cls_loss + dfl(box, sides[pos].reshape(-1), avg_factor=4.0 * pos.sum().float())

    losses = training_losses(head, step, 0.5)
    assert losses[-1] < losses[0], losses


# --- the softmax TritonFocalLoss: weight and avg_factor go into the fused loss -----------------


@pytest.mark.parametrize("backend", EAGER_BACKENDS)
@pytest.mark.parametrize("reduction,avg_factor", [("mean", None), ("mean", 9.0), ("sum", None), ("none", None)])
def test_softmax_weight_and_avg_factor_are_fused(backend, monkeypatch, reduction, avg_factor):
    """mmdet's CrossEntropyLoss convention (weight multiplies, the mean divides by the label count or
    avg_factor + eps), computed by one focal_loss call: no per-label loss is made for a reduced one."""
    pred, label, _ = anchors(c=6)
    label = label.clamp(0, 5)
    label[:3] = -100
    weight = torch.rand(label.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    calls = []
    real = _openmmlab.focal_loss

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(_openmmlab, "focal_loss", spy)
    loss = TritonFocalLoss(use_sigmoid=False, gamma=2.0, reduction=reduction, backend=backend)
    x = pred.clone().requires_grad_()
    ours = loss(x, label, weight, avg_factor=avg_factor)
    assert len(calls) == 1 and calls[0]["element_weight"] is not None
    assert calls[0]["reduction"] == ("none" if reduction == "none" else "sum")
    xr = pred.clone().requires_grad_()
    per = triton_focal.focal_loss(xr, label, gamma=2.0, reduction="none", backend="reference")
    theirs = _weight_reduce_loss(per, weight, reduction, avg_factor)
    tol = dict(dtype=torch.float32)  # the softmax kernel's float64 path is held to float32's tolerance
    assert_close(ours, theirs, "loss", **tol)
    assert_close(_grad(ours.sum(), x), _grad(theirs.sum(), xr), "gradient", **tol)
