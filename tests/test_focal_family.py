"""The focal family's sigmoid losses: Quality Focal Loss, Varifocal Loss, Asymmetric Loss and
Poly-1 on the sigmoid focal loss, on every backend, against their sources' formulas written out
here in float64 and against the installed peers (mmdetection's ``varifocal_loss``, ultralytics'
``VarifocalLoss``)."""

import pytest
import torch
import torch.nn.functional as F
from helpers import BACKENDS, DEVICE, assert_close, torchvision_version_if_missing
from openmmlab_helpers import load_focal_loss

import triton_focal

# --- the sources' formulas, float64 ------------------------------------------------------------


def bce(x, t):
    return F.binary_cross_entropy_with_logits(x, t, reduction="none")


def qfl_source(x, t, beta):
    """mmdetection ``quality_focal_loss_tensor_target`` (and, for one-hot scores, ``quality_focal_loss``)."""
    return bce(x, t) * (x.sigmoid() - t).abs().pow(beta)


def vfl_source(x, t, positive, alpha, gamma, iou_weighted=True, detach=False):
    """mmdetection ``varifocal_loss`` (dense, ``t > 0`` positive); ultralytics and RT-DETR
    (one-hot label positive; ``detach``: RT-DETR's ``pred_score.detach()``)."""
    s = x.sigmoid().detach() if detach else x.sigmoid()
    w = torch.where(positive, t if iou_weighted else torch.ones_like(t), alpha * s.pow(gamma))
    return bce(x, t) * w


def asl_source(x, y, gamma_pos, gamma_neg, clip, eps, detach=False):
    """Alibaba-MIIL ``AsymmetricLoss.forward``, per element (the source sums)."""
    xs_pos = torch.sigmoid(x)
    xs_neg = 1 - xs_pos
    if clip is not None and clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    los_pos = y * torch.log(xs_pos.clamp(min=eps))
    los_neg = (1 - y) * torch.log(xs_neg.clamp(min=eps))
    loss = los_pos + los_neg
    if gamma_neg > 0 or gamma_pos > 0:
        with torch.no_grad() if detach else torch.enable_grad():
            pt = xs_pos * y + xs_neg * (1 - y)
            w = torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))
        loss = loss * w
    return -loss


def poly_focal_source(x, t, alpha, gamma, epsilon):
    """The PolyLoss paper's ``poly1_focal_loss``: ``FL + epsilon * (1 - pt) ** (gamma + 1)``."""
    p = torch.sigmoid(x)
    pt = t * p + (1 - t) * (1 - p)
    fl = bce(x, t) * (1 - pt) ** gamma
    if alpha >= 0:
        fl = (alpha * t + (1 - alpha) * (1 - t)) * fl
    return fl + epsilon * torch.pow(1 - pt, gamma + 1)


def index_inputs(n=37, c=11, p=None, dtype=torch.float32, seed=0, scale=3.0, device=DEVICE):
    """Logits, class indices with background ``c`` and a few ignored rows, and scores."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, c) if p is None else (n, c, p)
    x = (torch.randn(shape, generator=g) * scale).to(dtype)
    rows = (n,) if p is None else (n, p)
    label = torch.randint(0, c + 1, rows, generator=g)
    label[torch.rand(rows, generator=g) < 0.1] = -100
    score = torch.rand(rows, generator=g)
    return x.to(device), label.to(device), score.to(device)


def dense_from_index(x, label, score):
    """The one-hot-times-score dense target, its positives and the row mask (ignored rows False)."""
    c = x.shape[1]
    classes = torch.arange(c, device=x.device).view(1, c, *([1] * (x.dim() - 2)))
    positive = label.unsqueeze(1) == classes
    t = positive.double() * score.double().unsqueeze(1)
    return t, positive, (label != -100).unsqueeze(1).expand_as(positive)


def loss_and_grad(fn, x, *args, grad_output=None, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    loss = fn(x, *args, **kwargs)
    (grad,) = torch.autograd.grad(loss, x, grad_output if grad_output is not None else torch.ones_like(loss))
    return loss.detach(), grad


def gold_index(source, x, label, score, reduction, **kwargs):
    """The source's loss of class-index targets with scores, reduced as the package reduces."""
    t, positive, valid = dense_from_index(x, label, score)
    x = x.double()
    loss = source(x, t, positive, **kwargs) if source is vfl_source else source(x, t, **kwargs)
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / valid.sum().clamp_min(1)
    return loss


