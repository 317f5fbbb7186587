"""The RT-DETR label-loss drop-ins against the losses they replace, values and gradients.

* transformers: ``rt_detr_varifocal_loss_labels`` against ``RTDetrLoss.loss_labels_vfl`` on a
  criterion built from a tiny ``RTDetrConfig``, float32 and bfloat16, and the class-level patch
  through ``get_loss``, the criterion's forward (matcher, auxiliary outputs), D-FINE's inherited
  method and a tiny ``RTDetrForObjectDetection``'s training loss (denoising layers included);
  ``rt_detr_focal_loss_labels`` and ``rt_detr_bce_loss_labels`` against ``loss_labels_focal`` and
  ``loss_labels_bce`` the same way, on every backend, and a few training steps of a linear head.
* ultralytics: ``FusedVarifocalLoss`` against ``ultralytics.utils.loss.VarifocalLoss`` on
  ``DETRLoss``-style one-hot labels, ``patch_detr_loss`` on ``RTDETRDetectionLoss``, and an RT-DETR
  built from ``rtdetr-l.yaml``.

Each half is skipped where its package does not import. ultralytics is imported as in
tests/test_integration_ultralytics.py (torchvision's version supplied where it is missing).
"""

import copy
import os
import tempfile

import pytest
import torch
from helpers import (
    EAGER_BACKENDS,
    assert_close,
    assert_no_worse_than_torch,
    torchvision_sigmoid_focal_loss,
    torchvision_version_if_missing,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NC = 5

try:
    import transformers.loss.loss_rt_detr as loss_rt_detr
    from transformers import RTDetrConfig
    from transformers.loss.loss_rt_detr import RTDetrLoss

    from triton_focal.integrations import transformers as hf
except ImportError as err:  # transformers (or its vision helpers) missing
    RTDetrLoss, HF_MISSING = None, str(err)
else:
    HF_MISSING = None

os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="ultralytics-config-"))
os.environ.setdefault("YOLO_VERBOSE", "False")
try:
    with torchvision_version_if_missing():
        from ultralytics.models.utils.loss import DETRLoss, RTDETRDetectionLoss
        from ultralytics.nn.tasks import RTDETRDetectionModel
        from ultralytics.utils.loss import VarifocalLoss

    from triton_focal.integrations.ultralytics import FusedVarifocalLoss, enable_fused_varifocal, patch_detr_loss
except ImportError as err:
    VarifocalLoss, UL_MISSING = None, str(err)
else:
    UL_MISSING = None

needs_transformers = pytest.mark.skipif(HF_MISSING is not None, reason=f"transformers: {HF_MISSING}")
needs_ultralytics = pytest.mark.skipif(UL_MISSING is not None, reason=f"ultralytics: {UL_MISSING}")


def grad(loss, x):
    (g,) = torch.autograd.grad(loss, x)
    return g


def relative(dtype):
    """Both sides round in bfloat16 at different steps (transformers rounds every intermediate,
    ultralytics the weight): compare at a few bfloat16 ulps."""
    return dict(rtol=3e-2, atol=3e-3) if dtype == torch.bfloat16 else {}


def assert_gradients_match(grads, grads_expected, heads):
    """A model's parameter gradients: the classification heads (names containing one of ``heads``),
    next to the loss, element by element; the whole model by the norm of the difference. float32
    rounding of the loss's gradient grows through a backbone (ultralytics' stem gradient reaches 600)
    and leaves noise in gradients that cancel to about 0 (normalization biases: 1e-10 against 0)."""
    assert grads.keys() == grads_expected.keys()
    names = [name for name in grads if any(head in name for head in heads)]
    assert names
    for name in names:
        scale = float(grads_expected[name].abs().max())
        assert_close(grads[name], grads_expected[name], name, rtol=1e-4, atol=1e-6 * scale)
    flat = torch.cat([grads[name].flatten() for name in grads])
    flat_expected = torch.cat([grads_expected[name].flatten() for name in grads])
    assert float((flat - flat_expected).norm()) <= 1e-5 * float(flat_expected.norm())


# --- transformers ------------------------------------------------------------------------------


def rt_detr_criterion(**config):
    return RTDetrLoss(RTDetrConfig(num_labels=NC, **config)).to(DEVICE)


# get_loss's name -> the fused stand-in (by name: transformers may be missing)
FUSED = {"vfl": "rt_detr_varifocal_loss_labels", "bce": "rt_detr_bce_loss_labels", "focal": "rt_detr_focal_loss_labels"}


def runs_fused(criterion, loss="vfl"):
    """Whether ``criterion.get_loss(loss, ...)`` reaches the fused method (the patch's partialmethod)."""
    method = getattr(getattr(criterion, f"loss_labels_{loss}"), "func", None)
    return getattr(method, "__func__", None) is getattr(hf, FUSED[loss])


