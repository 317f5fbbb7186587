"""The Triton sigmoid focal-loss backend (triton_focal.ops.sigmoid_focal) against the
float64 reference, on the canonical ``(N, C, P)`` arguments.

On the CPU the kernels run in the Triton interpreter (tests/conftest.py), so shapes stay
small; the realistic detection shape runs only on a GPU.
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import TOLERANCES, assert_close, assert_no_worse_than_torch, torchvision_sigmoid_focal_loss

import triton_focal
from triton_focal import reference
from triton_focal.kernels.grad_mode import GRAD_NONE
from triton_focal.ops import sigmoid_focal as ops
from triton_focal.sigmoid_term import SigmoidTerm

DEFAULTS = dict(alpha=0.25, gamma=2.0, weight=None, ignore_index=-100, reduction="none", normalizer=None)

# Shapes (N, C, P) with the layout they exercise:
SHAPES = [
    (64, 80, 1),  # COCO-style (N, C) detection logits: classes contiguous, C not a power of two
    (3, 200, 1),  # C above the contiguous class block (128): two programs along the classes
    (2, 5, 63),  # channels-first heatmap, odd H * W, C below the strided class block (8)
    (2, 19, 64),  # channels-first, C above the strided class block: three class programs
    (1, 1, 1),  # one element
]


def make_logits(shape, device, dtype=torch.float32, seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * scale).to(device=device, dtype=dtype)


def make_dense_target(shape, device, soft=False, seed=1):
    gen = torch.Generator().manual_seed(seed)
    t = torch.rand(shape, generator=gen)
    return (t if soft else (t < 0.2).float()).to(device)


def make_index_target(n, c, p, device, seed=2, ignore_every=5):
    """Class indices in [0, C] (C = background), with every ``ignore_every``-th row ignored."""
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(0, c + 1, (n, p), generator=gen)
    target.view(-1)[::ignore_every] = -100
    return target.to(device)


def loss_and_grad(fn, x, target, grad_output=None, **kwargs):
    """``fn``'s value and its gradient with respect to ``x`` for a given grad_output."""
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, target, **kwargs)
    if grad_output is None:
        grad_output = torch.ones_like(out)
    (grad,) = torch.autograd.grad(out, x, grad_output)
    return out.detach(), grad


def check_against_reference(x, target, grad_output=None, star=False, grad_tol=None, **kwargs):
    """The Triton value and gradient against the float64 reference, at ``x.dtype``'s tolerance."""
    ours_fn, ref_fn = (
        (ops.sigmoid_focal_loss_star, reference.sigmoid_focal_loss_star)
        if star
        else (ops.sigmoid_focal_loss, reference.sigmoid_focal_loss)
    )
    out, grad = loss_and_grad(ours_fn, x, target, grad_output, **kwargs)
    ref_out, ref_grad = loss_and_grad(
        ref_fn, x.double(), target, None if grad_output is None else grad_output.double(), **kwargs
    )
    assert out.dtype == x.dtype and grad.dtype == x.dtype
    assert_close(out, ref_out, "loss", dtype=x.dtype)
    assert_close(grad, ref_grad, "grad", dtype=x.dtype, **(grad_tol or {}))
    return out, grad


# --- dense targets -----------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_dense_matches_reference(device, shape, reduction):
    x = make_logits(shape, device)
    t = make_dense_target(shape, device)
    g = torch.randn(shape, device=device) if reduction == "none" else torch.tensor(0.7, device=device)
    check_against_reference(x, t, g, **{**DEFAULTS, "reduction": reduction})


@pytest.mark.parametrize("alpha", [0.25, -1.0])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_soft_targets_match_torchvision_sigmoid_focal_loss(device, alpha, gamma):
    x = make_logits((16, 7, 3), device, dtype=torch.float64)
    t = make_dense_target((16, 7, 3), device, soft=True).double()
    g = torch.randn_like(x)
    out, grad = loss_and_grad(ops.sigmoid_focal_loss, x, t, g, **{**DEFAULTS, "alpha": alpha, "gamma": gamma})
    tv_out, tv_grad = loss_and_grad(torchvision_sigmoid_focal_loss, x, t, g, alpha=alpha, gamma=gamma)
    assert_close(out, tv_out, "loss")
    assert_close(grad, tv_grad, "grad")


