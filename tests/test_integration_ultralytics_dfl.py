"""The fused box loss: ``FusedBboxLoss`` against ultralytics' ``BboxLoss``, and ``v8DetectionLoss``
with ``fuse_dfl=True`` against the unpatched one on YOLOv8 / YOLO11 models built from their yaml.

``BboxLoss``'s DFL term gathers the foreground anchors' logits and takes ``DFLoss`` of them;
``FusedBboxLoss`` makes one masked ``distribution_focal_loss`` call over every anchor instead, so
the two agree to rounding (float32: the per-dtype tolerance; bfloat16: the value within one
rounding of the float64 result, the gradient as close to it as ultralytics' own). The IoU term is
ultralytics' code and is compared bit for bit. ultralytics is imported as
tests/test_integration_ultralytics.py imports it.
"""

import os
import tempfile

import pytest
import torch
from helpers import EAGER_BACKENDS, TOLERANCES, assert_close, assert_no_worse_than_torch, torchvision_version_if_missing

os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="ultralytics-config-"))
os.environ.setdefault("YOLO_VERBOSE", "False")
with torchvision_version_if_missing():
    ultralytics = pytest.importorskip("ultralytics")
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.loss import BboxLoss, E2EDetectLoss, v8DetectionLoss
    from ultralytics.utils.tal import dist2bbox, make_anchors

from triton_focal.integrations.ultralytics import (  # noqa: E402
    FusedBboxLoss,
    FusedClassificationLoss,
    enable_focal_loss,
    focal_loss_callback,
    patch_bbox_loss,
    patch_criterion,
)

DEVICE = "cpu"
# Every backend, the compile one included (tests/conftest.py marks its cases slow).
ALL_BACKENDS = EAGER_BACKENDS  # helpers.EAGER_BACKENDS: the core files test the compile one
NC = 3