# --- values and gradients against the sources -----------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("beta", [2.0, 0.5])
def test_quality_focal_loss_matches_the_source(backend, reduction, beta):
    x, label, score = index_inputs(dtype=torch.float64)
    got, grad = loss_and_grad(
        triton_focal.quality_focal_loss, x, label, score, beta=beta, reduction=reduction, backend=backend
    )
    want, want_grad = loss_and_grad(lambda x: gold_index(qfl_source, x, label, score, reduction, beta=beta), x)
    assert_close(got, want, "loss")
    assert_close(grad, want_grad, "grad")
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gamma, iou_weighted, detach", [(2.0, True, False), (2.0, True, True), (0.5, False, False)])
def test_varifocal_loss_matches_the_source(backend, gamma, iou_weighted, detach):
    x, label, score = index_inputs(dtype=torch.float64)
    kwargs = dict(alpha=0.75, gamma=gamma, iou_weighted=iou_weighted)
    got, grad = loss_and_grad(
        triton_focal.varifocal_loss, x, label, score, detach_weight=detach, reduction="sum", backend=backend, **kwargs
    )
    want, want_grad = loss_and_grad(
        lambda x: gold_index(vfl_source, x, label, score, "sum", detach=detach, **kwargs), x
    )
    assert_close(got, want, "loss")
    assert_close(grad, want_grad, "grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", ["quality", "varifocal"])