def rt_detr_batch(seed, dtype, batch=3, queries=9):
    """Logits, boxes, targets and matcher indices; image 1 has no targets, and one matched query's
    box lies away from its target (IoU 0: a positive with score 0)."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, queries, NC, generator=g) * 2).to(DEVICE, dtype).requires_grad_()
    boxes = torch.cat(
        [
            torch.rand(batch, queries, 2, generator=g) * 0.6 + 0.2,
            torch.rand(batch, queries, 2, generator=g) * 0.3 + 0.1,
        ],
        -1,
    )
    counts = [4, 0, 2][:batch]
    targets, indices = [], []
    for count in counts:
        centers = torch.rand(count, 2, generator=g) * 0.6 + 0.2
        sizes = torch.rand(count, 2, generator=g) * 0.3 + 0.1
        labels = torch.randint(0, NC, (count,), generator=g)
        targets.append({"class_labels": labels.to(DEVICE), "boxes": torch.cat([centers, sizes], -1).to(DEVICE)})
        query = torch.randperm(queries, generator=g)[:count]
        indices.append((query, torch.randperm(count, generator=g)))
    # query 0's box far from its target's (first image, matched to target indices[0][1][0])
    boxes[0, indices[0][0][0]] = torch.tensor([0.05, 0.05, 0.02, 0.02])
    targets[0]["boxes"][indices[0][1][0]] = torch.tensor([0.9, 0.9, 0.05, 0.05], device=DEVICE)
    return {"logits": logits, "pred_boxes": boxes.to(DEVICE)}, targets, indices, float(max(sum(counts), 1))


@needs_transformers
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", EAGER_BACKENDS)
def test_transformers_matches_loss_labels_vfl(backend, dtype):
    criterion = rt_detr_criterion()
    outputs, targets, indices, num_boxes = rt_detr_batch(0, dtype)
    expected = RTDetrLoss.loss_labels_vfl(criterion, outputs, targets, indices, num_boxes)
    got = hf.rt_detr_varifocal_loss_labels(criterion, outputs, targets, indices, num_boxes, backend=backend)
    assert got.keys() == expected.keys() == {"loss_vfl"}
    assert got["loss_vfl"].dtype == expected["loss_vfl"].dtype == dtype
    assert_close(got["loss_vfl"], expected["loss_vfl"], "loss_vfl", **relative(dtype))
    logits = outputs["logits"]
    assert_close(grad(got["loss_vfl"], logits), grad(expected["loss_vfl"], logits), "grad", **relative(dtype))


@needs_transformers
def test_transformers_alpha_gamma_and_tensor_num_boxes():
    criterion = rt_detr_criterion(focal_loss_alpha=0.5, focal_loss_gamma=1.5)
    outputs, targets, indices, num_boxes = rt_detr_batch(1, torch.float32)
    expected = RTDetrLoss.loss_labels_vfl(criterion, outputs, targets, indices, num_boxes)["loss_vfl"]
    got = hf.rt_detr_varifocal_loss_labels(criterion, outputs, targets, indices, torch.tensor([num_boxes]))
    assert_close(got["loss_vfl"], expected, "loss_vfl")


@needs_transformers
def test_transformers_bad_input():
    criterion = rt_detr_criterion()
    outputs, targets, indices, num_boxes = rt_detr_batch(0, torch.float32)
    with pytest.raises(ValueError, match=r"outputs\['logits'\]"):
        wrong = dict(outputs, logits=outputs["logits"][..., :-1])
        hf.rt_detr_varifocal_loss_labels(criterion, wrong, targets, indices, num_boxes)
    with pytest.raises(KeyError, match="logits"):
        hf.rt_detr_varifocal_loss_labels(criterion, {"pred_boxes": outputs["pred_boxes"]}, targets, indices, 1.0)
    with pytest.raises(ValueError, match="num_boxes"):
        hf.rt_detr_varifocal_loss_labels(criterion, outputs, targets, indices, torch.ones(2))
    with pytest.raises(ValueError, match="normalizer"):
        hf.rt_detr_varifocal_loss_labels(criterion, outputs, targets, indices, 0.0)
    with pytest.raises(ValueError, match="backend"):
        hf.enable_fused_rt_detr_varifocal("nope")
    assert "loss_labels_vfl" in RTDetrLoss.__dict__ and not isinstance(
        RTDetrLoss.__dict__["loss_labels_vfl"], __import__("functools").partialmethod
    )


@needs_transformers
def test_transformers_patch_through_get_loss_and_forward():
    pytest.importorskip("scipy")  # the Hungarian matcher
    criterion = rt_detr_criterion()
    outputs, targets, indices, num_boxes = rt_detr_batch(2, torch.float32)
    original = RTDetrLoss.__dict__["loss_labels_vfl"]
    expected_get = criterion.get_loss("vfl", outputs, targets, indices, num_boxes)["loss_vfl"]

    # the criterion's forward, with auxiliary outputs as RTDetrForObjectDetectionLoss passes them
    def full():
        aux = {"logits": outputs["logits"] * 0.5, "pred_boxes": outputs["pred_boxes"]}
        return dict(outputs, auxiliary_outputs=[aux])

    expected = criterion(full(), targets)
    grads_expected = grad(sum(expected.values()), outputs["logits"])
    with hf.fused_rt_detr_varifocal(backend=EAGER_BACKENDS[0]):
        assert RTDetrLoss.__dict__["loss_labels_vfl"] is not original
        got_get = criterion.get_loss("vfl", outputs, targets, indices, num_boxes)["loss_vfl"]
        got = criterion(full(), targets)
        grads = grad(sum(got.values()), outputs["logits"])
        fresh = rt_detr_criterion()  # a criterion built inside the block (the model builds one per forward)
        assert runs_fused(criterion) and runs_fused(fresh)
        assert_close(fresh.get_loss("vfl", outputs, targets, indices, num_boxes)["loss_vfl"], expected_get)
    assert RTDetrLoss.__dict__["loss_labels_vfl"] is original and not runs_fused(criterion)
    assert_close(got_get, expected_get, "get_loss")
    assert got.keys() == expected.keys() and "loss_vfl_aux_0" in got
    for key in expected:
        assert_close(got[key], expected[key], key)
    assert_close(grads, grads_expected, "grad")


@needs_transformers
def test_transformers_enable_disable():
    original = RTDetrLoss.__dict__["loss_labels_vfl"]
    try:
        hf.enable_fused_rt_detr_varifocal("reference")
        hf.enable_fused_rt_detr_varifocal(EAGER_BACKENDS[0])  # again: another backend, the original still kept
        criterion = rt_detr_criterion()
        outputs, targets, indices, num_boxes = rt_detr_batch(3, torch.float32)
        got = criterion.get_loss("vfl", outputs, targets, indices, num_boxes)["loss_vfl"]
        with hf.fused_rt_detr_varifocal("reference"):
            pass
        # the block restores the patch it found, backend included
        assert runs_fused(criterion) and criterion.loss_labels_vfl.keywords == {"backend": EAGER_BACKENDS[0]}
    finally:
        hf.disable_fused_rt_detr_varifocal()
    assert RTDetrLoss.__dict__["loss_labels_vfl"] is original
    expected = criterion.get_loss("vfl", outputs, targets, indices, num_boxes)["loss_vfl"]
    assert_close(got, expected, "loss_vfl")
    hf.disable_fused_rt_detr_varifocal()  # nothing to undo
    assert RTDetrLoss.__dict__["loss_labels_vfl"] is original


@needs_transformers
def test_transformers_patch_reaches_d_fine():
    """DFineLoss inherits loss_labels_vfl: the class-level patch gives it the fused method, same value."""
    try:
        from transformers import DFineConfig
        from transformers.loss.loss_d_fine import DFineLoss
    except ImportError:
        pytest.skip("this transformers has no D-FINE")
    criterion = DFineLoss(DFineConfig(num_labels=NC)).to(DEVICE)
    outputs, targets, indices, num_boxes = rt_detr_batch(4, torch.float32)
    expected = criterion.get_loss("vfl", outputs, targets, indices, num_boxes)["loss_vfl"]
    with hf.fused_rt_detr_varifocal("reference"):
        assert runs_fused(criterion)
        got = criterion.get_loss("vfl", outputs, targets, indices, num_boxes)["loss_vfl"]
    assert_close(got, expected, "loss_vfl")


def tiny_rt_detr():
    """An RTDetrForObjectDetection of 57k parameters (a 4-stage ResNet of 8-16 channels, d_model 16)."""
    from transformers import RTDetrForObjectDetection, RTDetrResNetConfig

    backbone = RTDetrResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], out_features=["stage2", "stage3", "stage4"]
    )
    config = RTDetrConfig(
        backbone_config=backbone,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        num_labels=4,
        d_model=16,
        encoder_hidden_dim=16,
        encoder_in_channels=[16, 16, 16],
        decoder_in_channels=[16, 16, 16],
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        decoder_layers=2,
        decoder_n_points=2,
        num_queries=12,
        num_denoising=6,
    )
    torch.manual_seed(0)
    return RTDetrForObjectDetection(config).to(DEVICE).train()


@needs_transformers
@pytest.mark.slow  # two training steps' forward and backward through the Triton interpreter (about 7 s)
def test_transformers_model_loss_and_gradients(monkeypatch):
    """The model's loss (the criterion it builds per forward: last, auxiliary and denoising layers) and
    every parameter's gradient, transformers' label loss against the patched one."""
    pytest.importorskip("scipy")  # the Hungarian matcher
    from triton_focal.losses import quality_focal

    model = tiny_rt_detr()
    g = torch.Generator().manual_seed(1)
    pixels = torch.rand(2, 3, 64, 64, generator=g).to(DEVICE)
    boxes = [[[0.5, 0.5, 0.4, 0.4], [0.3, 0.3, 0.2, 0.2]], [[0.6, 0.6, 0.3, 0.5]]]
    labels = [
        {"class_labels": torch.tensor(classes, device=DEVICE), "boxes": torch.tensor(b, device=DEVICE)}
        for classes, b in zip(([0, 3], [1]), boxes)
    ]

    def loss_and_grads():
        model.zero_grad()
        torch.manual_seed(2)  # the denoising queries' noise
        out = model(pixel_values=pixels, labels=labels)
        out.loss.backward()
        losses = {key: value.detach() for key, value in out.loss_dict.items()}
        return losses, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    expected, grads_expected = loss_and_grads()
    calls = []
    fused = quality_focal.varifocal_loss
    monkeypatch.setattr(quality_focal, "varifocal_loss", lambda *a, **k: calls.append(1) or fused(*a, **k))
    with hf.fused_rt_detr_varifocal(EAGER_BACKENDS[0]):
        got, grads = loss_and_grads()
    assert {"loss_vfl", "loss_vfl_aux_0", "loss_vfl_dn_0"} <= got.keys() == expected.keys()
    assert len(calls) == sum(key.startswith("loss_vfl") for key in got)
    for key in expected:
        assert_close(got[key], expected[key], key)
    assert_gradients_match(grads, grads_expected, heads=("class_embed", "score_head"))


# --- transformers: the focal and BCE label losses ----------------------------------------------

LABEL_LOSSES = ("focal", "bce")


def torchvision_focal_call(inputs, targets, alpha, gamma):
    """The call ``loss_labels_focal`` was written for, ``torchvision.ops.sigmoid_focal_loss(inputs,
    targets, alpha, gamma, reduction="none")``, on the one-hot in the logits' dtype."""
    return torchvision_sigmoid_focal_loss(inputs, targets.to(inputs.dtype), alpha, gamma)