@pytest.mark.parametrize(
    "layout",
    [
        "transposed",  # (N, C) seen through .t() of a (C, N) buffer: rows contiguous, classes strided
        "class_slice",  # every other class of a wider head: stride_c == 2
        "channels_last",  # (N, C, H, W) in channels_last, flattened: stride_c == 1, stride_p == C
    ],
)
def test_non_contiguous_views(device, layout):
    if layout == "transposed":
        x = make_logits((6, 40), device).t()[:, :, None]
        t = make_dense_target((6, 40), device).t()[:, :, None]
    elif layout == "class_slice":
        x = make_logits((10, 14, 5), device)[:, ::2]
        t = make_dense_target((10, 14, 5), device)[:, ::2]
    else:
        x = make_logits((2, 6, 5, 7), device).to(memory_format=torch.channels_last).flatten(2)
        t = make_dense_target((2, 6, 5, 7), device).to(memory_format=torch.channels_last).flatten(2)
    assert not x.is_contiguous()
    g = torch.randn(x.shape, device=device).transpose(0, 2).contiguous().transpose(0, 2)  # strided too
    check_against_reference(x, t, g, **DEFAULTS)
    out = ops.sigmoid_focal_loss(x.detach().requires_grad_(), t, **DEFAULTS)
    assert out.stride() == torch.empty_like(x).stride()  # the loss is laid out like the logits


def test_stride_zero_grad_output(device):
    # out.sum().backward() hands an expanded, stride-0 grad_output to "none".
    x = make_logits((8, 6, 4), device)
    t = make_dense_target((8, 6, 4), device)
    g = torch.tensor(1.5, device=device).expand(8, 6, 4)
    check_against_reference(x, t, g, **DEFAULTS)


# --- class-index targets -----------------------------------------------------------


@pytest.mark.parametrize("shape", [(30, 7, 1), (2, 5, 63)])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_class_index_equals_one_hot(device, shape, reduction):
    n, c, p = shape
    x = make_logits(shape, device)
    target = make_index_target(n, c, p, device)
    target[0, 0] = c  # background at least once
    kwargs = {**DEFAULTS, "reduction": reduction}
    g = torch.randn(shape, device=device) if reduction == "none" else None
    out, grad = check_against_reference(x, target, g, **kwargs)

    # The dense form with one_hot, the ignored rows masked out by hand.
    valid = (target != -100).unsqueeze(1).expand(shape)
    one_hot = F.one_hot(target.clamp(0), c + 1)[..., :c].movedim(-1, 1).float()
    dense_loss, dense_grad = loss_and_grad(ops.sigmoid_focal_loss, x, one_hot, g, **{**kwargs, "reduction": "none"})
    dense_loss = torch.where(valid, dense_loss, 0.0)
    dense_grad = torch.where(valid, dense_grad, 0.0)
    if reduction == "none":
        assert_close(out, dense_loss, "loss vs one-hot")
        assert_close(grad, dense_grad, "grad vs one-hot")
    else:
        scale = valid.sum() if reduction == "mean" else 1
        assert_close(out, dense_loss.sum() / scale, "loss vs one-hot")
        assert_close(grad, dense_grad / scale, "grad vs one-hot")
    # Ignored rows: zero loss and zero gradient.
    assert (grad.masked_select(~valid) == 0).all()


@pytest.mark.parametrize("target_dtype", [torch.int32, torch.uint8])
def test_other_integer_target_dtypes(device, target_dtype):
    x = make_logits((12, 4, 2), device)
    target = torch.randint(0, 5, (12, 2)).to(device=device, dtype=target_dtype)
    check_against_reference(x, target, **{**DEFAULTS, "reduction": "mean", "ignore_index": 3})


def test_all_ignored_mean_is_zero_with_zero_grad(device):
    x = make_logits((5, 3, 2), device)
    target = torch.full((5, 2), -100, device=device)
    out, grad = loss_and_grad(ops.sigmoid_focal_loss, x, target, **{**DEFAULTS, "reduction": "mean"})
    assert out.item() == 0.0 and torch.isfinite(grad).all() and (grad == 0).all()