def test_dense_scores_equal_class_indices_with_scores(backend, loss):
    # mmdetection's two target forms: (label, score) and the dense (N, C) score tensor.
    x, label, score = index_inputs(p=6, dtype=torch.float64)
    label[label == -100] = 11  # dense targets have no ignored rows: background instead
    t, _, _ = dense_from_index(x, label, score)
    fn = triton_focal.quality_focal_loss if loss == "quality" else triton_focal.varifocal_loss
    index = loss_and_grad(fn, x, label, score, reduction="sum", backend=backend)
    dense = loss_and_grad(fn, x, t, reduction="sum", backend=backend)
    assert_close(index[0], dense[0], "loss")
    assert_close(index[1], dense[1], "grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "gamma_pos, gamma_neg, clip, eps, detach",
    [
        (0.0, 4.0, 0.05, 1e-8, False),
        (1.0, 4.0, 0.05, 1e-8, True),
        (0.5, 0.5, 0.0, 1e-8, False),
        (0.0, 0.0, 0.0, 1e-8, False),
    ],
)
def test_asymmetric_loss_matches_the_source(backend, gamma_pos, gamma_neg, clip, eps, detach):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(23, 17, generator=g, dtype=torch.float64) * 3).to(DEVICE)
    y = (torch.rand(23, 17, generator=g) < 0.2).double().to(DEVICE)
    kwargs = dict(gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip, eps=eps)
    got, grad = loss_and_grad(triton_focal.asymmetric_loss, x, y, detach_weight=detach, backend=backend, **kwargs)
    want, want_grad = loss_and_grad(lambda x: asl_source(x, y, detach=detach, **kwargs).sum(), x)
    assert_close(got, want, "loss")
    assert_close(grad, want_grad, "grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("target_kind", ["index", "dense"])
@pytest.mark.parametrize("alpha, gamma, epsilon", [(0.25, 2.0, 1.0), (-1.0, 0.5, -0.5), (0.25, 0.0, 2.0)])
def test_poly_epsilon_on_the_sigmoid_focal_loss(backend, target_kind, alpha, gamma, epsilon):
    x, label, _ = index_inputs(p=4, dtype=torch.float64)
    if target_kind == "index":
        target = label
        t, _, valid = dense_from_index(x, label, torch.ones(label.shape, device=DEVICE))
    else:
        target = torch.rand(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(DEVICE)
        t, valid = target, torch.ones(x.shape, dtype=torch.bool, device=DEVICE)
    kwargs = dict(alpha=alpha, gamma=gamma)
    got, grad = loss_and_grad(
        triton_focal.sigmoid_focal_loss, x, target, poly_epsilon=epsilon, reduction="sum", backend=backend, **kwargs
    )
    gold = lambda x: torch.where(valid, poly_focal_source(x, t, epsilon=epsilon, **kwargs), 0.0).sum()  # noqa: E731
    want, want_grad = loss_and_grad(gold, x)
    assert_close(got, want, "loss")
    assert_close(grad, want_grad, "grad")


# --- peers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_mmdetection_varifocal_loss(backend):
    module, why = load_focal_loss("mmdet", "mmdetection is not installed", name="varifocal_loss")
    if module is None:
        pytest.skip(why)
    x, label, score = index_inputs(n=40, c=7, dtype=torch.float32)
    label[label == -100] = 7
    t, _, _ = dense_from_index(x, label, score)
    t = t.float()
    for iou_weighted in (True, False):
        want, want_grad = loss_and_grad(
            module.varifocal_loss, x, t, alpha=0.75, gamma=2.0, iou_weighted=iou_weighted, reduction="mean"
        )
        got, grad = loss_and_grad(triton_focal.varifocal_loss, x, t, iou_weighted=iou_weighted, backend=backend)
        assert_close(got, want, "loss")
        assert_close(grad, want_grad, "grad")


@pytest.mark.parametrize("backend", BACKENDS)
def test_ultralytics_varifocal_loss(backend, tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path))
    with torchvision_version_if_missing():
        pytest.importorskip("ultralytics")
        from ultralytics.utils.loss import VarifocalLoss
    x, label, score = index_inputs(n=30, c=5, dtype=torch.float32)
    label[label == -100] = 5
    t, positive, _ = dense_from_index(x, label, score)
    criterion = VarifocalLoss(gamma=2.0, alpha=0.75)
    want, want_grad = loss_and_grad(lambda x: criterion(x, t.float(), positive.float()), x)
    # ultralytics: (BCE * weight).mean(1).sum(), the mean over the classes of each anchor.
    got, grad = loss_and_grad(
        triton_focal.varifocal_loss, x, label, score, reduction="sum", normalizer=x.shape[1], backend=backend
    )
    assert_close(got, want, "loss")
    assert_close(grad, want_grad, "grad")


# --- dtypes, saturation and edges ------------------------------------------------------------


FAMILY = {
    "quality": lambda x, label, score, **kw: triton_focal.quality_focal_loss(x, label, score, beta=0.5, **kw),
    "varifocal": lambda x, label, score, **kw: triton_focal.varifocal_loss(x, label, score, gamma=0.5, **kw),
    "asymmetric": lambda x, label, score, **kw: triton_focal.asymmetric_loss(
        x, dense_from_index(x, label, score)[1].to(x.dtype), gamma_pos=0.5, **kw
    ),
    "poly": lambda x, label, score, **kw: triton_focal.sigmoid_focal_loss(x, label, gamma=0.5, poly_epsilon=1.0, **kw),
}


@pytest.mark.compile_sample
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("loss", sorted(FAMILY))
def test_low_precision_against_float64(backend, dtype, loss):
    x, label, score = index_inputs(n=64, c=9, dtype=dtype)
    fn = FAMILY[loss]
    got, grad = loss_and_grad(fn, x, label, score, reduction="sum", backend=backend)
    want, want_grad = loss_and_grad(fn, x.double(), label, score, reduction="sum", backend="reference")
    assert got.dtype == dtype and grad.dtype == dtype
    assert_close(got, want.to(dtype), "loss", dtype=dtype)
    scale = want_grad.abs().max()
    assert_close(grad / scale, want_grad / scale, "grad", dtype=dtype)


@pytest.mark.compile_sample
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("loss", sorted(FAMILY))
def test_saturated_logits_stay_finite(backend, dtype, loss):
    # The overflow that makes the peers force float32: here the math is float32 inside.
    x, label, score = index_inputs(n=16, c=5, dtype=torch.float32)
    x = (x.sign() * 1e4).to(dtype) if dtype == torch.bfloat16 else (x.sign() * 6e4).to(dtype)
    got, grad = loss_and_grad(FAMILY[loss], x, label, score, reduction="mean", backend=backend)
    assert torch.isfinite(got).all() and torch.isfinite(grad).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", ["quality", "varifocal", "poly"])
def test_no_positives_and_all_ignored(backend, loss):
    x, label, score = index_inputs(n=12, c=4, dtype=torch.float64)
    fn = FAMILY[loss]
    background = torch.full_like(label, 4)
    got, grad = loss_and_grad(fn, x, background, score, reduction="mean", backend=backend)
    want, want_grad = loss_and_grad(fn, x, background, score, reduction="mean", backend="reference")
    assert_close(got, want, "loss")
    assert_close(grad, want_grad, "grad")
    ignored = torch.full_like(label, -100)
    got, grad = loss_and_grad(fn, x, ignored, score, reduction="mean", backend=backend)
    assert got.item() == 0 and (grad == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", sorted(FAMILY))
def test_grad_output_and_layouts(backend, loss):
    # reduction="none" with a random grad_output, channels-first (N, C, P) logits seen through a
    # transpose (non-contiguous), a weight broadcast along the classes.
    x, label, score = index_inputs(n=6, c=5, p=7, dtype=torch.float64)
    x = x.transpose(0, 2).contiguous().transpose(0, 2)
    weight = torch.rand(6, 1, 7, dtype=torch.float64).to(DEVICE)
    fn = FAMILY[loss]
    grad_output = torch.rand(x.shape, dtype=torch.float64).to(DEVICE)
    got = loss_and_grad(fn, x, label, score, weight=weight, reduction="none", backend=backend, grad_output=grad_output)
    want = loss_and_grad(
        fn, x, label, score, weight=weight, reduction="none", backend="reference", grad_output=grad_output
    )
    assert_close(got[0], want[0], "loss")
    assert_close(got[1], want[1], "grad")


@pytest.mark.parametrize("backend", BACKENDS)
def test_normalizer_tensor_gets_its_gradient(backend):
    x, label, score = index_inputs(n=10, c=3, dtype=torch.float64)
    results = []
    for name in (backend, "reference"):
        normalizer = torch.tensor(3.0, dtype=torch.float64, device=DEVICE, requires_grad=True)
        xx = x.clone().requires_grad_(True)
        loss = triton_focal.varifocal_loss(xx, label, score, normalizer=normalizer, reduction="sum", backend=name)
        loss.backward()
        results.append((loss.detach(), xx.grad, normalizer.grad))
    for got, want in zip(*results):
        assert_close(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_input(backend):
    x = torch.randn(0, 5, device=DEVICE, requires_grad=True)
    label = torch.zeros(0, dtype=torch.long, device=DEVICE)
    loss = triton_focal.quality_focal_loss(x, label, torch.zeros(0, device=DEVICE), backend=backend)
    loss.backward()
    assert loss.item() == 0 and x.grad.shape == x.shape


def test_asymmetric_loss_near_saturation_is_the_exact_function():
    # Without a clip the source's float32 1 - sigmoid(x) rounds to 0 near x = 17 and its log
    # hits the eps floor early; the stable form follows -softplus(x) down to log(eps).
    x = torch.tensor([[10.0, 15.0, 17.0, 19.0]], device=DEVICE)
    y = torch.zeros_like(x)
    ours = triton_focal.asymmetric_loss(x, y, gamma_neg=0.0, clip=0.0, eps=1e-8, reduction="none", backend="triton")
    exact = torch.minimum(F.softplus(x.double()), torch.tensor(18.420680743952367, dtype=torch.float64, device=DEVICE))
    assert_close(ours, exact.float(), rtol=1e-6, atol=0)
    source = asl_source(x, y, 0.0, 0.0, 0.0, 1e-8)
    assert (source - exact).abs().max() > 1e-3  # the source's rounding, documented in the docstring


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x, l, s: triton_focal.quality_focal_loss(x, l, s, beta=-1.0), ValueError, "beta"),
        (lambda x, l, s: triton_focal.quality_focal_loss(x, l, s, beta="2"), TypeError, "beta"),
        (lambda x, l, s: triton_focal.quality_focal_loss(x, l, s.long()), TypeError, "score"),
        (lambda x, l, s: triton_focal.quality_focal_loss(x, l, s[:3]), ValueError, "score shape"),
        (lambda x, l, s: triton_focal.quality_focal_loss(x, l, s + 1), ValueError, r"score values.*\[0, 1\]"),
        (lambda x, l, s: triton_focal.quality_focal_loss(x, torch.rand(x.shape), s), ValueError, "dense"),
        (lambda x, l, s: triton_focal.varifocal_loss(x, l, s, alpha=float("nan")), ValueError, "alpha"),
        (lambda x, l, s: triton_focal.varifocal_loss(x, l, s, detach_weight=1), TypeError, "detach_weight"),
        (lambda x, l, s: triton_focal.varifocal_loss(x, l, s, reduction="avg"), ValueError, "reduction"),
        (lambda x, l, s: triton_focal.asymmetric_loss(x, l), TypeError, "float 0/1"),
        (lambda x, l, s: triton_focal.asymmetric_loss(x, torch.rand(x.shape), clip=1.5), ValueError, "clip"),
        (lambda x, l, s: triton_focal.asymmetric_loss(x, torch.rand(x.shape), gamma_neg=-1), ValueError, "gamma_neg"),
        (lambda x, l, s: triton_focal.sigmoid_focal_loss(x, l, poly_epsilon=-2.0), ValueError, "poly_epsilon"),
        (lambda x, l, s: triton_focal.QualityFocalLoss(2.0), TypeError, "keyword arguments only.*beta=2.0"),
        (lambda x, l, s: triton_focal.VarifocalLoss(0.75), TypeError, "keyword arguments only.*alpha=0.75"),
        (lambda x, l, s: triton_focal.AsymmetricLoss(eps=2.0), ValueError, "eps"),
    ],
)
def test_bad_input_names_the_argument(call, error, match):
    # CPU tensors: the score values are checked where known (the CPU).
    x, label, score = index_inputs(n=8, c=4, device="cpu")
    with pytest.raises(error, match=match):
        call(x, label, score)


