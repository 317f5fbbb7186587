"""The detectron2 / fvcore drop-ins against ``fvcore.nn`` (values and gradients), and the class-index
form against detectron2's ``RetinaNet.losses`` classification term written with fvcore's functions
(detectron2 itself is not on PyPI; its loss code is transcribed in ``detectron2_retinanet_cls_loss``)."""

import pytest
import torch
import torch.nn.functional as F
from helpers import EAGER_BACKENDS, assert_close

fvcore_nn = pytest.importorskip("fvcore.nn", reason="fvcore is not installed (pip install fvcore)")

from triton_focal.integrations import detectron2 as d2  # noqa: E402

C = 5


@pytest.fixture(params=EAGER_BACKENDS)
def backend(request):
    """The eager backends (``helpers.EAGER_BACKENDS``: the core files test the compile one)."""
    return request.param


def logits_and_targets(shape=(3, 11, C), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype) * 2
    t = (torch.rand(shape, generator=g) > 0.8).to(dtype)
    return x, t


def _grad(loss, x):
    return torch.autograd.grad(loss.sum(), x)[0]


@pytest.mark.parametrize("alpha", [-1, 0.25])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_sigmoid_focal_loss_equals_fvcore(backend, alpha, gamma, reduction):
    x, t = logits_and_targets()
    x1 = x.clone().requires_grad_()
    ours = d2.sigmoid_focal_loss(x1, t, alpha, gamma, reduction, backend=backend)
    x2 = x.clone().requires_grad_()
    theirs = fvcore_nn.sigmoid_focal_loss(x2, t, alpha, gamma, reduction)
    assert ours.dtype == theirs.dtype == torch.float32  # fvcore computes in float32, even from float64
    assert_close(ours, theirs, "loss")
    assert_close(_grad(ours, x1), _grad(theirs, x2), "gradient", dtype=torch.float32)


def test_jit_alias_and_star_equal_fvcore(backend):
    x, t = logits_and_targets(dtype=torch.float32)
    assert_close(
        d2.sigmoid_focal_loss_jit(x, t, 0.25, 2, "sum", backend=backend),
        fvcore_nn.sigmoid_focal_loss_jit(x, t, 0.25, 2, "sum"),
        "jit alias",
    )
    for alpha, gamma in [(-1, 1), (0.25, 2.0)]:
        x1 = x.clone().requires_grad_()
        ours = d2.sigmoid_focal_loss_star(x1, t, alpha, gamma, "mean", backend=backend)
        x2 = x.clone().requires_grad_()
        theirs = fvcore_nn.sigmoid_focal_loss_star(x2, t, alpha, gamma, "mean")
        assert_close(ours, theirs, "FL* loss")
        assert_close(_grad(ours, x1), _grad(theirs, x2), "FL* gradient")


def test_half_inputs_give_float32_like_fvcore():
    x, t = logits_and_targets(dtype=torch.float32)
    ours = d2.sigmoid_focal_loss(x.half(), t.half(), 0.25, 2, "sum", backend="reference")
    theirs = fvcore_nn.sigmoid_focal_loss(x.half(), t.half(), 0.25, 2, "sum")
    assert ours.dtype == theirs.dtype == torch.float32
    assert_close(ours, theirs, "loss")


def detectron2_retinanet_cls_loss(pred_logits, gt_labels, num_classes, alpha, gamma, normalizer):
    """detectron2 ``RetinaNet.losses`` (classification term): one-hot of the valid anchors, fvcore's loss."""
    gt_labels = torch.stack(gt_labels)
    valid_mask = gt_labels >= 0
    gt_labels_target = F.one_hot(gt_labels[valid_mask], num_classes=num_classes + 1)[:, :-1]
    loss_cls = fvcore_nn.sigmoid_focal_loss_jit(
        torch.cat(pred_logits, dim=1)[valid_mask],
        gt_labels_target.to(pred_logits[0].dtype),
        alpha=alpha,
        gamma=gamma,
        reduction="sum",
    )
    return loss_cls / normalizer


