"""The softmax loss's Poly-1 term (``poly_epsilon``), per-element weights (``element_weight``) and
``normalizer``, on every backend, against float64 formulas written out here.

The oracle is :func:`formula`, the definition in plain float64 torch (not the package's
reference): Poly-1 cross entropy is optax's ``poly_loss_cross_entropy``, ``CE + eps * (1 - p_t)``,
and the gradients are autograd's of that formula.
"""

import math

import pytest
import torch
from helpers import BACKENDS, DEVICE, TOLERANCES, assert_close
from torch.utils._python_dispatch import TorchDispatchMode

import triton_focal
from triton_focal import _validation
from triton_focal.ops import denominators as denominators_launcher
from triton_focal.ops import softmax_focal as softmax_ops

# Each compile-backend configuration costs a compilation (seconds on a CPU): the tests below
# share few of them (float32 rows with poly; channels-first with weights; the normalizer).
LOW_PRECISION = [torch.bfloat16, torch.float16]


def formula(
    x,
    t,
    *,
    gamma=2.0,
    alpha=None,
    weight=None,
    ignore_index=-100,
    reduction="mean",
    label_smoothing=0.0,
    z_loss=0.0,
    poly_epsilon=0.0,
    element_weight=None,
    normalizer=None,
):
    """The loss of ``(N, C, ...)`` float64 logits, every term written out::

    loss_i = v_i * (a_y ((1 - ls) w_y f_y + ls / C sum_c w_c f_c) + eps w_y q_y ** (g_y + 1) + k lse ** 2)
    f_c = (1 - p_c) ** g_c (-log p_c),  q_y = 1 - p_y

    "mean": the focal and poly parts over sum(v w_y), the z-loss over sum(v), non-ignored only.
    """
    num_classes = x.shape[1]
    valid = t != ignore_index
    safe = torch.where(valid, t, torch.zeros_like(t))
    x = torch.where(valid.unsqueeze(1), x, torch.zeros_like(x))
    log_p = torch.log_softmax(x, dim=1)
    p = log_p.exp()
    classes = [1] * x.dim()
    classes[1] = num_classes
    device = x.device
    g = (
        gamma.double().view(classes)
        if isinstance(gamma, torch.Tensor)
        else torch.full(classes, float(gamma), device=device)
    )
    w = weight.double().view(classes) if weight is not None else torch.ones(classes, dtype=torch.float64, device=device)
    a = (
        alpha.double().view(classes)
        if isinstance(alpha, torch.Tensor)
        else torch.full(classes, 1.0 if alpha is None else alpha, device=device)
    )

    def at_y(per_class):
        return per_class.expand_as(x).gather(1, safe.unsqueeze(1)).squeeze(1)

    log_p_y = log_p.gather(1, safe.unsqueeze(1)).squeeze(1)
    q_y = 1 - log_p_y.exp()
    g_y, w_y, a_y = at_y(g), at_y(w), at_y(a)
    loss = (1 - label_smoothing) * w_y * q_y**g_y * -log_p_y
    if label_smoothing:
        loss = loss + label_smoothing / num_classes * (w * (1 - p) ** g * -log_p).sum(1)
    loss = a_y * loss + poly_epsilon * w_y * q_y ** (g_y + 1)
    z_part = z_loss * torch.logsumexp(x, dim=1) ** 2
    v = element_weight.double() if element_weight is not None else torch.ones_like(loss)
    zero = torch.zeros_like(loss)
    loss = torch.where(valid, v * loss, zero)
    z_part = torch.where(valid, v * z_part, zero)
    if normalizer is not None:
        return (loss.sum() + z_part.sum()) / normalizer
    if reduction == "none":
        return loss + z_part
    if reduction == "sum":
        return loss.sum() + z_part.sum()
    denominator = torch.where(valid, v * w_y, zero).sum()
    z_denominator = torch.where(valid, v, zero).sum()
    focal = loss.sum() / denominator if denominator > 0 else loss.sum() * 0
    z_mean = z_part.sum() / z_denominator if z_denominator > 0 else z_part.sum() * 0
    return focal + z_mean