# --- weight, normalizer, alpha and gamma ---------------------------------------------


@pytest.mark.parametrize("kind", ["per_anchor", "per_class", "per_element"])
def test_weight_is_read_by_stride(device, kind):
    n, c, p = 9, 6, 4
    x = make_logits((n, c, p), device)
    target = make_index_target(n, c, p, device)
    gen = torch.Generator().manual_seed(5)
    if kind == "per_anchor":  # (N, 1): stride 0 along C and P
        weight = torch.rand(n, 1, 1, generator=gen).to(device).expand(n, c, p)
    elif kind == "per_class":  # (C,): stride 0 along N and P
        weight = torch.rand(c, generator=gen).to(device).view(1, c, 1).expand(n, c, p)
    else:
        weight = torch.rand(n, c, p, generator=gen, dtype=torch.float64).to(device)  # another dtype
    for reduction in ("none", "mean"):
        check_against_reference(x, target, **{**DEFAULTS, "weight": weight, "reduction": reduction})


@pytest.mark.parametrize("normalizer", [3.0, "tensor"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_normalizer(device, normalizer, reduction):
    x = make_logits((20, 5, 1), device)
    t = make_dense_target((20, 5, 1), device)
    if normalizer == "tensor":
        normalizer = t.sum()  # number of positives, on the device
    out, _ = check_against_reference(
        x, t, torch.tensor(2.0, device=device), **{**DEFAULTS, "normalizer": normalizer, "reduction": reduction}
    )
    total = ops.sigmoid_focal_loss(x, t, **{**DEFAULTS, "reduction": "sum"})
    assert_close(out, total / normalizer, "sum / normalizer")


def test_per_class_gamma(device):
    x = make_logits((7, 5, 6), device)
    target = make_index_target(7, 5, 6, device)
    gamma = torch.tensor([0.0, 0.5, 1.0, 2.0, 5.0], device=device)
    out, grad = check_against_reference(x, target, **{**DEFAULTS, "gamma": gamma})
    for c in range(5):  # each class column equals the scalar-gamma loss
        scalar, _ = loss_and_grad(ops.sigmoid_focal_loss, x, target, **{**DEFAULTS, "gamma": float(gamma[c])})
        assert_close(out[:, c], scalar[:, c], f"class {c}")


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.5])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_fl_star(device, gamma, reduction):
    x = make_logits((10, 6, 5), device)
    t = make_dense_target((10, 6, 5), device)
    g = torch.randn(x.shape, device=device) if reduction == "none" else None
    check_against_reference(x, t, g, star=True, alpha=0.25, gamma=gamma, reduction=reduction)
    check_against_reference(x, t, g, star=True, alpha=-1.0, gamma=gamma, reduction=reduction)


def test_float64_scalars_keep_their_precision(device):
    # Triton float arguments are float32; float64 math must still see alpha/gamma exactly.
    x = make_logits((6, 3, 2), device, dtype=torch.float64)
    t = make_dense_target((6, 3, 2), device, soft=True).double()
    check_against_reference(x, t, **{**DEFAULTS, "alpha": 0.1, "gamma": 1.3})


# --- precision and numerics ----------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_half_precision(device, dtype, reduction):
    x = make_logits((32, 10, 4), device, dtype=dtype)
    t = make_dense_target((32, 10, 4), device)
    g = torch.randn(x.shape, device=device).to(dtype) if reduction == "none" else None
    out, grad = check_against_reference(x, t, g, **{**DEFAULTS, "reduction": reduction})
    # No worse than PyTorch's own computation of the formula in the same dtype.
    gold, _ = loss_and_grad(
        reference.sigmoid_focal_loss,
        x.double(),
        t,
        None if g is None else g.double(),
        **{**DEFAULTS, "reduction": reduction},
    )
    tv = torchvision_sigmoid_focal_loss(x, t.to(dtype), 0.25, 2.0)
    tv = tv if reduction == "none" else tv.mean()
    assert_no_worse_than_torch(out, tv, gold, "loss")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