def retinanet_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    levels = [torch.randn(2, r, C, generator=g) * 2 for r in (24, 6, 2)]  # per-level (N, R_i, C)
    labels = [torch.randint(-1, C + 1, (32,), generator=g) for _ in range(2)]  # -1 ignored, C background
    return levels, labels


def test_class_index_form_equals_retinanet_losses(backend):
    levels, labels = retinanet_batch()
    num_pos = sum(((l >= 0) & (l != C)).sum().item() for l in labels)
    normalizer = 0.9 * 100 + 0.1 * max(num_pos, 1)  # detectron2's EMA after one step
    ours_in = [x.clone().requires_grad_() for x in levels]
    ema = d2.EMANormalizer(momentum=0.9, initial=100)
    ours = d2.sigmoid_focal_loss_from_labels(
        ours_in,
        labels,
        alpha=0.25,
        gamma=2.0,
        normalizer=ema.update(d2.num_positive_anchors(labels, C)),
        backend=backend,
    )
    theirs_in = [x.clone().requires_grad_() for x in levels]
    theirs = detectron2_retinanet_cls_loss(theirs_in, labels, C, 0.25, 2.0, normalizer)
    assert isinstance(ema.value, torch.Tensor)
    assert_close(ema.value, torch.tensor(normalizer), "EMA normalizer", dtype=torch.float64, rtol=1e-6)
    assert_close(ours, theirs, "loss")
    for a, b in zip(torch.autograd.grad(ours, ours_in), torch.autograd.grad(theirs, theirs_in)):
        assert_close(a, b, "gradient")


def test_ignored_anchors_are_not_read(backend):
    levels, labels = retinanet_batch()
    logits = torch.cat(levels, dim=1)
    poisoned = logits.clone()
    poisoned[torch.stack(labels) == -1] = float("nan")
    clean = d2.sigmoid_focal_loss_from_labels(logits, labels, normalizer=3.0, backend=backend)
    assert_close(d2.sigmoid_focal_loss_from_labels(poisoned, labels, normalizer=3.0, backend=backend), clean, "loss")


def test_errors_name_the_argument():
    levels, labels = retinanet_batch()
    with pytest.raises(ValueError, match="gt_labels has 31 anchors"):
        d2.sigmoid_focal_loss_from_labels(levels, [labels[0][:31]], backend="reference")
    with pytest.raises(TypeError, match="gt_labels must hold integer"):
        d2.sigmoid_focal_loss_from_labels(levels, [l.float() for l in labels], backend="reference")
    with pytest.raises(ValueError, match="reduction must be"):
        d2.sigmoid_focal_loss(levels[0], levels[0].sigmoid(), reduction="avg")
    with pytest.raises(TypeError, match="inputs must be a floating-point tensor"):
        d2.sigmoid_focal_loss([1.0], torch.ones(1))
    with pytest.raises(ValueError, match="normalizer"):
        d2.sigmoid_focal_loss_from_labels(levels, labels, normalizer=-2.0, backend="reference")


def test_trains_a_few_steps(backend):
    torch.manual_seed(0)
    head = torch.nn.Conv2d(4, C, 3, padding=1)
    features = torch.randn(2, 4, 6, 6)
    labels = (features.abs().argmax(1) + 1) % (C + 1)  # C = background
    labels[:, 0, 0] = -1
    ema = d2.EMANormalizer()
    optimizer = torch.optim.SGD(head.parameters(), lr=0.5)
    losses = []
    for _ in range(6):
        logits = head(features).permute(0, 2, 3, 1).reshape(2, -1, C)  # detectron2's (N, HWA, C)
        loss = d2.sigmoid_focal_loss_from_labels(
            logits, labels.reshape(2, -1), normalizer=ema.update(d2.num_positive_anchors(labels, C)), backend=backend
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