def _grad_output(loss, scale):
    """``scale`` (a number) for a reduced loss, a seeded random tensor for ``"none"``."""
    if loss.dim() == 0:
        return torch.tensor(float(scale), dtype=torch.float64, device=loss.device)
    generator = torch.Generator().manual_seed(3)
    return (torch.rand(loss.shape, dtype=torch.float64, generator=generator) + 0.5).to(loss.device)


def check(backend, x, t, dtype=torch.float32, tolerance=None, **options):
    """The backend's loss and gradient for ``dtype`` logits against :func:`formula` on the same
    (rounded) logits, for plain ``loss.backward()`` (grad_output 1) and for another grad_output
    (2, or a random one per element). Returns the loss and the grad_output-1 gradient."""
    tolerance = tolerance or {}
    logits = x.to(dtype)
    exact_input = logits.double().clone().requires_grad_()
    expected = formula(exact_input, t, **options)
    results = []
    for scale in (1.0, 2.0):
        xt = logits.clone().requires_grad_()
        loss = triton_focal.focal_loss(xt, t, backend=backend, **options)
        assert loss.dtype == dtype
        grad_output = _grad_output(loss, scale)
        if scale == 1.0 and loss.dim() == 0:
            loss.backward()  # the path where a forward may write the gradient
        else:
            loss.backward(grad_output.to(dtype))
        (expected_grad,) = torch.autograd.grad(expected, exact_input, grad_output, retain_graph=True)
        assert_close(loss, expected, f"{backend} loss", dtype=dtype, **tolerance)
        assert_close(xt.grad, expected_grad, f"{backend} grad (grad_output {scale})", dtype=dtype, **tolerance)
        assert torch.isfinite(xt.grad).all()
        results.append((loss, xt.grad))
    return results[0]


def rows(n=7, c=11, seed=0, scale=3.0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    t = torch.randint(0, c, (n,), generator=g)
    t[1] = -100
    return x.to(device), t.to(device)


def images(n=2, c=5, h=3, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * 2
    t = torch.randint(0, c, (n, h, w), generator=g)
    t[0, 0, 0] = -100
    return x.to(DEVICE), t.to(DEVICE)


# --- Poly-1 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("epsilon", [1.0, -0.5, 2.0])
def test_poly1_cross_entropy_is_optax_formula(backend, epsilon):
    # optax.poly_loss_cross_entropy: CE + eps * (1 - p_t), averaged here over non-ignored rows.
    x, t = rows()
    xt = x.float().requires_grad_()
    loss = triton_focal.focal_loss(xt, t, gamma=0.0, poly_epsilon=epsilon, backend=backend)
    loss.backward()
    exact = x.float().double().requires_grad_()
    valid = t != -100
    p_t = torch.softmax(exact[valid], dim=1).gather(1, t[valid].unsqueeze(1)).squeeze(1)
    optax = (torch.nn.functional.cross_entropy(exact[valid], t[valid], reduction="none") + epsilon * (1 - p_t)).mean()
    optax.backward()
    assert_close(loss, optax, "poly-1 CE")
    assert_close(xt.grad, exact.grad, "poly-1 CE grad")


@pytest.mark.compile_sample
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_poly_focal_with_alpha_weight_and_smoothing(backend, dtype, gamma):
    if backend == "compile" and dtype in (torch.float16, torch.float64):
        pytest.skip("two dtypes compile here; the others run the same compiled math")
    x, t = images()
    g = torch.Generator().manual_seed(1)
    alpha, weight = torch.rand(5, generator=g).to(DEVICE), (torch.rand(5, generator=g) + 0.5).to(DEVICE)
    check(
        backend, x, t, dtype, gamma=gamma, alpha=alpha, weight=weight, label_smoothing=0.1, poly_epsilon=0.7,
        reduction="none",
    )  # fmt: skip


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_per_class_gamma_in_the_poly_power(backend):
    x, t = rows()
    gamma = (torch.rand(11, generator=torch.Generator().manual_seed(2)) * 3).to(DEVICE)
    check(backend, x, t, gamma=gamma, poly_epsilon=-0.9, reduction="sum")


def test_poly_epsilon_does_not_change_the_mean_denominator():
    x, t = rows()
    weight = (torch.rand(11) + 0.1).to(DEVICE)
    plain = triton_focal.focal_loss(x, t, gamma=1.0, weight=weight, backend="reference", reduction="sum")
    mean = triton_focal.focal_loss(x, t, gamma=1.0, weight=weight, backend="reference", poly_epsilon=0.5)
    poly_sum = triton_focal.focal_loss(
        x, t, gamma=1.0, weight=weight, backend="reference", poly_epsilon=0.5, reduction="sum"
    )
    denominator = weight[t[t != -100]].double().sum()
    torch.testing.assert_close(mean, poly_sum / denominator)
    assert poly_sum > plain


# --- element_weight ----------------------------------------------------------------------------


def _element_weight(layout, shape, seed=4):
    """A weight shaped like the ``(N, H, W)`` target in a given memory layout."""
    g = torch.Generator().manual_seed(seed)
    n, h, w = shape
    if layout == "contiguous":
        v = (torch.rand(shape, generator=g) * 2).to(DEVICE)
        v[1, 2] = 0  # zeros are weights like any other
        return v
    if layout == "per_image":  # stride 0 along the pixels (mmseg's per-image weights, OHEM's masks)
        return (torch.rand(n, 1, 1, generator=g) + 0.1).to(DEVICE).expand(shape)
    if layout == "strided":  # every other column of a wider tensor: no unit stride
        return torch.rand(n, h, 2 * w, generator=g).to(DEVICE)[..., ::2]
    raise AssertionError(layout)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "per_image", "strided"])
