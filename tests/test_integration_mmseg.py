"""``triton_focal.integrations.mmseg.TritonFocalLoss`` against mmseg's own ``FocalLoss``.

Where mmseg is installed, ``mmseg/models/losses/focal_loss.py`` is the reference: its
``py_sigmoid_focal_loss`` (given the one-hot target and the valid-pixel mask that its CUDA path
builds from class indices: its CPU path picks column ``C`` of the one-hot, so class-index targets
fail there) and ``FocalLoss.forward`` on dense targets. As for mmdet, ``mmseg.models`` imports mmcv's
compiled ops; with an mmcv built without them the loss file is loaded alone, ``mmcv.ops`` stubbed
during the load. Without mmseg the formulas of that file, written out below, stand in.
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import EAGER_BACKENDS, assert_close
from openmmlab_helpers import build_from_config, load_focal_loss, training_losses

from triton_focal.integrations.mmseg import TritonFocalLoss

EPS = torch.finfo(torch.float32).eps


MMSEG, MMSEG_MISSING = load_focal_loss("mmseg", "mmsegmentation is not installed (pip install mmsegmentation mmengine)")


@pytest.fixture(params=EAGER_BACKENDS)
def backend(request):
    """The eager backends (``helpers.EAGER_BACKENDS``: the core files test the compile one)."""
    return request.param


def mmseg_py_sigmoid_focal_loss(
    pred,
    target,
    weight=None,
    gamma=2.0,
    alpha=0.5,
    class_weight=None,
    valid_mask=None,
    reduction="mean",
    avg_factor=None,
):
    """mmseg's ``py_sigmoid_focal_loss`` on ``(N, C)`` rows (the real one where it loads)."""
    if MMSEG is not None:
        return MMSEG.py_sigmoid_focal_loss(
            pred,
            target,
            None,
            weight,
            gamma=gamma,
            alpha=alpha,
            class_weight=class_weight,
            valid_mask=valid_mask,
            reduction=reduction,
            avg_factor=avg_factor,
        )
    if isinstance(alpha, list):
        alpha = pred.new_tensor(alpha)
    p = pred.sigmoid()
    target = target.type_as(pred)
    pt = (1 - p) * target + p * (1 - target)
    loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none") * (
        (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    )
    final = torch.ones(1, pred.size(1)).type_as(loss)
    if weight is not None:
        final = final * (weight.view(-1, 1) if weight.shape != loss.shape else weight)
    if class_weight is not None:
        final = final * pred.new_tensor(class_weight)
    if valid_mask is not None:
        final = final * valid_mask
    loss = loss * final
    if avg_factor is None:
        return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]
    return loss.sum() / (avg_factor + EPS) if reduction == "mean" else loss


def rows(x):
    """(B, C, H, W) -> (B*H*W, C), mmseg's flattening."""
    return x.transpose(0, 1).reshape(x.shape[1], -1).transpose(0, 1)


def mmseg_index_reference(pred, labels, ignore_index=255, **kwargs):
    """mmseg's FocalLoss on class indices, as its CUDA path defines it: one-hot over C, ignored pixels masked."""
    c = pred.shape[1]
    flat = labels.reshape(-1)
    valid = (flat != ignore_index).view(-1, 1)
    flat = torch.where(flat == ignore_index, torch.zeros_like(flat), flat)
    one_hot = F.one_hot(flat, c + 1)[:, 1] if c == 1 else F.one_hot(flat, c + 1)[:, :c]
    one_hot = one_hot.reshape(-1, c)
    return mmseg_py_sigmoid_focal_loss(rows(pred), one_hot, valid_mask=valid, **kwargs)


def segmentation(c=4, seed=0, shape=(2, 5, 6)):
    g = torch.Generator().manual_seed(seed)
    b, h, w = shape
    pred = torch.randn(b, c, h, w, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, c, (b, h, w), generator=g)
    labels[0, 0, :3] = 255
    return pred, labels


def _grad(loss, x):
    return torch.autograd.grad(loss, x)[0]


