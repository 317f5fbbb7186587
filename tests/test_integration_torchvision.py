"""torchvision RetinaNet's classification loss from class indices.

Against ``RetinaNetClassificationHead.compute_loss`` itself where torchvision imports, and everywhere
against that method transcribed below from torchvision 0.28 (with ``torchvision.ops.sigmoid_focal_loss``
transcribed in ``helpers``): a torchvision wheel built for CUDA, or for another torch, fails to import
beside a CPU torch. ``.ci/run`` runs this file once more in an environment of its own where torchvision
0.29.1 imports (beside torch 2.14.1), so the real head is checked on every CI run.
"""

import pytest
import torch
from helpers import EAGER_BACKENDS, assert_close, torchvision_sigmoid_focal_loss

from triton_focal.integrations import torchvision as tf_tv


@pytest.fixture(params=EAGER_BACKENDS)
def backend(request):
    """The eager backends (``helpers.EAGER_BACKENDS``: the core files test the compile one)."""
    return request.param


def _torchvision_head():
    try:
        from torchvision.models.detection.retinanet import RetinaNetClassificationHead
    except Exception as err:  # noqa: BLE001 - a broken build raises RuntimeError or OSError too
        return None, f"torchvision does not import here ({type(err).__name__}: {err})"
    return RetinaNetClassificationHead, None


HEAD, HEAD_MISSING = _torchvision_head()
needs_torchvision = pytest.mark.skipif(HEAD is None, reason=str(HEAD_MISSING))

C = 6


def torchvision_compute_loss(targets, head_outputs, matched_idxs):
    """``RetinaNetClassificationHead.compute_loss`` of torchvision 0.28, transcribed."""
    losses = []
    cls_logits = head_outputs["cls_logits"]
    for targets_per_image, cls_logits_per_image, matched_idxs_per_image in zip(targets, cls_logits, matched_idxs):
        foreground_idxs_per_image = matched_idxs_per_image >= 0
        num_foreground = foreground_idxs_per_image.sum()
        gt_classes_target = torch.zeros_like(cls_logits_per_image)
        gt_classes_target[
            foreground_idxs_per_image,
            targets_per_image["labels"][matched_idxs_per_image[foreground_idxs_per_image]],
        ] = 1.0
        valid_idxs_per_image = matched_idxs_per_image != -2
        losses.append(
            torchvision_sigmoid_focal_loss(
                cls_logits_per_image[valid_idxs_per_image], gt_classes_target[valid_idxs_per_image], reduction="sum"
            )
            / max(1, num_foreground)
        )
    total = losses[0]
    for loss in losses[1:]:
        total = total + loss
    return total / len(targets)


def batch(seed=0, anchors=40, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    cls_logits = torch.randn(3, anchors, C, generator=g, dtype=dtype) * 2
    targets = [
        {"labels": torch.tensor([2, 5, 0])},
        {"labels": torch.tensor([1])},
        {"labels": torch.zeros(0, dtype=torch.int64)},
    ]  # the third image has no boxes
    matched = [
        torch.randint(-2, 3, (anchors,), generator=g),
        torch.randint(-2, 1, (anchors,), generator=g),
        torch.randint(-2, 0, (anchors,), generator=g),
    ]
    return targets, cls_logits, matched


def test_equals_torchvisions_compute_loss(backend):
    targets, logits, matched = batch()
    x = logits.clone().requires_grad_()
    ours = tf_tv.retinanet_classification_loss(targets, {"cls_logits": x}, matched, backend=backend)
    xr = logits.clone().requires_grad_()
    theirs = torchvision_compute_loss(targets, {"cls_logits": xr}, matched)
    assert_close(ours, theirs, "loss")
    assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(theirs, xr)[0], "gradient")


def test_anchor_labels():
    targets, _, matched = batch(anchors=8)
    labels = tf_tv.anchor_labels(targets, matched, C)
    for i, (t, m) in enumerate(zip(targets, matched)):
        for a in range(8):
            expected = -2 if m[a] == -2 else (C if m[a] < 0 else int(t["labels"][m[a]]))
            assert int(labels[i, a]) == expected


def test_errors_name_the_argument():
    targets, logits, matched = batch()
    with pytest.raises(ValueError, match="targets has 2 images"):
        tf_tv.retinanet_classification_loss(targets[:2], {"cls_logits": logits}, matched[:2])
    with pytest.raises(ValueError, match="cls_logits"):
        tf_tv.retinanet_classification_loss(targets, {"cls_logits": logits[0]}, matched)
    with pytest.raises(TypeError, match=r"targets\[0\]\['labels'\] must hold integer"):
        tf_tv.retinanet_classification_loss([{"labels": torch.ones(3)}] + targets[1:], {"cls_logits": logits}, matched)


def test_trains_a_few_steps(backend):
    torch.manual_seed(0)
    head = torch.nn.Linear(5, C)
    features = torch.randn(3, 40, 5)
    targets, _, matched = batch()
    optimizer = torch.optim.SGD(head.parameters(), lr=1.0)
    losses = []
    for _ in range(6):
        loss = tf_tv.retinanet_classification_loss(targets, {"cls_logits": head(features)}, matched, backend=backend)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


@needs_torchvision
def test_equals_the_real_head_and_swaps_in_place():
    torch.manual_seed(0)
    head = HEAD(in_channels=8, num_anchors=2, num_classes=C)
    features = [torch.randn(3, 8, 4, 5), torch.randn(3, 8, 2, 2)]
    cls_logits = head(features)
    targets, _, _ = batch()
    g = torch.Generator().manual_seed(1)
    matched = [torch.randint(-2, n, (cls_logits.shape[1],), generator=g) for n in (3, 1, 0)]
    expected = head.compute_loss(targets, {"cls_logits": cls_logits}, matched)
    state = {k: v.clone() for k, v in head.state_dict().items()}
    tf_tv.use_fused_classification_loss(head, backend="reference")
    assert isinstance(head, HEAD) and type(head).__name__ == "TritonFocalRetinaNetClassificationHead"
    assert all(torch.equal(v, head.state_dict()[k]) for k, v in state.items())
    assert_close(head.compute_loss(targets, {"cls_logits": cls_logits}, matched), expected, "loss")
