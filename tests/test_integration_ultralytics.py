"""The ultralytics patch on YOLOv8 / YOLO11 detection models built from their yaml (no weights).

The patched criterion equals ultralytics' own ``v8DetectionLoss`` (box, cls and dfl items, and the
gradient of every parameter) at gamma 0, class weights included; with gamma and alpha it is
ultralytics' ``FocalLoss`` per element; a few SGD steps on a synthetic batch lower the loss.

ultralytics reads ``importlib.metadata.version("torchvision")`` when it is imported and uses
torchvision only for NMS, exports and some transforms, none of which a loss needs. Where torchvision
is not installed (no CPU build of it matches this torch), that one lookup is answered with "0.0"
while ultralytics is imported.
"""

import os
import tempfile
from types import SimpleNamespace

import pytest
import torch
from helpers import EAGER_BACKENDS, assert_close, torchvision_version_if_missing

os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="ultralytics-config-"))
os.environ.setdefault("YOLO_VERBOSE", "False")
with torchvision_version_if_missing():
    ultralytics = pytest.importorskip("ultralytics")
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.loss import FocalLoss, v8DetectionLoss

from triton_focal.integrations.ultralytics import (  # noqa: E402
    FusedClassificationLoss,
    enable_focal_loss,
    focal_loss_callback,
    patch_criterion,
)

NC = 3


@pytest.fixture(params=EAGER_BACKENDS)
def backend(request):
    """The eager backends (``helpers.EAGER_BACKENDS``: the core files test the compile one)."""
    return request.param


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


def _params(model):
    return [p for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml"])
@pytest.mark.parametrize("class_weights", [False, True])
def test_patched_criterion_equals_v8_detection_loss(backend, cfg, class_weights):
    # float64, so that a different summation order is not amplified through the network's layers
    model = tiny_model(cfg, dtype=torch.float64)
    if class_weights:
        model.class_weights = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    batch = synthetic_batch(dtype=torch.float64)
    params = _params(model)

    preds = model(batch["img"])
    own_loss, own_items = v8DetectionLoss(model)(preds, batch)
    own_grads = torch.autograd.grad(own_loss.sum(), params)

    criterion = patch_criterion(v8DetectionLoss(model), backend=backend)
    assert isinstance(criterion.bce, FusedClassificationLoss) and criterion.class_weights is None
    preds = model(batch["img"])
    loss, items = criterion(preds, batch)
    grads = torch.autograd.grad(loss.sum(), params)
    tol = dict(rtol=1e-7, atol=1e-9)
    assert_close(loss, own_loss, "loss (box, cls, dfl) x batch size", dtype=torch.float64, **tol)
    for name in own_items:
        assert_close(items[name], own_items[name], name, dtype=torch.float64, **tol)
    for got, want in zip(grads, own_grads):
        assert_close(got, want, "parameter gradient", **tol)


@pytest.mark.parametrize("gamma,alpha", [(1.5, 0.25), (2.0, 0.0)])
def test_focal_setting_is_ultralytics_focal_loss(backend, gamma, alpha):
    """ultralytics' FocalLoss returns loss.mean(1).sum(); the fused one sums, so it is A times larger."""
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 21, NC, generator=g)
    label = torch.rand(2, 21, NC, generator=g) * (torch.rand(2, 21, NC, generator=g) > 0.7)
    x = pred.clone().requires_grad_()
    ours = FusedClassificationLoss(gamma=gamma, alpha=alpha, backend=backend)(x, label)
    xr = pred.clone().requires_grad_()
    theirs = FocalLoss(gamma=gamma, alpha=alpha)(xr, label) * pred.shape[1]
    assert_close(ours, theirs, "loss", rtol=1e-5, atol=1e-6)
    assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(theirs, xr)[0], "gradient", rtol=1e-4, atol=1e-7)


def test_end_to_end_loss_branches_are_patched():
    from ultralytics.utils.loss import E2EDetectLoss

    model = tiny_model()
    criterion = patch_criterion(E2EDetectLoss(model), gamma=1.0, backend="reference")
    assert isinstance(criterion.one2many.bce, FusedClassificationLoss)
    assert isinstance(criterion.one2one.bce, FusedClassificationLoss)
    with pytest.raises(TypeError, match="not a v8DetectionLoss"):
        patch_criterion(object())


def test_bad_settings_fail_when_made():
    with pytest.raises(ValueError, match="gamma"):
        focal_loss_callback(gamma=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        FusedClassificationLoss(alpha=1.5)
    with pytest.raises(TypeError, match="ultralytics model"):
        enable_focal_loss(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml"])
def test_trains_a_few_steps(backend, cfg):
    model = enable_focal_loss(tiny_model(cfg), gamma=1.5, alpha=0.25, backend=backend)
    assert isinstance(model.criterion.bce, FusedClassificationLoss)
    batch = synthetic_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(5):
        loss, items = model.loss(batch)
        optimizer.zero_grad()
        loss.sum().backward()
        optimizer.step()
        losses.append(loss.sum().item())
        assert torch.isfinite(loss).all()
    assert losses[-1] < losses[0], losses


def test_yolo_wrapper_and_trainer_callback():
    """``YOLO('yolov8n.yaml')`` (no download) and the callback on a trainer's model and EMA."""
    with torchvision_version_if_missing():
        from ultralytics import YOLO

    yolo = YOLO("yolov8n.yaml")
    yolo.model.args = get_cfg()
    assert enable_focal_loss(yolo, backend="reference") is yolo
    assert isinstance(yolo.model.criterion.bce, FusedClassificationLoss)

    trainer = SimpleNamespace(model=tiny_model(), ema=SimpleNamespace(ema=tiny_model(seed=1)))
    focal_loss_callback(gamma=2.0, alpha=0.25, backend="reference")(trainer)
    for model in (trainer.model, trainer.ema.ema):
        assert isinstance(model.criterion.bce, FusedClassificationLoss) and model.criterion.bce.gamma == 2.0
