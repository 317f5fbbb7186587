"""``triton_focal.integrations.mmdet.TritonFocalLoss`` against mmdet's own ``FocalLoss``.

Where mmdet is installed, its ``mmdet/models/losses/focal_loss.py`` is the reference (its CPU path,
``py_sigmoid_focal_loss`` on a one-hot target). mmdet's package ``mmdet.models`` imports mmcv's
compiled ops; with an mmcv built without them (``MMCV_WITH_OPS=0``, "mmcv-lite") that import fails,
so the loss file is loaded by itself, with ``mmcv.ops`` (used only on CUDA tensors) stubbed during
the load. Without mmdet the same semantics are checked against the formulas of that file written
out below (``mmdet_py_sigmoid_focal_loss``).
"""

import os
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import EAGER_BACKENDS, assert_close
from openmmlab_helpers import build_from_config, load_focal_loss, training_losses

from triton_focal.integrations import mmdet as tf_mmdet
from triton_focal.integrations.mmdet import TritonFocalLoss

EPS = torch.finfo(torch.float32).eps


MMDET, MMDET_MISSING = load_focal_loss(
    "mmdet", "mmdet is not installed (pip install mmdet mmengine; mmcv built with MMCV_WITH_OPS=0 suffices)"
)
needs_mmdet = pytest.mark.skipif(MMDET is None, reason=f"mmdet's FocalLoss unavailable: {MMDET_MISSING}")


@pytest.fixture(params=EAGER_BACKENDS)
def backend(request):
    """The eager backends (``helpers.EAGER_BACKENDS``: the core files test the compile one)."""
    return request.param


def mmdet_py_sigmoid_focal_loss(pred, target, weight=None, gamma=2.0, alpha=0.25, reduction="mean", avg_factor=None):
    """mmdet's ``py_sigmoid_focal_loss`` and ``weight_reduce_loss``, transcribed from mmdet 3.3."""
    p = pred.sigmoid()
    target = target.type_as(pred)
    pt = (1 - p) * target + p * (1 - target)
    loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none") * (
        (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    )
    if weight is not None:
        if weight.shape != loss.shape:
            weight = weight.view(-1, 1) if weight.size(0) == loss.size(0) else weight.view(loss.size(0), -1)
        loss = loss * weight
    if avg_factor is None:
        return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]
    if reduction == "mean":
        return loss.sum() / (avg_factor + EPS)
    if reduction == "none":
        return loss
    raise ValueError('avg_factor can not be used with reduction="sum"')


def mmdet_reference(
    pred, target, weight=None, avg_factor=None, reduction="mean", gamma=2.0, alpha=0.25, loss_weight=1.0
):
    """mmdet's ``FocalLoss.forward`` on the CPU (the real one where it loads)."""
    if MMDET is not None:
        module = MMDET.FocalLoss(
            use_sigmoid=True, gamma=gamma, alpha=alpha, reduction=reduction, loss_weight=loss_weight
        )
        return module(pred, target, weight, avg_factor=avg_factor)
    if target.dim() != pred.dim():
        target = F.one_hot(target, num_classes=pred.shape[1] + 1)[:, : pred.shape[1]]
    return loss_weight * mmdet_py_sigmoid_focal_loss(pred, target, weight, gamma, alpha, reduction, avg_factor)


def anchors(n=37, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, c, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, c + 1, (n,), generator=g)  # c = background
    return pred, labels


def _grad(loss, x):
    return torch.autograd.grad(loss, x)[0]