def test_extreme_logits(device, dtype, gamma):
    big = 6e4 if dtype == torch.float16 else 1e4
    logits = torch.tensor([-big, -100.0, 100.0, big], device=device, dtype=dtype)
    x = logits.repeat(2).view(1, 8, 1)
    right = (logits > 0).float()  # the label each logit predicts confidently
    t = torch.cat([right, 1 - right]).view(1, 8, 1)
    out, grad = loss_and_grad(ops.sigmoid_focal_loss, x, t, **{**DEFAULTS, "gamma": gamma})
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    # Right label: the loss is exp(-|x|)-small (denormal or 0 at +-100, exactly 0 at +-big).
    tiny = torch.finfo(torch.float32).tiny
    assert (out[0, :4].float() <= tiny).all() and (grad[0, :4].float().abs() <= tiny).all()
    assert out[0, 0] == 0 and out[0, 3] == 0 and grad[0, 0] == 0 and grad[0, 3] == 0
    assert (out[0, 4:] > 0).all()  # wrong label: large, finite loss
    if dtype == torch.float32:
        ref_out, ref_grad = loss_and_grad(reference.sigmoid_focal_loss, x.double(), t, **{**DEFAULTS, "gamma": gamma})
        assert_close(out, ref_out, "loss")
        assert_close(grad, ref_grad, "grad")


@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_small_gamma_gradients_finite_near_saturation(device, gamma):
    # (1 - p_t) ** (gamma - 1) is huge there: its product must stay finite and right.
    x = torch.tensor([-30.0, -15.0, -1e-3, 0.0, 1e-3, 15.0, 30.0, 88.0], device=device).view(1, 8, 1)
    for t in (torch.ones_like(x), torch.zeros_like(x), torch.full_like(x, 0.3)):
        check_against_reference(x, t, **{**DEFAULTS, "gamma": gamma})


def test_nan_logit_gives_nan_loss(device):
    x = make_logits((2, 3, 2), device)
    x[1, 2, 0] = float("nan")
    out = ops.sigmoid_focal_loss(x, make_dense_target((2, 3, 2), device), **DEFAULTS)
    assert out[1, 2, 0].isnan() and out.isnan().sum() == 1


def test_out_of_range_class_index_is_nan_not_a_silent_background(device):
    # The public API checks indices on the CPU; the kernel must not train on a wrong row when
    # the check is skipped (GPU without validate=True).
    x = make_logits((3, 4, 1), device).requires_grad_(True)
    target = torch.tensor([[1], [7], [-100]], device=device)
    loss = ops.sigmoid_focal_loss(x, target, **DEFAULTS)
    loss.sum().backward()
    assert loss[1].isnan().all() and torch.isfinite(loss[[0, 2]]).all()
    assert x.grad[1].isnan().all() and torch.isfinite(x.grad[[0, 2]]).all()


# --- autograd plumbing -------------------------------------------------------------


@pytest.mark.parametrize("case", ["none_index_weight", "sum_class_gamma", "mean_normalizer", "star"])
def test_gradcheck_float64(device, case):
    x = make_logits((3, 4, 2), device, dtype=torch.float64, scale=1.5).requires_grad_(True)
    target = make_index_target(3, 4, 2, device, ignore_every=4)
    if case == "none_index_weight":
        weight = torch.rand(3, 1, 2, dtype=torch.float64, device=device).expand(3, 4, 2)

        def fn(z):
            return ops.sigmoid_focal_loss(z, target, **{**DEFAULTS, "weight": weight, "gamma": 1.5})
    elif case == "sum_class_gamma":
        gamma = torch.tensor([0.0, 0.5, 2.0, 5.0], device=device)

        def fn(z):
            return ops.sigmoid_focal_loss(z, target, **{**DEFAULTS, "gamma": gamma, "reduction": "sum"})
    elif case == "mean_normalizer":
        soft = make_dense_target((3, 4, 2), device, soft=True).double()

        def fn(z):
            return ops.sigmoid_focal_loss(z, soft, **{**DEFAULTS, "reduction": "mean", "normalizer": 2.5})
    else:
        soft = make_dense_target((3, 4, 2), device, soft=True).double()

        def fn(z):
            return ops.sigmoid_focal_loss_star(z, soft, alpha=0.25, gamma=1.5, reduction="none")

    assert torch.autograd.gradcheck(fn, (x,))