def test_modules_equal_the_functions():
    x, label, score = index_inputs(n=8, c=4, dtype=torch.float64)
    y = dense_from_index(x, label, score)[1].double()
    assert_close(
        triton_focal.QualityFocalLoss(beta=1.5, reduction="sum")(x, label, score, normalizer=2.0),
        triton_focal.quality_focal_loss(x, label, score, beta=1.5, reduction="sum", normalizer=2.0),
    )
    assert_close(
        triton_focal.VarifocalLoss(detach_weight=True)(x, label, score),
        triton_focal.varifocal_loss(x, label, score, detach_weight=True),
    )
    assert_close(triton_focal.AsymmetricLoss(clip=0.1)(x, y), triton_focal.asymmetric_loss(x, y, clip=0.1))


@pytest.mark.slow
def test_under_torch_compile_fullgraph():
    # The Triton op with a score and a term list traced by Dynamo (one compilation).
    if "triton" not in BACKENDS:
        pytest.skip("Triton cannot run here")
    x, label, score = index_inputs(n=16, c=5)
    fn = torch.compile(
        lambda x: triton_focal.varifocal_loss(x, label, score, reduction="sum", backend="triton"), fullgraph=True
    )
    got = loss_and_grad(fn, x)
    want = loss_and_grad(triton_focal.varifocal_loss, x, label, score, reduction="sum", backend="reference")
    assert_close(got[0], want[0], "loss")
    assert_close(got[1], want[1], "grad")