@pytest.mark.parametrize("alpha", [0.5, 0.25, [0.2, 0.4, 0.6, 0.8]])
@pytest.mark.parametrize("reduction,avg_factor", [("mean", None), ("mean", 13.0), ("sum", None)])
@pytest.mark.parametrize("with_weight", [False, True])
def test_sigmoid_class_indices_equal_mmseg(backend, alpha, reduction, avg_factor, with_weight):
    pred, labels = segmentation()
    class_weight = [1.0, 0.5, 2.0, 1.5]
    pixel_weight = torch.rand(labels.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = pred.clone().requires_grad_()
    loss = TritonFocalLoss(
        gamma=2.0, alpha=alpha, reduction=reduction, class_weight=class_weight, loss_weight=0.5, backend=backend
    )
    ours = loss(x, labels, pixel_weight if with_weight else None, avg_factor=avg_factor, ignore_index=255)
    xr = pred.clone().requires_grad_()
    theirs = 0.5 * mmseg_index_reference(
        xr,
        labels,
        alpha=alpha,
        class_weight=class_weight,
        reduction=reduction,
        avg_factor=avg_factor,
        weight=pixel_weight.reshape(-1) if with_weight else None,
    )
    assert_close(ours, theirs, "loss")
    assert_close(_grad(ours, x), _grad(theirs, xr), "gradient")


def test_weight_shapes_agree(backend):
    pred, labels = segmentation()
    w = torch.rand(labels.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    loss = TritonFocalLoss(backend=backend)
    expected = loss(pred, labels, w)
    assert_close(loss(pred, labels, w.reshape(-1)), expected, "flattened (N*H*W,)")
    assert_close(loss(pred, labels, w.reshape(-1, 1)), expected, "flattened (N*H*W, 1)")
    per_element = w.unsqueeze(1).expand(-1, 4, -1, -1)
    assert_close(loss(pred, labels, per_element), expected, "(N, C, H, W)")
    assert_close(loss(pred, labels, rows(per_element).contiguous()), expected, "flattened (N*H*W, C)")
    with pytest.raises(ValueError, match=r"weight has shape \(7,\)"):
        loss(pred, labels, torch.ones(7))


def test_none_reduction_has_preds_shape(backend):
    pred, labels = segmentation()
    ours = TritonFocalLoss(reduction="none", backend=backend)(pred, labels)
    assert ours.shape == pred.shape
    theirs = mmseg_index_reference(pred, labels, reduction="none")  # (N*H*W, C)
    assert_close(rows(ours), theirs, "per element")


def test_binary_single_channel_label_one_is_positive(backend):
    pred, labels = segmentation(c=1)
    labels = torch.randint(0, 2, labels.shape, generator=torch.Generator().manual_seed(3))
    labels[0, 0, 0] = 255
    x = pred.clone().requires_grad_()
    ours = TritonFocalLoss(backend=backend)(x, labels)
    xr = pred.clone().requires_grad_()
    theirs = mmseg_index_reference(xr, labels)
    assert_close(ours, theirs, "loss")
    assert_close(_grad(ours, x), _grad(theirs, xr), "gradient")


@pytest.mark.parametrize("ignore_index", [255, 2])
def test_dense_targets_equal_mmseg_forward(backend, ignore_index):
    pred, _ = segmentation()
    target = torch.rand(pred.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x = pred.clone().requires_grad_()
    ours = TritonFocalLoss(alpha=0.25, backend=backend)(x, target, ignore_index=ignore_index)
    xr = pred.clone().requires_grad_()
    if MMSEG is not None:
        theirs = MMSEG.FocalLoss(alpha=0.25)(xr, target, ignore_index=ignore_index)
    else:
        valid = (rows(target).argmax(1) != ignore_index).view(-1, 1)
        theirs = mmseg_py_sigmoid_focal_loss(rows(xr), rows(target), alpha=0.25, valid_mask=valid)
    assert_close(ours, theirs, "loss")
    assert_close(_grad(ours, x), _grad(theirs, xr), "gradient")


def test_softmax_on_nchw_as_is(backend):
    """use_sigmoid=False: softmax focal of (N, C, H, W) logits, mmseg CrossEntropyLoss's mean."""
    pred, labels = segmentation()
    class_weight = [1.0, 0.5, 2.0, 1.5]
    x = pred.clone().requires_grad_()
    ours = TritonFocalLoss(use_sigmoid=False, gamma=0.0, class_weight=class_weight, backend=backend)(x, labels)
    xr = pred.clone().requires_grad_()
    ce = F.cross_entropy(
        xr, labels, weight=torch.tensor(class_weight, dtype=torch.float64), ignore_index=255, reduction="none"
    )
    theirs = ce.sum() / labels.numel()  # mmseg's mean: all pixels, class weights not in the divisor
    tol = dict(dtype=torch.float32)
    assert_close(ours, theirs, "loss", **tol)
    assert_close(_grad(ours, x), _grad(theirs, xr), "gradient", **tol)
    non_ignore = TritonFocalLoss(use_sigmoid=False, gamma=0.0, avg_non_ignore=True, backend=backend)(pred, labels)
    ce = F.cross_entropy(pred, labels, ignore_index=255, reduction="none")
    assert_close(non_ignore, ce.sum() / ((labels != 255).sum() + EPS), "avg_non_ignore", **tol)


def test_loss_name_and_errors():
    loss = TritonFocalLoss(loss_name="loss_tfocal")
    assert loss.loss_name == "loss_tfocal" and TritonFocalLoss().loss_name == "loss_focal"
    pred, labels = segmentation()
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        loss(pred, labels, ignore_index=2.5)
    with pytest.raises(ValueError, match="does not match pred"):
        loss(pred, labels[:, :3])
    with pytest.raises(ValueError, match="class_weight has 2 values"):
        TritonFocalLoss(class_weight=[1.0, 2.0], backend="reference")(pred, labels)
    with pytest.raises(ValueError, match="alpha for use_sigmoid=False"):
        TritonFocalLoss(use_sigmoid=False, alpha=0.5)
    with pytest.raises(ValueError, match='avg_factor can not be used with reduction="sum"'):
        TritonFocalLoss(reduction="sum")(pred, labels, avg_factor=2.0)


def test_registered_and_built_from_a_config(tmp_path):
    loss = build_from_config(
        tmp_path,
        "mmseg",
        "seg_focal.py",
        "loss_decode",
        "type='TritonFocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.5, loss_weight=1.0, loss_name='loss_focal',"
        " backend='reference'",
    )
    assert isinstance(loss, TritonFocalLoss) and loss.loss_name == "loss_focal"
    pred, labels = segmentation()
    assert_close(loss(pred, labels), mmseg_index_reference(pred, labels), "built loss")


def test_trains_a_tiny_segmentation_head(backend):
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 4, 3, padding=1)
    images = torch.randn(2, 3, 8, 8)
    labels = images.abs().argmax(1) % 4
    labels[:, 0] = 255
    loss_fn = TritonFocalLoss(backend=backend)
    losses = training_losses(net, lambda: loss_fn(net(images), labels), 1.0)
    assert losses[-1] < losses[0], losses