def test_repeated_backward_over_a_retained_graph(device):
    # Backwards that keep the graph leave the stored gradient unscaled for the next one.
    x = make_logits((6, 5, 3), device).requires_grad_(True)
    t = make_dense_target((6, 5, 3), device)
    loss = ops.sigmoid_focal_loss(x, t, **{**DEFAULTS, "reduction": "mean"})
    (g2,) = torch.autograd.grad(loss, x, torch.tensor(2.0, device=device), retain_graph=True)
    first = g2.clone()
    (g1,) = torch.autograd.grad(loss, x, retain_graph=True)
    (g3,) = torch.autograd.grad(loss, x, torch.tensor(-3.0, device=device), retain_graph=True)
    assert torch.equal(g2, first)  # an earlier result is not touched by later passes
    assert_close(g1, first / 2, "grad_output 1 after 2")
    assert_close(g3, first * -1.5, "grad_output -3 after 2")

    # reduction="none": the per-element grad_output, over a reused graph too.
    out = ops.sigmoid_focal_loss(x, t, **DEFAULTS)
    g = torch.randn_like(out)
    (a,) = torch.autograd.grad(out, x, g, retain_graph=True)
    (b,) = torch.autograd.grad(out, x, g)
    assert torch.equal(a, b)


def test_zero_grad_output_then_retained_backward(device):
    # A first grad_output of 0 must not destroy the gradient a later backward needs.
    x = make_logits((4, 3, 2), device).requires_grad_(True)
    t = make_dense_target((4, 3, 2), device)
    loss = ops.sigmoid_focal_loss(x, t, **{**DEFAULTS, "reduction": "sum"})
    (g0,) = torch.autograd.grad(loss, x, torch.tensor(0.0, device=device), retain_graph=True)
    assert (g0 == 0).all()
    (g1,) = torch.autograd.grad(loss, x)
    (expected,) = torch.autograd.grad(ops.sigmoid_focal_loss(x, t, **{**DEFAULTS, "reduction": "sum"}), x)
    assert torch.equal(g1, expected)


def test_backward_accumulates_into_leaf_grad(device):
    x = make_logits((5, 4, 3), device).requires_grad_(True)
    t = make_dense_target((5, 4, 3), device)
    for _ in range(2):
        ops.sigmoid_focal_loss(x, t, **{**DEFAULTS, "reduction": "sum"}).backward()
    _, ref_grad = loss_and_grad(reference.sigmoid_focal_loss, x.double(), t, **{**DEFAULTS, "reduction": "sum"})
    assert_close(x.grad, 2 * ref_grad, "accumulated grad", dtype=torch.float32)


def test_no_gradient_without_requires_grad(device, monkeypatch):
    x = make_logits((5, 4, 3), device)
    t = make_dense_target((5, 4, 3), device)
    seen = []
    launch = ops.sigmoid_focal_launch
    monkeypatch.setattr(
        ops, "sigmoid_focal_launch", lambda *a, **k: seen.append((k["grad_mode"], k["grad"])) or launch(*a, **k)
    )
    ops.sigmoid_focal_loss(x, t, **DEFAULTS)
    with torch.no_grad():
        ops.sigmoid_focal_loss(x.requires_grad_(True), t, **DEFAULTS)
    assert seen == [(GRAD_NONE, None), (GRAD_NONE, None)]