def transformers_label_loss(loss, criterion, *args):
    """transformers' own ``RTDetrLoss.loss_labels_<loss>``. ``loss_labels_focal`` hands its int64
    one-hot and ``(alpha, gamma)`` to DETR's ``sigmoid_focal_loss(inputs, targets, num_boxes, alpha,
    gamma)`` and fails (test_transformers_own_loss_labels_focal): it runs here with its module's
    ``sigmoid_focal_loss`` replaced by the call it was written for, the rest of it as it is."""
    method = getattr(RTDetrLoss, f"loss_labels_{loss}")
    if loss != "focal":
        return method(criterion, *args)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loss_rt_detr, "sigmoid_focal_loss", torchvision_focal_call)
        return method(criterion, *args)


def fused_label_loss(loss, *args, **kwargs):
    return getattr(hf, FUSED[loss])(*args, **kwargs)


@needs_transformers
@pytest.mark.compile_sample
@pytest.mark.parametrize("num_boxes_as", ["float", "tensor"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("loss", LABEL_LOSSES)
def test_transformers_matches_label_losses(backend, loss, dtype, num_boxes_as):
    criterion = rt_detr_criterion()
    outputs, targets, indices, num_boxes = rt_detr_batch(0, dtype)
    key = f"loss_{loss}"
    # the normalizer as RTDetrLoss.forward passes it (a float), or as a one-element tensor
    normalizer = num_boxes if num_boxes_as == "float" else torch.tensor([num_boxes], device=DEVICE)
    expected = transformers_label_loss(loss, criterion, outputs, targets, indices, num_boxes)
    got = fused_label_loss(loss, criterion, outputs, targets, indices, normalizer, backend=backend)
    assert got.keys() == expected.keys() == {key}
    # BCE: float32 for bfloat16 logits (transformers' float32 target); focal: the logits' dtype
    assert got[key].dtype == expected[key].dtype == (torch.float32 if loss == "bce" else dtype)
    assert got[key].shape == expected[key].shape == ()
    # bfloat16: transformers rounds intermediates to bfloat16 (focal: all of them; BCE: its
    # log-sigmoid, before the float32 target promotes the rest), the fused loss computes in float32
    assert_close(got[key], expected[key], key, **relative(dtype))
    logits = outputs["logits"]
    if dtype != torch.float32:  # and is no further than transformers from transformers' own float64 loss
        exact = dict(outputs, logits=logits.detach().double())
        gold = transformers_label_loss(loss, criterion, exact, targets, indices, num_boxes)[key]
        assert_no_worse_than_torch(got[key], expected[key], gold, key)
    grad_got, grad_expected = grad(got[key], logits), grad(expected[key], logits)
    assert grad_got.dtype == dtype
    assert_close(grad_got, grad_expected, "grad", **relative(dtype))


@needs_transformers
@pytest.mark.parametrize("loss", LABEL_LOSSES)
@pytest.mark.parametrize("backend", EAGER_BACKENDS)
def test_transformers_label_losses_alpha_gamma_and_saturated_logits(backend, loss):
    """Other focal settings (alpha 0.25, gamma 1.5; BCE ignores them), and logits at +-40, where
    ``sigmoid`` rounds to 0 or 1 (BCE's gamma = 0 power of ``1 - p_t = 0``)."""
    criterion = rt_detr_criterion(focal_loss_alpha=0.25, focal_loss_gamma=1.5)
    outputs, targets, indices, num_boxes = rt_detr_batch(1, torch.float32)
    saturated = (outputs["logits"].detach().sign() * 40).requires_grad_()
    key = f"loss_{loss}"
    for logits in (outputs["logits"], saturated):
        batch = dict(outputs, logits=logits)
        expected = transformers_label_loss(loss, criterion, batch, targets, indices, num_boxes)[key]
        got = fused_label_loss(loss, criterion, batch, targets, indices, num_boxes, backend=backend)[key]
        assert torch.isfinite(got)
        assert_close(got, expected, key)
        grad_got = grad(got, logits)
        assert torch.isfinite(grad_got).all()
        assert_close(grad_got, grad(expected, logits), "grad")


@needs_transformers
def test_transformers_own_loss_labels_focal():
    """transformers' own loss_labels_focal, unpatched: where it runs, the fused loss equals it; where
    it fails as in 5.25 (an int64 one-hot into BCE, torchvision's arguments to DETR's
    sigmoid_focal_loss), it fails with that error, and the fused loss is finite."""
    criterion = rt_detr_criterion()
    outputs, targets, indices, num_boxes = rt_detr_batch(0, torch.float32)
    got = hf.rt_detr_focal_loss_labels(criterion, outputs, targets, indices, num_boxes)["loss_focal"]
    try:
        expected = RTDetrLoss.loss_labels_focal(criterion, outputs, targets, indices, num_boxes)["loss_focal"]
    except (RuntimeError, IndexError) as err:
        assert "cast" in str(err) or "out of range" in str(err), err
        assert torch.isfinite(got)
    else:
        assert_close(got, expected, "loss_focal")


@needs_transformers
@pytest.mark.parametrize("loss", LABEL_LOSSES)
def test_transformers_label_losses_bad_input(loss):
    criterion = rt_detr_criterion()
    outputs, targets, indices, num_boxes = rt_detr_batch(0, torch.float32)
    with pytest.raises(ValueError, match=r"outputs\['logits'\]"):
        wrong = dict(outputs, logits=outputs["logits"][..., :-1])
        fused_label_loss(loss, criterion, wrong, targets, indices, num_boxes)
    with pytest.raises(ValueError, match=r"outputs\['logits'\]"):
        fused_label_loss(loss, criterion, dict(outputs, logits=outputs["logits"][0]), targets, indices, num_boxes)
    with pytest.raises(KeyError, match="logits"):
        fused_label_loss(loss, criterion, {"pred_boxes": outputs["pred_boxes"]}, targets, indices, 1.0)
    with pytest.raises(ValueError, match="num_boxes"):
        fused_label_loss(loss, criterion, outputs, targets, indices, torch.ones(2))
    with pytest.raises(ValueError, match="normalizer"):
        fused_label_loss(loss, criterion, outputs, targets, indices, 0.0)


@needs_transformers
def test_transformers_enable_disable_all_label_losses():
    names = {loss: f"loss_labels_{loss}" for loss in FUSED}
    originals = {loss: RTDetrLoss.__dict__[name] for loss, name in names.items()}

    def patched():
        return {loss for loss, name in names.items() if RTDetrLoss.__dict__[name] is not originals[loss]}

    criterion = rt_detr_criterion()
    try:
        hf.enable_fused_rt_detr_losses("reference")
        assert patched() == set(FUSED) and all(runs_fused(criterion, loss) for loss in FUSED)
        hf.enable_fused_rt_detr_losses(EAGER_BACKENDS[-1], losses="focal")  # one loss's backend changed
        assert criterion.loss_labels_focal.keywords == {"backend": EAGER_BACKENDS[-1]}
        assert criterion.loss_labels_bce.keywords == {"backend": "reference"}
        with hf.fused_rt_detr_losses(EAGER_BACKENDS[-1], losses=("bce", "vfl")):
            assert criterion.loss_labels_bce.keywords == {"backend": EAGER_BACKENDS[-1]}
        # the block restores the patches it found, backends included
        assert criterion.loss_labels_bce.keywords == criterion.loss_labels_vfl.keywords == {"backend": "reference"}
        hf.disable_fused_rt_detr_varifocal()  # the Varifocal one alone
        assert patched() == {"bce", "focal"} and not runs_fused(criterion, "vfl")
    finally:
        hf.disable_fused_rt_detr_losses()
    assert patched() == set()
    hf.disable_fused_rt_detr_losses()  # nothing to undo
    assert patched() == set()

    with hf.fused_rt_detr_losses(EAGER_BACKENDS[0]):
        assert patched() == set(FUSED)
        fresh = rt_detr_criterion()  # a criterion built inside the block (the model builds one per forward)
        assert all(runs_fused(fresh, loss) for loss in FUSED)
    assert patched() == set()

    # an earlier Varifocal patch outlives a block over all three, and is still undone by its disable
    hf.enable_fused_rt_detr_varifocal("reference")
    try:
        with hf.fused_rt_detr_losses(EAGER_BACKENDS[-1]):
            assert patched() == set(FUSED)
        assert patched() == {"vfl"} and criterion.loss_labels_vfl.keywords == {"backend": "reference"}
    finally:
        hf.disable_fused_rt_detr_varifocal()
    assert patched() == set()

    for bad in ("labels", (), ("focal", "ce")):
        with pytest.raises(ValueError, match="losses"):
            hf.enable_fused_rt_detr_losses(losses=bad)
    with pytest.raises(ValueError, match="backend"):
        hf.enable_fused_rt_detr_losses("nope")
    with pytest.raises(ValueError, match="backend"):
        with hf.fused_rt_detr_losses("nope"):
            pass
    assert patched() == set()


@needs_transformers
@pytest.mark.parametrize("loss", LABEL_LOSSES)
def test_transformers_label_loss_patch_through_get_loss_and_forward(loss):
    """A criterion whose losses are ``[loss, "boxes"]`` (weighted as its config weights "vfl"): its
    forward (matcher, auxiliary outputs) with transformers' method and with the fused one."""
    pytest.importorskip("scipy")  # the Hungarian matcher
    criterion = rt_detr_criterion()
    criterion.losses = [loss, "boxes"]
    criterion.weight_dict[f"loss_{loss}"] = criterion.weight_dict["loss_vfl"]
    outputs, targets, indices, num_boxes = rt_detr_batch(2, torch.float32)

    def full():
        aux = {"logits": outputs["logits"] * 0.5, "pred_boxes": outputs["pred_boxes"]}
        return dict(outputs, auxiliary_outputs=[aux])

    with pytest.MonkeyPatch.context() as patch:
        if loss == "focal":
            patch.setattr(loss_rt_detr, "sigmoid_focal_loss", torchvision_focal_call)
        expected = criterion(full(), targets)
        expected_get = criterion.get_loss(loss, outputs, targets, indices, num_boxes)[f"loss_{loss}"]
    grads_expected = grad(sum(expected.values()), outputs["logits"])
    with hf.fused_rt_detr_losses(EAGER_BACKENDS[-1]):
        assert runs_fused(criterion, loss)
        got = criterion(full(), targets)
        got_get = criterion.get_loss(loss, outputs, targets, indices, num_boxes)[f"loss_{loss}"]
        grads = grad(sum(got.values()), outputs["logits"])
    assert not runs_fused(criterion, loss)
    assert got.keys() == expected.keys() and {f"loss_{loss}", f"loss_{loss}_aux_0"} <= got.keys()
    for key in expected:
        assert_close(got[key], expected[key], key)
    assert_close(got_get, expected_get, "get_loss")
    assert_close(grads, grads_expected, "grad")


@needs_transformers
@pytest.mark.parametrize("loss", LABEL_LOSSES)
@pytest.mark.parametrize("backend", EAGER_BACKENDS)
def test_transformers_label_loss_training_steps(backend, loss):
    """A linear head making the (B, Q, C) logits from fixed query features, trained a few SGD steps
    on transformers' loss and, from the same start, on the fused one through the patch: the same
    loss at step 0, the same trajectory to float32 rounding, finite throughout, and decreasing."""
    criterion = rt_detr_criterion()
    outputs, targets, indices, num_boxes = rt_detr_batch(5, torch.float32)
    key = f"loss_{loss}"
    features = torch.randn(*outputs["logits"].shape[:2], 8, generator=torch.Generator().manual_seed(6)).to(DEVICE)
    torch.manual_seed(0)
    heads = {"transformers": torch.nn.Linear(8, NC).to(DEVICE)}
    heads["fused"] = copy.deepcopy(heads["transformers"])
    history = {side: [] for side in heads}
    for side, head in heads.items():
        optimizer = torch.optim.SGD(head.parameters(), lr=0.5)
        for _ in range(6):
            batch = dict(outputs, logits=head(features))
            if side == "fused":
                with hf.fused_rt_detr_losses(backend):
                    value = criterion.get_loss(loss, batch, targets, indices, num_boxes)[key]
            else:
                value = transformers_label_loss(loss, criterion, batch, targets, indices, num_boxes)[key]
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            history[side].append(value.detach())
    got, expected = torch.stack(history["fused"]), torch.stack(history["transformers"])
    assert torch.isfinite(got).all()
    assert_close(got[0], expected[0], "step 0")
    assert_close(got, expected, "trajectory", rtol=1e-4, atol=1e-6)
    assert float(got[-1]) < 0.9 * float(got[0])
    assert_close(heads["fused"].weight, heads["transformers"].weight, "trained weight", rtol=1e-4, atol=1e-6)


# --- ultralytics -------------------------------------------------------------------------------


def detr_targets(seed, batch=2, queries=7, dtype=torch.float32):
    """``DETRLoss._get_loss_class``'s inputs: logits, ``iou * one_hot`` and the one-hot (int64),
    with a matched query whose IoU is 0."""
    g = torch.Generator().manual_seed(seed)
    pred = (torch.randn(batch, queries, NC, generator=g) * 2).to(DEVICE, dtype).requires_grad_()
    classes = torch.randint(0, NC + 1, (batch, queries), generator=g)
    classes[0, 0] = 2
    iou = torch.rand(batch, queries, generator=g)
    iou[0, 0] = 0.0
    one_hot = torch.zeros(batch, queries, NC + 1, dtype=torch.int64)
    one_hot.scatter_(2, classes.unsqueeze(-1), 1)
    one_hot = one_hot[..., :-1]
    gt_score = iou.view(batch, queries, 1) * one_hot
    return pred, gt_score.to(DEVICE), one_hot.to(DEVICE)


@needs_ultralytics
@pytest.mark.parametrize("multi_label", [False, True], ids=["one_positive", "multi_label"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", EAGER_BACKENDS)
def test_ultralytics_matches_varifocal_loss(backend, dtype, multi_label):
    pred, gt_score, label = detr_targets(0, dtype=dtype)
    for gamma, alpha in ((2.0, 0.75), (1.5, 0.25)):  # the class's defaults, DETRLoss's
        expected = VarifocalLoss(gamma, alpha)(pred, gt_score, label)
        got = FusedVarifocalLoss(gamma, alpha, multi_label=multi_label, backend=backend)(pred, gt_score, label)
        assert got.dtype == expected.dtype == torch.float32
        assert_close(got, expected, "loss", **relative(dtype))
        assert_close(grad(got, pred), grad(expected, pred), "grad", **relative(dtype))


@needs_ultralytics
def test_ultralytics_several_positives_per_row():
    pred, gt_score, label = detr_targets(1)
    label = label.clone()
    label[0, 1] = 1  # row (0, 1): every class positive
    gt_score = gt_score.clone()
    gt_score[0, 1] = torch.linspace(0.0, 1.0, NC)
    expected = VarifocalLoss()(pred, gt_score, label)
    got = FusedVarifocalLoss(multi_label=True)(pred, gt_score, label)
    assert_close(got, expected, "loss")
    assert_close(grad(got, pred), grad(expected, pred), "grad")
    with pytest.raises(ValueError, match="at most one positive.*multi_label=True"):
        FusedVarifocalLoss()(pred, gt_score, label)


@needs_ultralytics
def test_ultralytics_bad_input():
    pred, gt_score, label = detr_targets(2)
    loss = FusedVarifocalLoss()
    off_label = gt_score.clone()
    off_label[label == 0] = 0.5
    with pytest.raises(ValueError, match="gt_score must be 0 where label is 0"):
        loss(pred, off_label, label)
    with pytest.raises(ValueError, match="label must hold 0 and 1"):
        loss(pred, gt_score, label * 2)
    with pytest.raises(ValueError, match="label shape"):
        loss(pred, gt_score, label[..., :-1])
    with pytest.raises(TypeError, match="gt_score must be a floating-point"):
        loss(pred, label, label)
    with pytest.raises(TypeError, match="pred_score"):
        loss(label, gt_score, label)
    with pytest.raises(ValueError, match="pred_score must have at least 2"):
        loss(pred[0, 0], gt_score[0, 0], label[0, 0])
    with pytest.raises(ValueError, match="gamma"):
        FusedVarifocalLoss(gamma=-1.0)
    with pytest.raises(TypeError, match="multi_label"):
        FusedVarifocalLoss(multi_label=1)


def detr_batch(seed, queries=10, layers=2):
    """``DETRLoss.forward``'s inputs: (L, B, N, 4) boxes and (L, B, N, NC) logits, two images."""
    g = torch.Generator().manual_seed(seed)
    boxes = torch.cat(
        [
            torch.rand(layers, 2, queries, 2, generator=g) * 0.6 + 0.2,
            torch.rand(layers, 2, queries, 2, generator=g) * 0.3 + 0.1,
        ],
        -1,
    )
    scores = (torch.randn(layers, 2, queries, NC, generator=g) * 2).requires_grad_()
    gt_groups = [3, 2]
    gt_bboxes = torch.cat([torch.rand(5, 2, generator=g) * 0.6 + 0.2, torch.rand(5, 2, generator=g) * 0.3 + 0.1], -1)
    batch = {"cls": torch.randint(0, NC, (5,), generator=g), "bboxes": gt_bboxes, "gt_groups": gt_groups}
    return boxes, scores, batch


@needs_ultralytics
def test_ultralytics_patch_detr_loss():
    pytest.importorskip("scipy")  # the Hungarian matcher
    boxes, scores, batch = detr_batch(0)
    criterion = RTDETRDetectionLoss(nc=NC, use_vfl=True)
    expected = criterion((boxes, scores), batch)
    grads_expected = grad(sum(expected.values()), scores)
    assert patch_detr_loss(criterion, backend=EAGER_BACKENDS[0]) is criterion
    assert isinstance(criterion.vfl, FusedVarifocalLoss)
    assert (criterion.vfl.gamma, criterion.vfl.alpha) == (1.5, 0.25)
    got = criterion((boxes, scores), batch)
    assert got.keys() == expected.keys()
    for key in expected:
        assert_close(got[key], expected[key], key)
    assert_close(grad(sum(got.values()), scores), grads_expected, "grad")
    with pytest.raises(ValueError, match="no Varifocal Loss"):
        patch_detr_loss(DETRLoss(nc=NC, use_vfl=False))
    with pytest.raises(TypeError, match="DETRLoss"):
        patch_detr_loss(torch.nn.Module())


@needs_ultralytics
def test_ultralytics_enable_on_model_without_building_it():
    class Model(torch.nn.Module):  # what enable_fused_varifocal reads of an RTDETRDetectionModel
        def init_criterion(self):
            return RTDETRDetectionLoss(nc=NC, use_vfl=True)

    model = enable_fused_varifocal(Model(), backend="reference")
    assert isinstance(model.criterion.vfl, FusedVarifocalLoss)
    with pytest.raises(TypeError, match="init_criterion"):
        enable_fused_varifocal(torch.nn.Linear(1, 1))


@needs_ultralytics
@pytest.mark.slow  # two forward and backward passes of a 32M-parameter model (about 20 s on 2 cores)
def test_ultralytics_rt_detr_model_loss_and_gradients():
    """An RT-DETR built from rtdetr-l.yaml (no weights): the model's loss (denoising queries included,
    seeded alike) and every parameter's gradient, ultralytics' criterion against the patched one."""
    pytest.importorskip("scipy")  # the Hungarian matcher
    torch.manual_seed(0)
    model = RTDETRDetectionModel("rtdetr-l.yaml", nc=3, verbose=False).to(DEVICE).train()
    model.nc = 3  # the trainer sets it from the data set
    g = torch.Generator().manual_seed(1)
    batch = {
        "img": torch.rand(2, 3, 64, 64, generator=g),
        "batch_idx": torch.tensor([0.0, 0.0, 1.0]),
        "cls": torch.tensor([[0.0], [2.0], [1.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.5]]),
    }
    batch = {key: value.to(DEVICE) for key, value in batch.items()}

    def loss_and_grads():
        model.zero_grad()
        torch.manual_seed(2)  # the denoising queries' noise
        loss, items = model.loss(batch)
        loss.sum().backward()
        items = items if isinstance(items, dict) else {"items": items}
        return {"loss": loss.detach(), **items}, {
            name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None
        }

    expected, grads_expected = loss_and_grads()
    enable_fused_varifocal(model, backend=EAGER_BACKENDS[0])
    assert isinstance(model.criterion.vfl, FusedVarifocalLoss)
    got, grads = loss_and_grads()
    assert got.keys() == expected.keys()
    for key in expected:
        assert_close(got[key], expected[key], key)
    assert grads.keys() == grads_expected.keys()
    assert_gradients_match(grads, grads_expected, heads=("score_head",))
