"""The README's "other libraries' conventions" table, row by row, against the real packages.

Each row is checked for values and gradients in float64 on the reference backend (the
backends agree with it elsewhere). A package that does not install beside this torch is
skipped with the reason; ``pip install -e ".[peers]"`` installs the ones that do.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, torchvision_sigmoid_focal_loss

import triton_focal

F64 = torch.float64
N, C, H, W = 2, 5, 4, 3
ALPHA, GAMMA = 0.25, 2.0


def inputs(seed=0, ignore_index=None):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=gen, dtype=F64) * 3
    t = torch.randint(0, C, (N, H, W), generator=gen)
    if ignore_index is not None:
        t[0, 0] = ignore_index
        t[1, 2] = ignore_index
    return x, t


def assert_same(ours, theirs, x, dtype=F64):
    """Both losses' values and their gradients with respect to ``x``, to ``dtype``'s tolerance
    (MONAI builds its one-hot targets and alpha factors in float32)."""
    xs_ours, xs_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    a, b = ours(xs_ours), theirs(xs_theirs)
    a.backward()
    b.backward()
    assert_close(a, b, "loss", dtype=dtype)
    assert_close(xs_ours.grad, xs_theirs.grad, "grad", dtype=dtype)


def ours(**kwargs):
    return lambda x, t: triton_focal.focal_loss(x, t, backend="reference", **kwargs)


def peer(module, package):
    """``module``, or a skip that says plainly why: ``[dev]`` does not install the peers
    (``pip install -e ".[peers]"`` does), and one can be installed yet fail to import beside
    this torch (segmentation-models-pytorch through its torchvision)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and module.split(".")[0] != err.name.split(".")[0]:
            pytest.skip(f"{package} is installed but does not import: {err}")
        pytest.skip(f'{package} not installed (pip install -e ".[peers]")')
    except Exception as err:  # noqa: BLE001 - any import failure of a third-party package
        pytest.skip(f"{package} is installed but does not import: {type(err).__name__}: {err}")


def background_alpha(a, num_classes=C):
    """RetinaNet's softmax alpha: ``1 - a`` for class 0 (background), ``a`` for the others."""
    return torch.tensor([1 - a] + [a] * (num_classes - 1), dtype=F64)


# --- kornia ------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [ALPHA, None])
def test_kornia_focal_loss_mean(alpha):
    """kornia ``focal_loss(x, t, alpha=a, reduction="mean")`` weights class 0 by ``1 - a`` and
    the others by ``a``, and divides by ``C`` times the number of pixels (ignored included)."""
    kornia = peer("kornia.losses", "kornia")
    x, t = inputs(ignore_index=-100)
    a = background_alpha(alpha) if alpha is not None else None
    assert_same(
        lambda x: ours(alpha=a, gamma=GAMMA, reduction="sum")(x, t) / (C * t.numel()),
        lambda x: kornia.focal_loss(x, t, alpha=alpha, gamma=GAMMA, reduction="mean", ignore_index=-100),
        x,
    )


def test_kornia_focal_loss_weight_and_sum():
    kornia = peer("kornia.losses", "kornia")
    x, t = inputs(seed=1)
    w = torch.rand(C, dtype=F64) + 0.5
    assert_same(
        lambda x: ours(alpha=background_alpha(ALPHA) * w, gamma=GAMMA, reduction="sum")(x, t),
        lambda x: kornia.focal_loss(x, t, alpha=ALPHA, gamma=GAMMA, reduction="sum", weight=w),
        x,
    )


def test_kornia_binary_focal_loss_with_logits():
    kornia = peer("kornia.losses", "kornia")
    x, _ = inputs(seed=2)
    t = (torch.rand(N, C, H, W, dtype=F64) > 0.7).to(F64)
    assert_same(
        lambda x: triton_focal.sigmoid_focal_loss(
            x, t, alpha=ALPHA, gamma=GAMMA, reduction="mean", backend="reference"
        ),
        lambda x: kornia.binary_focal_loss_with_logits(x, t, alpha=ALPHA, gamma=GAMMA, reduction="mean"),
        x,
    )


# --- MONAI -------------------------------------------------------------------------------