def test_weighted_mean_with_z_loss(backend, layout):
    x, t = images()
    v = _element_weight(layout, t.shape)
    weight = (torch.rand(5, generator=torch.Generator().manual_seed(5)) + 0.5).to(DEVICE)
    if layout == "strided":
        assert not v.is_contiguous() and 0 not in v.stride()
    check(backend, x, t, gamma=2.0, weight=weight, z_loss=1e-2, element_weight=v)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_element_weights_zero_give_a_zero_mean_and_gradient(backend):
    x, t = images()
    weight = (torch.rand(5) + 0.5).to(DEVICE)
    xt = x.float().requires_grad_()
    v = torch.zeros(t.shape, device=DEVICE)
    loss = triton_focal.focal_loss(xt, t, gamma=2.0, weight=weight, z_loss=1e-2, element_weight=v, backend=backend)
    loss.backward()
    assert loss.item() == 0 and xt.grad.abs().max().item() == 0


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_element_weight_in_the_logits_dtype(backend, dtype):
    x, t = rows()
    v = torch.rand(t.shape).to(device=DEVICE, dtype=dtype)
    check(backend, x, t, dtype, gamma=0.5, poly_epsilon=1.0, element_weight=v, reduction="sum")


def test_element_weight_and_mean_match_cross_entropy_weighted_sum():
    # gamma = 0, integer weights: weighting an element by k is counting it k times.
    x, t = rows(n=4, c=3)
    t[1] = 2
    v = torch.tensor([2.0, 0.0, 1.0, 3.0], device=DEVICE)
    repeated = torch.tensor([0, 0, 2, 3, 3, 3], device=DEVICE)
    got = triton_focal.focal_loss(x, t, gamma=0.0, element_weight=v, backend="triton")
    torch.testing.assert_close(got, torch.nn.functional.cross_entropy(x[repeated], t[repeated]))