@pytest.mark.parametrize("form", ["index", "one_hot", "soft"])
@pytest.mark.parametrize("weight_shape", [None, "N", "NC", "N*C"])
@pytest.mark.parametrize(
    "reduction,avg_factor", [("mean", None), ("mean", 7.5), ("sum", None), ("none", None), ("none", 3.0)]
)
def test_sigmoid_equals_mmdet(backend, form, weight_shape, reduction, avg_factor):
    pred, labels = anchors()
    n, c = pred.shape
    target = labels
    if form == "one_hot":
        target = F.one_hot(labels, c + 1)[:, :c]  # int64, as mmdet's heads make it
    elif form == "soft":
        target = torch.rand(n, c, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    weight = {
        None: None,
        "N": torch.rand(n, generator=g, dtype=torch.float64),
        "NC": torch.rand(n, c, generator=g, dtype=torch.float64),
        "N*C": torch.rand(n * c, generator=g, dtype=torch.float64),
    }[weight_shape]
    x = pred.clone().requires_grad_()
    ours = TritonFocalLoss(gamma=2.0, alpha=0.25, reduction=reduction, loss_weight=0.7, backend=backend)(
        x, target, weight, avg_factor=avg_factor
    )
    xr = pred.clone().requires_grad_()
    theirs = mmdet_reference(xr, target, weight, avg_factor, reduction, loss_weight=0.7)
    assert_close(ours, theirs, "loss")
    assert_close(_grad(ours.sum(), x), _grad(theirs.sum(), xr), "gradient")


def test_reduction_override_and_float32(backend):
    pred, labels = anchors()
    x = pred.float().requires_grad_()
    loss = TritonFocalLoss(reduction="sum", backend=backend)
    ours = loss(x, labels, avg_factor=4.0, reduction_override="mean")
    xr = pred.float().requires_grad_()
    theirs = mmdet_reference(xr, labels, avg_factor=4.0)
    assert ours.dtype == torch.float32
    assert_close(ours, theirs, "loss")
    assert_close(_grad(ours, x), _grad(theirs, xr), "gradient")


def test_tensor_avg_factor_stays_on_the_device():
    pred, labels = anchors()
    avg = (labels < pred.shape[1]).sum().float()  # a device tensor, no .item()
    ours = TritonFocalLoss(backend="reference")(pred, labels, avg_factor=avg)
    assert_close(ours, mmdet_reference(pred, labels, avg_factor=avg), "loss")


def test_mmdet_reduction_errors():
    pred, labels = anchors()
    loss = TritonFocalLoss(reduction="sum", backend="reference")
    with pytest.raises(ValueError, match='avg_factor can not be used with reduction="sum"'):
        loss(pred, labels, avg_factor=3.0)
    with pytest.raises(ValueError, match="reduction_override"):
        loss(pred, labels, reduction_override="avg")
    with pytest.raises(ValueError, match=r"weight has shape \(5,\)"):
        loss(pred, labels, torch.ones(5))
    with pytest.raises(ValueError, match="target of shape"):
        loss(pred, labels[:4])
    with pytest.raises(ValueError, match="outside"):
        loss(pred, torch.full_like(labels, 9))
    with pytest.raises(ValueError, match="reduction must be one of"):
        TritonFocalLoss(reduction="avg")
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        TritonFocalLoss(gamma=-1)
    with pytest.raises(TypeError, match="use_sigmoid"):
        TritonFocalLoss(use_sigmoid="yes")


def test_attributes_heads_read():
    loss = TritonFocalLoss(use_sigmoid=True, loss_weight=2.0)
    assert loss.use_sigmoid is True and loss.loss_weight == 2.0 and loss.activated is False
    assert loss.alpha == 0.25 and loss.gamma == 2.0


def test_activated_equals_mmdet_with_prob():
    pred, labels = anchors()
    prob = pred.sigmoid().clone().requires_grad_()
    ours = TritonFocalLoss(activated=True)(prob, labels, avg_factor=5.0)
    prob_r = pred.sigmoid().clone().requires_grad_()
    if MMDET is not None:
        theirs = MMDET.FocalLoss(activated=True)(prob_r, labels, avg_factor=5.0)
    else:
        t = F.one_hot(labels, pred.shape[1] + 1)[:, :-1].type_as(prob_r)
        pt = (1 - prob_r) * t + prob_r * (1 - t)
        theirs = (
            F.binary_cross_entropy(prob_r, t, reduction="none") * (0.25 * t + 0.75 * (1 - t)) * pt.pow(2)
        ).sum() / (5.0 + EPS)
    assert_close(ours, theirs, "loss")
    assert_close(_grad(ours, prob), _grad(theirs, prob_r), "gradient")


@pytest.mark.parametrize("alpha", [None, 0.25, [0.5, 1.0, 2.0, 1.0, 0.5, 0.1]])
def test_softmax_is_cross_entropys_reductions(backend, alpha):
    """use_sigmoid=False: (N, C + 1) scores, background last, mmdet's CrossEntropyLoss reductions."""
    pred, labels = anchors(c=6)
    pred = pred[:, :6]
    labels = labels.clamp(max=5)
    labels[:3] = -100
    class_weight = [1.0, 2.0, 0.5, 1.0, 1.5, 0.3]
    weight = torch.rand(labels.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = pred.clone().requires_grad_()
    loss = TritonFocalLoss(use_sigmoid=False, gamma=0.0, alpha=alpha, class_weight=class_weight, backend=backend)
    ours = loss(x, labels, weight, avg_factor=11.0)
    xr = pred.clone().requires_grad_()
    per = F.cross_entropy(xr, labels, weight=torch.tensor(class_weight, dtype=torch.float64), reduction="none")
    if alpha is None:
        a = torch.ones(6)
    elif isinstance(alpha, float):
        a = torch.tensor([alpha] * 5 + [1 - alpha])  # background (the last class) gets 1 - alpha
    else:
        a = torch.tensor(alpha)
    per = per * a.double()[labels.clamp(min=0)] * weight
    theirs = per.sum() / (11.0 + EPS)
    tol = dict(dtype=torch.float32)  # the softmax kernel's float64 path is held to float32's tolerance here
    assert_close(ours, theirs, "loss", **tol)
    assert_close(_grad(ours, x), _grad(theirs, xr), "gradient", **tol)
    # mean over all labels (ignored ones included), or over the non-ignored with avg_non_ignore
    plain = TritonFocalLoss(use_sigmoid=False, gamma=0.0, backend=backend)
    ce = F.cross_entropy(pred, labels, reduction="none")
    assert_close(plain(pred, labels), ce.sum() / labels.numel(), "mean over all labels", **tol)
    non_ignore = TritonFocalLoss(use_sigmoid=False, gamma=0.0, avg_non_ignore=True, backend=backend)
    assert_close(non_ignore(pred, labels), ce.sum() / ((labels != -100).sum() + EPS), "mean over non-ignored", **tol)


def test_ignore_index_rows_give_zero(backend):
    pred, labels = anchors()
    labels[:5] = -1
    pred[:5] = float("nan")  # ignored rows are not read
    loss = TritonFocalLoss(ignore_index=-1, reduction="none", backend=backend)(pred, labels)
    assert torch.equal(loss[:5], torch.zeros_like(loss[:5]))
    kept = mmdet_reference(pred[5:], labels[5:], reduction="none")
    assert_close(loss[5:], kept, "kept rows")


def test_registered_and_built_from_a_config(tmp_path):
    loss = build_from_config(
        tmp_path,
        "mmdet",
        "retinanet_focal.py",
        "loss_cls",
        "type='TritonFocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0, backend='reference'",
    )
    assert isinstance(loss, tf_mmdet.TritonFocalLoss) and loss.use_sigmoid
    pred, labels = anchors()
    assert_close(loss(pred, labels, avg_factor=4.0), mmdet_reference(pred, labels, avg_factor=4.0), "built loss")


def test_trains_a_retinanet_style_head(backend):
    """A few steps of a tiny classification head with class-index targets and avg_factor = positives."""
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 4)
    features = torch.randn(64, 8)
    labels = (features[:, :4].argmax(1) + 1) % 5  # 4 = background for a fifth of the anchors... roughly
    loss_fn = TritonFocalLoss(backend=backend)
    losses = training_losses(head, lambda: loss_fn(head(features), labels, avg_factor=(labels < 4).sum().float()), 0.5)
    assert losses[-1] < losses[0], losses


def test_importable_and_usable_without_openmmlab():
    """Without mmengine / mmdet / mmseg / mmcv the modules import, register nothing, and compute."""
    import subprocess

    code = (
        "import sys\n"
        "sys.modules.update(dict.fromkeys(['mmengine', 'mmengine.registry', 'mmdet', 'mmdet.registry', 'mmseg',"
        " 'mmseg.registry', 'mmcv']))\n"
        "import torch\n"
        "from triton_focal.integrations import mmdet, mmseg\n"
        "x = torch.randn(6, 3)\n"
        "print(float(mmdet.TritonFocalLoss(backend='reference')(x, torch.tensor([0, 1, 2, 3, 3, 1]))))\n"
        "loss = mmseg.TritonFocalLoss(backend='reference')\n"
        "print(float(loss(torch.randn(1, 3, 2, 2), torch.zeros(1, 2, 2).long())))\n"
    )
    env = {**os.environ, "TRITON_FOCAL_BACKEND": "reference"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) == 2