@pytest.mark.parametrize("with_weight", [False, True])
def test_monai_softmax_focal_loss(with_weight):
    """MONAI ``FocalLoss(use_softmax=True, to_onehot_y=True, alpha=a, weight=w)``: RetinaNet's
    background alpha times the class weight, mean over ``N * C * H * W``."""
    monai = peer("monai.losses", "MONAI (monai)")
    x, t = inputs(seed=3)
    w = torch.rand(C, dtype=F64) + 0.5 if with_weight else torch.ones(C, dtype=F64)
    loss = monai.FocalLoss(
        use_softmax=True, to_onehot_y=True, gamma=GAMMA, alpha=ALPHA, weight=w if with_weight else None
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_same(
            lambda x: ours(alpha=background_alpha(ALPHA) * w, gamma=GAMMA, reduction="sum")(x, t) / (C * t.numel()),
            lambda x: loss(x, t.unsqueeze(1)),
            x,
            dtype=torch.float32,
        )


def test_monai_sigmoid_focal_loss():
    """MONAI's default (sigmoid, one-hot targets) is torchvision's loss, mean over elements."""
    monai = peer("monai.losses", "MONAI (monai)")
    x, t = inputs(seed=4)
    loss = monai.FocalLoss(use_softmax=False, to_onehot_y=True, gamma=GAMMA, alpha=ALPHA)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_same(
            lambda x: triton_focal.sigmoid_focal_loss(
                x, t, alpha=ALPHA, gamma=GAMMA, reduction="mean", backend="reference"
            ),
            lambda x: loss(x, t.unsqueeze(1)),
            x,
            dtype=torch.float32,
        )


# --- segmentation-models-pytorch ---------------------------------------------------------


def test_smp_multiclass_focal_loss_is_one_vs_all_sigmoid():
    """smp's ``FocalLoss("multiclass")`` is a per-class *sigmoid* focal loss, averaged over the
    classes of the non-ignored pixels: our ``sigmoid_focal_loss`` with class-index targets."""
    smp = peer("segmentation_models_pytorch.losses", "segmentation-models-pytorch")
    x, t = inputs(seed=5, ignore_index=255)
    loss = smp.FocalLoss("multiclass", alpha=ALPHA, gamma=GAMMA, ignore_index=255)
    assert_same(
        lambda x: triton_focal.sigmoid_focal_loss(
            x, t, alpha=ALPHA, gamma=GAMMA, ignore_index=255, reduction="mean", backend="reference"
        ),
        lambda x: loss(x, t),
        x,
    )


# --- torchvision and F.cross_entropy -----------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_torchvision_sigmoid_focal_loss(reduction):
    try:
        from torchvision.ops import sigmoid_focal_loss as reference_loss
    except Exception:  # not installed, or its compiled ops do not load beside this torch
        reference_loss = torchvision_sigmoid_focal_loss
    x, _ = inputs(seed=6)
    t = torch.rand(N, C, H, W, dtype=F64)
    assert_same(
        lambda x: triton_focal.sigmoid_focal_loss(
            x, t, alpha=ALPHA, gamma=GAMMA, reduction=reduction, backend="reference"
        ),
        lambda x: reference_loss(x, t, alpha=ALPHA, gamma=GAMMA, reduction=reduction),
        x,
    )


def test_mmdet_avg_factor_is_the_normalizer():
    """mmdet's ``sigmoid_focal_loss(pred, labels, weight, gamma, alpha, avg_factor=n)`` with
    label ``C`` as background: the sum over elements, divided by ``n`` (written out here:
    mmcv's CUDA op does not install on a CPU machine)."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(12, C, generator=gen, dtype=F64)
    labels = torch.randint(0, C + 1, (12,), generator=gen)
    weight = torch.rand(12, 1, generator=gen, dtype=F64)
    one_hot = F.one_hot(labels, C + 1)[:, :C].to(F64)
    assert_same(
        lambda x: triton_focal.sigmoid_focal_loss(
            x, labels, alpha=ALPHA, gamma=GAMMA, weight=weight, reduction="sum", normalizer=3.0, backend="reference"
        ),
        lambda x: (torchvision_sigmoid_focal_loss(x, one_hot, ALPHA, GAMMA, "none") * weight).sum() / 3.0,
        x,
    )


def test_cross_entropy_is_gamma_zero():
    x, t = inputs(seed=8, ignore_index=-100)
    w = torch.rand(C, dtype=F64) + 0.5
    kwargs = dict(weight=w, ignore_index=-100, reduction="mean", label_smoothing=0.1)
    assert_same(lambda x: ours(gamma=0.0, **kwargs)(x, t), lambda x: F.cross_entropy(x, t, **kwargs), x)