def test_reference_differentiates_a_learnable_element_weight():
    x, t = images()
    v = (torch.rand(t.shape, dtype=torch.float64) + 0.1).to(DEVICE).requires_grad_()
    loss = triton_focal.focal_loss(
        x, t, gamma=2.0, z_loss=1e-2, poly_epsilon=0.5, element_weight=v, backend="reference"
    )
    (grad,) = torch.autograd.grad(loss, v)
    exact_v = v.detach().clone().requires_grad_()
    (expected,) = torch.autograd.grad(
        formula(x, t, gamma=2.0, z_loss=1e-2, poly_epsilon=0.5, element_weight=exact_v), exact_v
    )
    assert_close(grad, expected, "d loss / d element_weight")


@pytest.mark.parametrize("backend", ["compile", "triton"])
def test_learnable_element_weight_is_refused_elsewhere(backend):
    x, t = rows()
    v = torch.rand(t.shape).to(DEVICE).requires_grad_()
    with pytest.raises(ValueError, match="element_weight requires grad"):
        triton_focal.focal_loss(x.float(), t, element_weight=v, backend=backend)


# --- normalizer ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("kind", ["number", "tensor"])
def test_normalizer_divides_everything(backend, reduction, kind):
    x, t = images()
    v = _element_weight("contiguous", t.shape)
    normalizer = 7.5 if kind == "number" else torch.tensor(7.5, device=DEVICE)
    check(
        backend, x, t, gamma=2.0, poly_epsilon=0.5, z_loss=1e-2, element_weight=v, normalizer=normalizer,
        reduction=reduction,
    )  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_normalizer_tensor_that_requires_grad_gets_its_gradient(backend):
    x, t = images()
    v = _element_weight("contiguous", t.shape)
    options = dict(gamma=2.0, z_loss=1e-2, element_weight=v, reduction="sum")
    for logits_grad in (True, False):
        normalizer = torch.tensor(7.5, device=DEVICE, requires_grad=True)
        xt = x.float().requires_grad_(logits_grad)
        loss = triton_focal.focal_loss(xt, t, normalizer=normalizer, backend=backend, **options)
        (loss * 3).backward()
        exact = torch.tensor(7.5, dtype=torch.float64, device=DEVICE, requires_grad=True)
        expected = formula(x.float().double(), t, normalizer=exact, **options)
        (expected * 3).backward()
        assert_close(loss, expected, "loss")
        assert_close(normalizer.grad, exact.grad, "d loss / d normalizer")
        torch.testing.assert_close(normalizer.grad.double(), -3 * loss.detach().double() / 7.5)
        assert (xt.grad is not None) == logits_grad


@pytest.mark.parametrize("backend", ["compile", "triton"])
def test_normalizer_number_is_a_runtime_value(backend):
    # The Triton kernel reads it as an argument; the compile backend passes it as a 0-dim tensor.
    x, t = rows()
    for _ in range(2):  # the second call may recompile once for its thread count (compiled.py)
        first = triton_focal.focal_loss(x.float(), t, normalizer=2.0, reduction="sum", backend=backend)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    second = triton_focal.focal_loss(x.float(), t, normalizer=4.0, reduction="sum", backend=backend)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    torch.testing.assert_close(first, 2 * second)


def test_row_statistics_path():
    # Hundreds of classes: the forward saves each row's softmax statistics and a backward for
    # grad_output != 1 reads them instead of the logits' first pass.
    x, t = images(n=1, c=160, h=32, w=32)
    assert softmax_ops.row_stats_buffer(x.float().flatten(2), 0.0) is not None
    v = _element_weight("per_image", t.shape)
    check(
        "triton",
        x,
        t,
        gamma=0.5,
        poly_epsilon=0.5,
        element_weight=v,
        z_loss=1e-2,
        normalizer=torch.tensor(9.0, device=DEVICE),
    )