def test_bit_identical_reruns(device):
    x = make_logits((40, 30, 7), device)
    target = make_index_target(40, 30, 7, device)
    runs = [loss_and_grad(ops.sigmoid_focal_loss, x, target, **{**DEFAULTS, "reduction": "mean"}) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("shape", [(0, 4, 3), (3, 4, 0)])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_empty_input(device, shape, reduction):
    x = torch.zeros(shape, device=device)
    target = torch.zeros(shape[0], shape[2], dtype=torch.long, device=device)
    out, grad = loss_and_grad(ops.sigmoid_focal_loss, x, target, **{**DEFAULTS, "reduction": reduction})
    expected = torch.zeros(shape if reduction == "none" else ())
    assert_close(out, expected, "loss")
    assert grad.shape == shape


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_opcheck(device, reduction):
    # The ops as a traced graph runs them: the forward stores no gradient, the backward op
    # recomputes it (the eager policy, which may store it, is tested above and in test_grad_policy.py).
    x = make_logits((4, 3, 5), device).requires_grad_(True)
    t = make_dense_target((4, 3, 5), device)
    focal = SigmoidTerm("focal", alpha=0.25, gamma=2.0).encode()
    options = (None, None, None, focal, -100, reduction)
    torch.library.opcheck(ops._forward_op, (x, t, None, None, *options, False))
    grad_out = torch.rand(() if reduction == "mean" else x.shape, device=device)
    no_count = x.new_empty(0)
    torch.library.opcheck(ops._backward_op, (grad_out, x.detach(), t, None, None, no_count, *options))
    index = make_index_target(4, 3, 5, device)
    summed = (None, None, None, focal, -100, "sum", False)
    torch.library.opcheck(ops._forward_op, (x.detach(), index, torch.tensor(3.0, device=device), None, *summed))
    # a normalizer given as a number, and a class-index mean whose count comes from the targets
    torch.library.opcheck(ops._forward_op, (x.detach(), index, None, 3.0, *summed))
    mean = (None, None, None, focal, -100, "mean", False)
    _, _, _, counted = ops._forward_op(x.detach(), index, None, None, *mean)
    assert counted.shape == (2,) and counted[1].item() == (index != -100).sum().item() * 3
    torch.library.opcheck(ops._forward_op, (x.detach(), index, None, None, *mean))
    torch.library.opcheck(
        ops._backward_op, (torch.rand((), device=device), x.detach(), index, None, None, counted, *mean[:-1])
    )
    # class indices with a score per row (QFL, VFL)
    score = torch.rand(4, 5, device=device)
    varifocal = SigmoidTerm("varifocal", alpha=0.75, gamma=2.0).encode()
    torch.library.opcheck(ops._forward_op, (x, index, None, 3.0, score, None, None, varifocal, -100, "sum", False))
    torch.library.opcheck(
        ops._backward_op,
        (
            torch.rand((), device=device),
            x.detach(),
            index,
            None,
            3.0,
            no_count,
            score,
            None,
            None,
            varifocal,
            -100,
            "sum",
        ),
    )


@pytest.mark.slow
def test_compile_fullgraph(device):
    # One compilation (~20 s on CPU): the custom op, its fake and its autograd under Dynamo.
    x = make_logits((6, 5, 4), device).requires_grad_(True)
    target = make_index_target(6, 5, 4, device)

    @torch.compile(fullgraph=True)
    def fn(z, tgt):
        return ops.sigmoid_focal_loss(z, tgt, **{**DEFAULTS, "reduction": "mean"}) * 3.0

    out = fn(x, target)
    (grad,) = torch.autograd.grad(out, x)
    ref_out, ref_grad = loss_and_grad(
        lambda z, tgt: reference.sigmoid_focal_loss(z, tgt, **{**DEFAULTS, "reduction": "mean"}) * 3.0,
        x.double(),
        target,
    )
    assert_close(out, ref_out, "compiled loss")
    assert_close(grad, ref_grad, "compiled grad")


# --- through the public API ----------------------------------------------------------


def test_public_api_detection_and_heatmap(device):
    # (N, C) logits with class indices, and an (N, C, H, W) heatmap with dense targets.
    x = make_logits((20, 6), device)
    target = torch.randint(0, 7, (20,)).to(device)
    kw = dict(reduction="mean", alpha=0.25, gamma=2.0)
    out, grad = loss_and_grad(lambda z, tgt: triton_focal.sigmoid_focal_loss(z, tgt, backend="triton", **kw), x, target)
    ref_out, ref_grad = loss_and_grad(
        lambda z, tgt: triton_focal.sigmoid_focal_loss(z, tgt, backend="reference", **kw), x.double(), target
    )
    assert_close(out, ref_out, "loss")
    assert_close(grad, ref_grad, "grad")

    heat = make_logits((2, 3, 9, 11), device)
    t = make_dense_target((2, 3, 9, 11), device, soft=True)
    g = torch.randn(heat.shape, device=device)
    out, grad = loss_and_grad(lambda z, tgt: triton_focal.sigmoid_focal_loss(z, tgt, backend="triton"), heat, t, g)
    ref_out, ref_grad = loss_and_grad(
        torchvision_sigmoid_focal_loss, heat.double(), t.double(), g.double(), alpha=0.25, gamma=2.0
    )
    assert_close(out, ref_out, "heatmap loss")
    assert_close(grad, ref_grad, "heatmap grad", dtype=torch.float32)


def test_public_api_fl_star(device):
    x = make_logits((8, 5), device)
    t = make_dense_target((8, 5), device)
    out, grad = loss_and_grad(
        lambda z, tgt: triton_focal.sigmoid_focal_loss_star(z, tgt, gamma=2.0, reduction="sum", backend="triton"), x, t
    )
    ref_out, ref_grad = loss_and_grad(
        lambda z, tgt: triton_focal.sigmoid_focal_loss_star(z, tgt, gamma=2.0, reduction="sum", backend="reference"),
        x.double(),
        t,
    )
    assert_close(out, ref_out, "loss")
    assert_close(grad, ref_grad, "grad", dtype=torch.float32)


# --- GPU only ------------------------------------------------------------------------


@pytest.mark.gpu
def test_realistic_detection_shape_bf16():
    # RetinaNet-scale: ~1.6M anchors x 80 classes in bfloat16, class-index targets.
    n, c = 1_600_000, 80
    x = make_logits((n, c, 1), "cuda", dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, c + 1, (n, 1), generator=gen).cuda()
    target[::7] = -100
    kw = {**DEFAULTS, "reduction": "sum", "normalizer": (target < c).sum().clamp_min(1)}
    out, grad = loss_and_grad(ops.sigmoid_focal_loss, x, target, **kw)
    ref_out, ref_grad = loss_and_grad(reference.sigmoid_focal_loss, x.float(), target, **kw)
    assert_close(out, ref_out, "loss", dtype=torch.bfloat16)
    # The gradient is ~1 / normalizer in size: its absolute tolerance scales with it.
    atol = TOLERANCES[torch.bfloat16]["atol"] * ref_grad.abs().max().item()
    assert_close(grad, ref_grad, "grad", dtype=torch.bfloat16, atol=atol)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_infinite_logits_with_matching_dense_targets(device, gamma):
    """``+inf`` with target 1 and ``-inf`` with target 0: BCE is 0 and so is its gradient (as
    ``F.binary_cross_entropy_with_logits``'s); the focal loss and gradient are 0 too, not NaN."""
    inf = float("inf")
    x = torch.tensor([[inf, -inf, 2.0, -3.0]], device=device, requires_grad=True)
    t = torch.tensor([[1.0, 0.0, 1.0, 0.0]], device=device)
    loss = triton_focal.sigmoid_focal_loss(x, t, gamma=gamma, alpha=-1.0, reduction="none", backend="triton")
    loss.sum().backward()
    bce_x = x.detach().clone().requires_grad_()
    F.binary_cross_entropy_with_logits(bce_x, t, reduction="sum").backward()
    assert torch.equal(loss.detach()[0, :2], torch.zeros(2, device=device))
    assert torch.equal(x.grad[0, :2], bce_x.grad[0, :2])  # both exactly 0
    expected = triton_focal.sigmoid_focal_loss(
        x.detach()[:, 2:], t[:, 2:], alpha=-1.0, gamma=gamma, reduction="none", backend="reference"
    )
    assert_close(loss.detach()[:, 2:], expected, rtol=1e-5, atol=1e-7)
    if gamma == 0.0:  # the focal loss is BCE: same gradient everywhere
        torch.testing.assert_close(x.grad, bce_x.grad, rtol=1e-5, atol=1e-7)