def box_inputs(reg_max=16, dtype=torch.float32, seed=0, batch=2, size=64, background_nan=False):
    """``BboxLoss``'s arguments as ``v8DetectionLoss`` passes them: ``pred_dist (B, A, 4 * reg_max)``
    for the 8x8, 4x4 and 2x2 grids of a ``size`` image (A = 84), its decoded boxes, grid-unit
    anchors and targets (some sides beyond ``reg_max - 1``: DFLoss's clamp decides), target
    scores that are 0 off the foreground, their sum clamped at 1, ``imgsz`` and the stride of
    each anchor. ``pred_dist`` and ``pred_bboxes`` are separate leaves, so that each gradient is
    checked on its own."""
    g = torch.Generator().manual_seed(seed)
    strides = torch.tensor([8.0, 16.0, 32.0])
    feats = [torch.zeros(batch, 1, size // int(s), size // int(s), dtype=dtype) for s in strides]
    anchor_points, stride_tensor = make_anchors(feats, strides, 0.5)
    anchors = anchor_points.shape[0]
    pred_dist = (2 * torch.randn(batch, anchors, 4 * reg_max, generator=g)).to(dtype)
    if reg_max > 1:
        proj = torch.arange(reg_max, dtype=dtype)
        ltrb = pred_dist.view(batch, anchors, 4, reg_max).softmax(3).matmul(proj)
    else:
        ltrb = pred_dist
    pred_bboxes = dist2bbox(ltrb, anchor_points, xywh=False)
    fg_mask = torch.rand(batch, anchors, generator=g) < 0.4
    ltrb_target = torch.rand(batch, anchors, 4, generator=g) * (reg_max + 2) - 0.5
    target_bboxes = torch.cat([anchor_points - ltrb_target[..., :2], anchor_points + ltrb_target[..., 2:]], -1)
    target_scores = torch.rand(batch, anchors, NC, generator=g) * fg_mask[..., None]
    if background_nan:
        # a padded or never-written row of logits: ultralytics does not gather it, the fused loss does not read it
        pred_dist[~fg_mask] = float("nan")
    return dict(
        pred_dist=pred_dist,
        pred_bboxes=pred_bboxes,
        anchor_points=anchor_points,
        target_bboxes=target_bboxes,
        target_scores=target_scores,
        target_scores_sum=target_scores.sum().clamp_(min=1),
        fg_mask=fg_mask,
        imgsz=torch.tensor([size, size], dtype=dtype),
        stride=stride_tensor,
    )


def run_box_loss(module, inputs, cast=None):
    """``(loss_iou, loss_dfl)`` and the gradients of ``7.5 * loss_iou + 1.5 * loss_dfl`` (the default
    box and dfl gains) wrt ``pred_dist`` and ``pred_bboxes``; ``cast`` converts the two leaves first."""
    args = dict(inputs)
    leaves = []
    for name in ("pred_dist", "pred_bboxes"):
        value = args[name].detach().clone()
        args[name] = (value if cast is None else value.to(cast)).requires_grad_()
        leaves.append(args[name])
    if cast is not None:
        args["target_scores"] = args["target_scores"].to(cast)
        args["target_scores_sum"] = args["target_scores_sum"].to(cast)
    loss_iou, loss_dfl = module(**args)
    grads = torch.autograd.grad(7.5 * loss_iou + 1.5 * loss_dfl, leaves)
    return loss_iou, loss_dfl, grads


def scaled(reference, dtype):
    """The dtype's tolerance with ``atol`` relative to the largest value (gradients are small numbers)."""
    tol = TOLERANCES[dtype]
    return dict(rtol=tol["rtol"], atol=tol["rtol"] * reference.detach().abs().max().item())


# --- the drop-in against BboxLoss -----------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_fused_bbox_loss_equals_ultralytics(backend, dtype):
    inputs = box_inputs(dtype=dtype)
    theirs_iou, theirs_dfl, (theirs_dist, theirs_boxes) = run_box_loss(BboxLoss(16), inputs)
    ours_iou, ours_dfl, (ours_dist, ours_boxes) = run_box_loss(FusedBboxLoss(16, backend=backend), inputs)

    # The IoU term is ultralytics' code, the same operations in the same order.
    assert torch.equal(ours_iou, theirs_iou)
    assert torch.equal(ours_boxes, theirs_boxes)
    assert ours_dfl.dtype == theirs_dfl.dtype and ours_dist.dtype == theirs_dist.dtype == dtype
    assert theirs_dfl.item() > 0 and ours_dfl.item() > 0
    if dtype == torch.float32:
        assert_close(ours_dfl, theirs_dfl, "loss_dfl", dtype)
        assert_close(ours_dist, theirs_dist, "pred_dist gradient", dtype, **scaled(theirs_dist, dtype))
        return
    # bfloat16: ultralytics takes the log-softmax in bfloat16 and sums float32 products, the
    # fused loss computes in float32 and rounds its sum to bfloat16 once. Both are held to the
    # float64 result: the value within one bfloat16 rounding (2^-9 relative, and float32's error),
    # the gradient no further from it than ultralytics'.
    _, gold_dfl, (gold_dist, _) = run_box_loss(BboxLoss(16), inputs, cast=torch.float64)
    assert_close(ours_dfl, gold_dfl, "loss_dfl against float64", dtype, rtol=2**-9 + 1e-5, atol=0)
    assert_close(ours_dist, gold_dist, "pred_dist gradient against float64", dtype, **scaled(gold_dist, dtype))
    assert_close(ours_dfl, theirs_dfl, "loss_dfl", dtype)
    assert_close(ours_dist, theirs_dist, "pred_dist gradient", dtype, **scaled(theirs_dist, dtype))
    assert_no_worse_than_torch(ours_dist, theirs_dist, gold_dist, "pred_dist gradient")


def test_background_logits_are_not_read():
    """NaN logits on every background anchor: ultralytics never gathers them, the masked rows are
    never read, and both give the same finite loss and a zero gradient there."""
    backend = "triton" if "triton" in ALL_BACKENDS else "reference"
    inputs = box_inputs(seed=1, background_nan=True)
    _, theirs_dfl, (theirs_dist, _) = run_box_loss(BboxLoss(16), inputs)
    _, ours_dfl, (ours_dist, _) = run_box_loss(FusedBboxLoss(16, backend=backend), inputs)
    assert torch.isfinite(ours_dfl) and torch.isfinite(ours_dist).all()
    assert_close(ours_dfl, theirs_dfl, "loss_dfl")
    assert_close(ours_dist, theirs_dist, "pred_dist gradient", **scaled(theirs_dist, torch.float32))
    assert not ours_dist[~inputs["fg_mask"]].any()


@pytest.mark.parametrize("backend", [name for name in ALL_BACKENDS if name != "compile"])
def test_pred_dist_is_never_indexed(backend):
    """ultralytics gathers ``pred_dist[fg_mask]``; the drop-in indexes neither the logits nor a
    view of them (only the IoU term's boxes and scores are gathered)."""
    inputs = box_inputs(seed=4)
    pred_dist = inputs["pred_dist"].detach().clone().requires_grad_()
    indexed = []

    def is_pred_dist(value):
        return isinstance(value, torch.Tensor) and (value is pred_dist or value._base is pred_dist)

    class Watch(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in (torch.Tensor.__getitem__, torch.Tensor.index_select, torch.Tensor.masked_select):
                if is_pred_dist(args[0]):
                    indexed.append(func.__name__)
            return func(*args, **(kwargs or {}))

    for module, expect_indexed in ((BboxLoss(16), True), (FusedBboxLoss(16, backend=backend), False)):
        indexed.clear()
        with Watch():
            module(**{**inputs, "pred_dist": pred_dist})
        assert bool(indexed) == expect_indexed, indexed


def test_empty_foreground_gives_zero_and_keeps_the_graph():
    """No foreground anchor (``target_scores_sum`` clamped to 1): both terms 0, the gradients 0."""
    inputs = box_inputs(seed=2)
    inputs["fg_mask"] = torch.zeros_like(inputs["fg_mask"])
    inputs["target_scores"] = torch.zeros_like(inputs["target_scores"])
    inputs["target_scores_sum"] = inputs["target_scores"].sum().clamp_(min=1)
    for module in (BboxLoss(16), FusedBboxLoss(16, backend="reference")):
        loss_iou, loss_dfl, (grad_dist, grad_boxes) = run_box_loss(module, inputs)
        assert loss_iou.item() == 0 and loss_dfl.item() == 0
        assert not grad_dist.any() and not grad_boxes.any()


def test_reg_max_one_is_ultralytics_own():
    """``reg_max == 1`` has no DFL: ultralytics' ``BboxLoss(1)`` computes both terms (the L1
    distance loss of ultralytics 8.4)."""
    inputs = box_inputs(reg_max=1, seed=3)
    theirs = run_box_loss(BboxLoss(1), inputs)
    ours = run_box_loss(FusedBboxLoss(1), inputs)
    for got, want in zip((*ours[:2], *ours[2]), (*theirs[:2], *theirs[2])):
        assert torch.equal(got, want)


def test_bad_settings():
    with pytest.raises(ValueError, match="reg_max"):
        FusedBboxLoss(0)
    with pytest.raises(ValueError, match="backend"):
        FusedBboxLoss(16, backend="cuda")
    with pytest.raises(TypeError, match="fuse_dfl"):
        focal_loss_callback(fuse_dfl="yes")
    with pytest.raises(TypeError, match="box loss"):
        patch_bbox_loss(object())


# --- the patched v8DetectionLoss on a model ------------------------------------------------


def tiny_model(cfg="yolov8n.yaml", seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = DetectionModel(cfg, nc=NC, verbose=False)
    model.args = get_cfg()  # what the trainer sets: the loss gains box / cls / dfl
    return model.to(dtype).train()


def synthetic_batch(seed=0, size=64, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return {
        "img": torch.rand(2, 3, size, size, generator=g, dtype=dtype),
        "batch_idx": torch.tensor([0.0, 0.0, 1.0]),
        "cls": torch.tensor([[0.0], [2.0], [1.0]]),
        "bboxes": torch.tensor([[0.3, 0.3, 0.4, 0.4], [0.7, 0.6, 0.3, 0.5], [0.5, 0.5, 0.6, 0.6]]),
    }


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml"])
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_patched_criterion_equals_v8_detection_loss(backend, cfg):
    """box, cls and dfl items and every parameter's gradient, ``fuse_dfl=True`` against the
    unpatched criterion; float64, so that a different summation order is not amplified through
    the network's layers."""
    model = tiny_model(cfg, dtype=torch.float64)
    batch = synthetic_batch(dtype=torch.float64)
    params = [p for p in model.parameters() if p.requires_grad]

    own_loss, own_items = v8DetectionLoss(model)(model(batch["img"]), batch)
    own_grads = torch.autograd.grad(own_loss.sum(), params)

    criterion = patch_criterion(v8DetectionLoss(model), fuse_dfl=True, backend=backend)
    assert isinstance(criterion.bbox_loss, FusedBboxLoss) and isinstance(criterion.bce, FusedClassificationLoss)
    loss, items = criterion(model(batch["img"]), batch)
    grads = torch.autograd.grad(loss.sum(), params)

    tol = dict(rtol=1e-7, atol=1e-9)
    assert float(own_items["dfl_loss"]) > 0
    assert_close(loss, own_loss, "loss (box, cls, dfl) x batch size", dtype=torch.float64, **tol)
    for name in own_items:
        assert_close(items[name], own_items[name], name, dtype=torch.float64, **tol)
    for got, want in zip(grads, own_grads):
        assert_close(got, want, "parameter gradient", dtype=torch.float64, **tol)


def test_patch_bbox_loss_alone_and_its_reach():
    """``patch_bbox_loss`` leaves the BCE as it is; both branches of an end-to-end loss are
    patched; patching again takes the new backend; the OBB loss's ``RotatedBboxLoss`` stays."""
    from ultralytics.nn.tasks import OBBModel
    from ultralytics.utils.loss import RotatedBboxLoss, v8OBBLoss

    model = tiny_model()
    criterion = patch_bbox_loss(v8DetectionLoss(model), backend="reference")
    assert isinstance(criterion.bbox_loss, FusedBboxLoss) and criterion.bbox_loss.reg_max == 16
    assert isinstance(criterion.bce, torch.nn.BCEWithLogitsLoss)
    patch_bbox_loss(criterion, backend="auto")
    assert criterion.bbox_loss.backend == "auto"

    e2e = patch_bbox_loss(E2EDetectLoss(model), backend="reference")
    assert isinstance(e2e.one2many.bbox_loss, FusedBboxLoss) and isinstance(e2e.one2one.bbox_loss, FusedBboxLoss)

    obb = OBBModel("yolov8n-obb.yaml", nc=NC, verbose=False)
    obb.args = get_cfg()
    obb_loss = patch_bbox_loss(v8OBBLoss(obb))
    assert type(obb_loss.bbox_loss) is RotatedBboxLoss


def test_enable_and_callback_fuse_dfl():
    model = enable_focal_loss(tiny_model(), fuse_dfl=True, backend="reference")
    assert isinstance(model.criterion.bbox_loss, FusedBboxLoss)
    assert not isinstance(enable_focal_loss(tiny_model()).criterion.bbox_loss, FusedBboxLoss)

    from types import SimpleNamespace

    trainer = SimpleNamespace(model=tiny_model(), ema=SimpleNamespace(ema=tiny_model(seed=1)))
    focal_loss_callback(gamma=1.5, alpha=0.25, fuse_dfl=True, backend="reference")(trainer)
    for each in (trainer.model, trainer.ema.ema):
        assert isinstance(each.criterion.bbox_loss, FusedBboxLoss)
        assert each.criterion.bce.gamma == 1.5


@pytest.mark.slow
def test_trains_a_few_steps(backend):
    """Five SGD steps with the fused classification and box losses lower the loss."""
    model = enable_focal_loss(tiny_model(), gamma=1.5, alpha=0.25, fuse_dfl=True, backend=backend)
    assert isinstance(model.criterion.bbox_loss, FusedBboxLoss)
    batch = synthetic_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(5):
        loss, items = model.loss(batch)
        assert torch.isfinite(loss).all() and float(items["dfl_loss"]) > 0
        optimizer.zero_grad()
        loss.sum().backward()
        optimizer.step()
        losses.append(loss.sum().item())
    assert losses[-1] < losses[0], losses