@pytest.mark.parametrize("normalizer", [None, 3.0, "learned"])
def test_inplace_grad_with_the_options(normalizer):
    # The gradient written into the logits' storage; a normalizer that requires grad needs a
    # backward that differentiates it, so that call keeps the logits.
    x, t = images()
    v = _element_weight("per_image", t.shape)
    learned = normalizer == "learned"
    options = dict(gamma=0.5, poly_epsilon=0.5, element_weight=v, z_loss=1e-2, backend="triton")
    options["normalizer"] = torch.tensor(3.0, device=DEVICE, requires_grad=True) if learned else normalizer
    leaf = x.float().requires_grad_()
    logits = leaf * 1.0
    triton_focal.focal_loss(logits, t, inplace_grad=True, **options).backward(torch.tensor(2.0, device=DEVICE))
    expected = x.float().requires_grad_()
    triton_focal.focal_loss(expected, t, **options).backward(torch.tensor(2.0, device=DEVICE))
    assert_close(leaf.grad, expected.grad, "in-place grad")
    assert torch.equal(logits, leaf * 1.0) == learned


# --- edge cases -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_saturated_logits_stay_finite(backend, dtype, gamma):
    if backend == "compile" and dtype == torch.float16:
        pytest.skip("bfloat16 covers the compiled low-precision path")
    x, t = rows()
    x = x.sign() * 1e4  # p_y is exactly 0 or 1
    x[0, t[0]] = 6e4 if dtype == torch.float16 else 1e5
    v = (torch.rand(t.shape) + 0.1).to(DEVICE)
    xt = x.to(dtype).requires_grad_()
    loss = triton_focal.focal_loss(xt, t, gamma=gamma, poly_epsilon=-0.5, element_weight=v, backend=backend)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(xt.grad).all()
    exact = triton_focal.focal_loss(
        x.to(dtype).double(), t, gamma=gamma, poly_epsilon=-0.5, element_weight=v, backend="reference"
    )
    assert_close(loss, exact, "saturated loss", dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_class_is_no_class(backend):
    x, t = rows()
    t[t == 3] = 4
    masked = x.clone()
    masked[:, 3] = -math.inf
    v = (torch.rand(t.shape) + 0.1).to(DEVICE)
    options = dict(gamma=0.5, poly_epsilon=0.5, element_weight=v)
    xt = masked.float().requires_grad_()
    loss = triton_focal.focal_loss(xt, t, backend=backend, **options)
    loss.backward()
    kept = [c for c in range(11) if c != 3]
    exact = x[:, kept].float().double().requires_grad_()
    expected = formula(exact, torch.where(t > 3, t - 1, t), **options)
    expected.backward()
    assert_close(loss, expected, "masked loss")
    assert_close(xt.grad[:, kept], exact.grad, "masked grad")
    assert xt.grad[:, 3].abs().max() == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_all_ignored(backend, reduction):
    x, t = rows()
    t[:] = -100
    x[0, 0] = math.nan  # ignored elements are not read
    xt = x.float().requires_grad_()
    v = torch.rand(t.shape).to(DEVICE)
    loss = triton_focal.focal_loss(
        xt, t, gamma=0.5, poly_epsilon=0.5, z_loss=1e-2, element_weight=v, reduction=reduction, backend=backend
    )
    loss.backward()
    assert loss.item() == 0 and xt.grad.abs().max().item() == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_input(backend, reduction):
    x = torch.randn(0, 5, 3, device=DEVICE, requires_grad=True)
    t = torch.zeros(0, 3, dtype=torch.long, device=DEVICE)
    normalizer = 2.0 if reduction != "none" else None
    v = torch.ones(0, 3, device=DEVICE)
    loss = triton_focal.focal_loss(
        x, t, poly_epsilon=0.5, element_weight=v, normalizer=normalizer, reduction=reduction, backend=backend,
    )  # fmt: skip
    assert loss.shape == ((0, 3) if reduction == "none" else ())
    loss.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_label_smoothing_leaves_the_poly_term_alone(backend):
    x, t = rows()
    base = dict(gamma=1.0, label_smoothing=0.2, backend=backend, reduction="none")
    with_poly = triton_focal.focal_loss(x.float(), t, poly_epsilon=0.5, **base)
    without = triton_focal.focal_loss(x.float(), t, **base)
    p_y = torch.softmax(x.float(), 1).gather(1, t.clamp(min=0).unsqueeze(1)).squeeze(1)
    expected = torch.where(t != -100, 0.5 * (1 - p_y) ** 2, 0.0)
    torch.testing.assert_close(with_poly - without, expected, **TOLERANCES[torch.float32])


def test_poly_epsilon_minus_one_keeps_the_loss_non_negative():
    x, t = rows(scale=0.01)  # p_y near 1 / C and near 1 below: the bound is tight as p_y -> 1
    x[0] = 0
    x[0, t[0]] = 30
    for gamma in (0.0, 2.0):
        loss = triton_focal.focal_loss(x, t, gamma=gamma, poly_epsilon=-1.0, reduction="none", backend="reference")
        assert (loss >= 0).all()


# --- torch.compile of the Triton ops, launches ---------------------------------------------------


@pytest.mark.slow
def test_triton_ops_under_torch_compile_fullgraph():
    x, t = images()
    x = x.float()
    v = _element_weight("per_image", t.shape)
    normalizer = torch.tensor(5.0, device=DEVICE)

    def fn(logits):
        return triton_focal.focal_loss(
            logits * 1.0, t, gamma=2.0, poly_epsilon=0.5, element_weight=v, normalizer=normalizer, z_loss=1e-2,
            reduction="sum", backend="triton",
        )  # fmt: skip

    xt, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    loss = torch.compile(fn, fullgraph=True)(xt)
    loss.backward()
    fn(xe).backward()
    assert_close(loss, fn(x), "compiled loss")
    assert_close(xt.grad, xe.grad, "compiled grad")


class _CountLaunches(TorchDispatchMode):
    """The Triton kernels launched, and the torch ops called around them (each a launch on a
    GPU; allocations and views are not). Values are not checked, as on a GPU (no host sync)."""

    def __init__(self, patch):
        super().__init__()
        self.ops = []
        self.kernels = []
        for module, name, logged in [
            (softmax_ops, "_softmax_focal_kernel", "softmax"),
            (softmax_ops, "_softmax_focal_one_read_kernel", "softmax"),  # either kernel: the same launch
            (denominators_launcher, "_target_count_kernel", "_target_count_kernel"),
        ]:
            patch.setattr(module, name, _Counted(getattr(module, name), logged, self.kernels))
        patch.setattr(_validation, "values_known", lambda tensor, validate: False)

    # Not launches: allocations and views, and the interpreter's copies of each pointer argument
    # to and from numpy (copy_, set_), which a GPU launch does not make.
    NOT_LAUNCHES = ("empty", "view", "detach", "alias", "as_strided", "copy_", "set_")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not any(word in func.__name__ for word in self.NOT_LAUNCHES):
            self.ops.append(func.__name__)
        return func(*args, **(kwargs or {}))


class _Counted:
    def __init__(self, kernel, name, log):
        self.kernel, self.name, self.log, self.fn = kernel, name, log, kernel.fn

    def __getitem__(self, grid):
        self.log.append(self.name)
        return self.kernel[grid]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_options_add_no_launch(reduction):
    x, t = images()
    x = x.float()
    v = _element_weight("per_image", t.shape)

    def launches(**options):
        with pytest.MonkeyPatch.context() as patch:
            counter = _CountLaunches(patch)
            xt = x.clone().requires_grad_()
            with counter:
                loss = triton_focal.focal_loss(
                    xt, t, gamma=2.0, z_loss=1e-2, reduction=reduction, backend="triton", **options
                )
                loss.backward()
        return counter.kernels, sorted(counter.ops)

    plain_kernels, plain_ops = launches()
    # mean: the divisors' launch and the loss's (its backward launch exits at once); sum: no divisors
    assert plain_kernels == ["_target_count_kernel"] * (reduction == "mean") + ["softmax"] * 2
    assert launches(poly_epsilon=0.5, element_weight=v) == (plain_kernels, plain_ops)
    # A normalizer is the divisor: the divisors' launch goes
    for normalizer in (3.0, torch.tensor(3.0, device=DEVICE)):
        kernels, ops = launches(poly_epsilon=0.5, element_weight=v, normalizer=normalizer)
        assert kernels == ["softmax"] * 2 and ops == plain_ops


# --- modules --------------------------------------------------------------------------------


def test_module_keeps_poly_and_normalizer_and_takes_per_batch_values():
    x, t = images()
    v = _element_weight("contiguous", t.shape)
    module = triton_focal.FocalLoss(
        gamma=2.0, poly_epsilon=0.5, normalizer=torch.tensor(4.0, device=DEVICE), reduction="sum"
    )
    assert "normalizer" in module.state_dict()
    assert "poly_epsilon=0.5" in repr(module)
    expected = formula(x, t, gamma=2.0, poly_epsilon=0.5, normalizer=4.0)
    assert_close(module(x, t), expected, "stored normalizer")
    expected = formula(x, t, gamma=2.0, poly_epsilon=0.5, normalizer=8.0, element_weight=v)
    assert_close(module(x, t, element_weight=v, normalizer=8.0), expected, "per-batch values")
    learned = torch.tensor(4.0, device=DEVICE, requires_grad=True)
    triton_focal.FocalLoss(normalizer=learned, reduction="sum", backend="reference")(x, t).backward()
    assert learned.grad is not None


def test_module_checks_the_new_options_when_built():
    with pytest.raises(ValueError, match="poly_epsilon"):
        triton_focal.FocalLoss(poly_epsilon=-2.0)
    with pytest.raises(ValueError, match="normalizer"):
        triton_focal.FocalLoss(normalizer=2.0, reduction="none")
    with pytest.raises(TypeError, match="keyword"):
        triton_focal.FocalLoss(2.0)


# --- bad input -------------------------------------------------------------------------------


def _with(index, value):
    """Seven element weights of 1 with ``value`` at ``index``."""
    v = torch.ones(7)
    v[index] = value
    return v


@pytest.mark.parametrize(
    "options,error,message",
    [
        (dict(element_weight=torch.rand(7, 1)), ValueError, r"element_weight must have target's shape \(7,\)"),
        (dict(element_weight=torch.rand(3)), ValueError, r"expand\(target.shape\)"),
        (dict(element_weight=torch.ones(7, dtype=torch.long)), TypeError, "element_weight must be a floating-point"),
        (dict(element_weight=[1.0] * 7), TypeError, "element_weight must be a float tensor"),
        (dict(element_weight=_with(1, -1.0)), ValueError, "non-negative, got -1.0 at index 1"),
        (dict(element_weight=_with(2, math.nan)), ValueError, "element_weight must be finite and non-negative"),
        (dict(element_weight=_with(3, math.inf)), ValueError, "element_weight must be finite"),
        (dict(poly_epsilon=math.nan), ValueError, "poly_epsilon must be a finite number >= -1"),
        (dict(poly_epsilon=-1.5), ValueError, "poly_epsilon must be a finite number >= -1"),
        (dict(poly_epsilon=math.inf), ValueError, "poly_epsilon"),
        (dict(poly_epsilon="0.1"), ValueError, "poly_epsilon"),
        (dict(normalizer=2.0, reduction="none"), ValueError, "normalizer .*reduction='none'"),
        (dict(normalizer=0.0, reduction="sum"), ValueError, "normalizer must be a finite positive"),
        (dict(normalizer=torch.tensor(-1.0), reduction="sum"), ValueError, "normalizer must be finite and positive"),
        (dict(normalizer=torch.ones(2), reduction="sum"), ValueError, "normalizer must be a number or a 0-dim tensor"),
    ],
)  # fmt: skip
def test_bad_options_name_the_argument(options, error, message):
    # CPU tensors: the values of element_weight and normalizer are checked where known (the CPU).
    x, t = rows(device="cpu")
    with pytest.raises(error, match=message):
        triton_focal.focal_loss(x, t, backend="reference", **options)
