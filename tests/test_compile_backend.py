"""The compile backend: its closed-form math against the reference in float64, its autograd
(retain_graph, gradcheck, checkpointing, torch.func), and how it compiles (one notice per
configuration, no recompiles for values that vary, compile failures only fall back).

Every new static configuration costs a compilation (seconds on a CPU), so the tests share a
few: ``CHANNELS_FIRST`` (float64 ``(N, C, P)``) in three variants, and one of rows.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close
from torch._dynamo.eval_frame import _debug_get_cache_entry_list

import triton_focal
from triton_focal import compiled, reference

pytestmark = pytest.mark.slow

F64 = torch.float64
# Everything the reference takes, in one configuration (mean, alpha and weight vectors,
# label smoothing, z-loss, softcap) and the fast path's (no smoothing, per-row terms only).
FULL = dict(reduction="mean", label_smoothing=0.1, z_loss=1e-3, softcap=8.0)
FAST = dict(reduction="none", label_smoothing=0.0, alpha=0.25)
SMOOTH = dict(reduction="mean", label_smoothing=0.1)


def canonical(kwargs, num_classes, dtype=F64):
    """The backend arguments for ``kwargs`` (alpha/weight vectors where asked)."""
    gen = torch.Generator().manual_seed(1)
    args = dict(gamma=2.0, alpha=None, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0)
    args.update(kwargs)
    if args["alpha"] == "vector":
        args["alpha"] = torch.rand(num_classes, generator=gen, dtype=dtype) + 0.1
    if args["weight"] == "vector":
        args["weight"] = torch.rand(num_classes, generator=gen, dtype=dtype) + 0.1
    return args


def loss_and_grad(fn, x, target, grad_scale=None, **kwargs):
    x = x.detach().clone().requires_grad_()
    loss = fn(x, target, **kwargs)
    grad_output = torch.ones_like(loss) if grad_scale is None else grad_scale
    (loss * grad_output).sum().backward()
    return loss.detach(), x.grad


def compare(x, target, grad_scale=None, **kwargs):
    got = loss_and_grad(compiled.softmax_focal_loss, x, target, grad_scale, **kwargs)
    expected = loss_and_grad(reference.softmax_focal_loss, x, target, grad_scale, **kwargs)
    assert_close(got[0], expected[0], "loss")
    assert_close(got[1], expected[1], "grad")
    return got


def logits(shape, scale=3.0, seed=0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=dtype) * scale


def targets(shape, num_classes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, shape, generator=gen)
    target.view(-1)[::5] = -100
    return target


# --- values and gradients against the reference ------------------------------------------


@pytest.mark.parametrize("gamma", [2.0, 0.0, 0.5, "per-class"])
def test_everything_at_once_matches_the_reference(gamma):
    """alpha and weight vectors, label smoothing, z-loss, softcap, mean: one configuration,
    compiled once; gamma's value and the batch size change without recompiling."""
    num_classes = 6
    for batch in (3, 1):
        x, t = logits((batch, num_classes, 10)), targets((batch, 10), num_classes)
        g = torch.linspace(0, 3, num_classes, dtype=F64) if gamma == "per-class" else gamma
        compare(x, t, **canonical({**FULL, "gamma": g, "alpha": "vector", "weight": "vector"}, num_classes))


@pytest.mark.parametrize("alpha", [0.25, 0.75])
def test_target_only_path_matches_the_reference(alpha):
    """No label smoothing: only the target's term, with ``reduction="none"`` and a
    grad_output that is not 1."""
    x, t = logits((2, 5, 12)), targets((2, 12), 5)
    compare(x, t, grad_scale=torch.rand(2, 12, dtype=F64), **canonical({**FAST, "alpha": alpha, "gamma": 1.5}, 5))


def test_rows_with_sum_and_per_class_gamma():
    x, t = logits((9, 7)).unsqueeze(2), targets((9, 1), 7)
    args = canonical(dict(reduction="sum", label_smoothing=0.2, gamma=torch.rand(7, dtype=F64) * 3), 7)
    compare(x, t, **args)


@pytest.mark.parametrize("scale", [1e4, 30.0])
@pytest.mark.parametrize("gamma", [0.0, 0.3, 2.0])
def test_extreme_logits_stay_finite(scale, gamma):
    """+-1e4 logits saturate every probability; gamma < 1 makes ``(1 - p) ** (gamma - 1)``
    infinite in a naive derivative. The closed form stays finite and equals the reference."""
    x, t = logits((2, 5, 8), scale=scale), targets((2, 8), 5)
    for kwargs in (FAST, SMOOTH):
        loss, grad = compare(x, t, **canonical({**kwargs, "gamma": gamma}, 5))
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_masked_classes_and_nan_in_ignored_rows(gamma):
    """-inf on non-target classes: finite loss, zero gradient on those classes, the loss of
    the unmasked classes (smoothing terms of masked classes are 0). NaN in an ignored row:
    no effect at all."""
    x, t = logits((2, 5, 8)), targets((2, 8), 5)
    masked = torch.zeros_like(x, dtype=torch.bool)
    masked[0, :, 1] = True
    masked[0, t[0, 1], 1] = False
    masked[1, 4, :] = t[1] != 4
    x = x.masked_fill(masked, -float("inf"))
    x[:, :, 0] = float("nan")
    t[:, 0] = -100
    for kwargs in (FAST, SMOOTH):
        args = canonical({**kwargs, "gamma": gamma}, 5)
        loss, grad = loss_and_grad(compiled.softmax_focal_loss, x, t, **args)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        assert (grad[masked] == 0).all() and (grad[:, :, 0] == 0).all()
        # The same rows without the masked classes and the NaN columns, in float64 by hand.
        valid = t != -100
        rows = []
        for n, p in valid.nonzero().tolist():
            keep = ~masked[n, :, p]
            z, y = x[n, keep, p], int(keep[: t[n, p]].sum())
            log_p = torch.log_softmax(z, 0)
            f = (-torch.expm1(log_p)) ** gamma * -log_p
            eps = args["label_smoothing"]
            rows.append((args["alpha"] or 1.0) * ((1 - eps) * f[y] + eps / 5 * f.sum()))
        expected = torch.stack(rows)
        if args["reduction"] == "mean":
            expected = expected.sum() / valid.sum()
        else:
            loss = loss[valid]
        assert_close(loss, expected, "loss")


def test_negative_infinite_target_logit_follows_cross_entropy():
    x, t = logits((2, 4, 3)), torch.tensor([[0, 1, 2], [3, 0, 1]])
    x[0, 0, 0] = -float("inf")
    args = canonical({**FAST, "gamma": 0.0, "alpha": 1.0}, 4)
    loss, grad = loss_and_grad(compiled.softmax_focal_loss, x, t, **args)
    ce_loss, ce_grad = loss_and_grad(lambda x, t: F.cross_entropy(x, t, reduction="none"), x, t)
    assert_close(loss, ce_loss, "loss")
    assert_close(grad, ce_grad, "grad")


def test_z_loss_and_softcap_equal_liger_cross_entropy_at_gamma_zero():
    """gamma=0: Liger-Kernel's cross entropy with ``lse_square_scale=k`` and ``softcap=c``,
    written out in plain torch: ``z = c tanh(x / c)``, ``ce(z) + k * lse(z) ** 2``, the mean
    over non-ignored rows (and the gradient through the tanh)."""
    k, c = 1e-2, 5.0
    x, t = logits((10, 7), scale=6.0), targets((10,), 7)

    def liger(x, t):
        z = c * torch.tanh(x / c)
        valid = t != -100
        ce = F.cross_entropy(z, t, reduction="sum", ignore_index=-100)
        lse = torch.logsumexp(z, dim=1)
        return (ce + k * (lse[valid] ** 2).sum()) / valid.sum()

    def ours(x, t):
        return compiled.softmax_focal_loss(
            x.unsqueeze(2), t.unsqueeze(1), **canonical(dict(gamma=0.0, z_loss=k, softcap=c), 7)
        )

    got, expected = loss_and_grad(ours, x, t), loss_and_grad(liger, x, t)
    assert_close(got[0], expected[0], "loss")
    assert_close(got[1], expected[1], "grad")


def test_mean_of_nothing_is_zero():
    """Every row ignored, or every present class weighted 0 (label smoothing on): the focal
    part of the mean is 0 with a zero gradient; the z-loss part is its own mean over rows."""
    x = logits((2, 5, 4))
    args = canonical({**FULL, "alpha": "vector", "weight": "vector"}, 5)
    loss, grad = loss_and_grad(compiled.softmax_focal_loss, x, torch.full((2, 4), -100), **args)
    assert loss.item() == 0 and (grad == 0).all()
    args["weight"][0] = 0
    loss, grad = loss_and_grad(compiled.softmax_focal_loss, x, torch.zeros(2, 4, dtype=torch.long), **args)
    lse = torch.logsumexp(args["softcap"] * torch.tanh(x / args["softcap"]), dim=1)
    assert_close(loss, args["z_loss"] * (lse**2).mean(), "z-loss part alone")
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("index_targets", [True, False])
def test_sigmoid_matches_the_reference(index_targets):
    """Class-index targets (background ``C``, an ignored row, a broadcast weight, a
    ``normalizer`` tensor that gets its gradient) and dense soft targets on rows (per-class
    gamma, no alpha, mean), with +-1e4 logits."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, 5, generator=gen, dtype=F64) * 4
    x[0, 0, 0], x[1, 1, 1] = 1e4, -1e4
    if index_targets:
        target = torch.randint(0, 5, (6, 5), generator=gen)  # 4 = background
        target[2, 3] = -100
        weight = (torch.rand(1, 4, 1, generator=gen, dtype=F64) + 0.5).expand(6, 4, 5)
        kwargs = dict(alpha=0.25, gamma=0.5, weight=weight, ignore_index=-100, reduction="sum")
    else:  # rows, (N, C, 1), as detection heads give them
        x = x.permute(0, 2, 1).reshape(30, 4, 1)
        target = torch.rand(30, 4, 1, generator=gen, dtype=F64)
        gamma = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=F64)
        kwargs = dict(alpha=-1.0, gamma=gamma, weight=None, ignore_index=-100, reduction="mean", normalizer=None)
    results = {}
    for name, module in (("compile", compiled), ("reference", reference)):
        xs = x.clone().requires_grad_()
        if index_targets:
            kwargs["normalizer"] = torch.tensor(3.0, dtype=F64, requires_grad=True)
        loss = module.sigmoid_focal_loss(xs, target, **kwargs)
        loss.backward()
        results[name] = [loss.detach(), xs.grad] + ([kwargs["normalizer"].grad] if index_targets else [])
    for got, expected, what in zip(results["compile"], results["reference"], ("loss", "grad", "normalizer grad")):
        assert_close(got, expected, what)
    assert torch.isfinite(results["compile"][1]).all()


@pytest.mark.parametrize("loss_name", ["softmax", "sigmoid"])
def test_grad_output_other_than_one_scales_the_forward_gradient(loss_name):
    """Plain ``loss.backward()`` hands over the gradient the forward wrote; a scaled loss and a
    second backward through a kept graph get it times their grad_output."""
    x = logits((3, 4, 7))
    if loss_name == "softmax":
        t, fn, ref = targets((3, 7), 4), compiled.softmax_focal_loss, reference.softmax_focal_loss
        kwargs = canonical(dict(reduction="mean", alpha=0.25), 4)
    else:
        t = (torch.rand(3, 4, 7, generator=torch.Generator().manual_seed(1)) < 0.3).to(F64)
        fn, ref = compiled.sigmoid_focal_loss, reference.sigmoid_focal_loss
        kwargs = dict(alpha=0.25, gamma=2.0, weight=None, ignore_index=-100, reduction="mean", normalizer=None)
    expected = loss_and_grad(ref, x, t, **kwargs)[1]
    for scale in (1.0, 2.5, -0.5):
        xs = x.clone().requires_grad_()
        (fn(xs, t, **kwargs) * scale).backward()
        assert_close(xs.grad, scale * expected, f"grad_output {scale}")


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="one CPU thread: nothing to split")
@pytest.mark.skipif(not compiled._SIZE_HINTS, reason="this torch has no size hints to plan with")
def test_threading_is_planned_for_large_inputs_whatever_the_first_call(monkeypatch):
    """A configuration first compiled on a tiny batch of two still splits its loops across
    threads, and splits the batch and pixel loops together (so a batch of one is split too):
    Inductor would otherwise plan from the first call's sizes and, through its on-disk
    cache, keep that plan in every later process."""
    from torch._inductor.utils import run_and_get_code

    monkeypatch.setattr(compiled, "_REGISTRY", {})
    x, t = logits((2, 5, 8), dtype=torch.float32).requires_grad_(), targets((2, 8), 5)
    _, codes = run_and_get_code(lambda: compiled.softmax_focal_loss(x, t, **canonical(FAST, 5)).sum().backward())
    code = "\n".join(codes)
    assert "#pragma omp parallel" in code
    assert "#pragma omp for collapse(2)" in code


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="one CPU thread: nothing to split")
def test_small_calls_run_on_one_thread_large_ones_on_all(monkeypatch):
    """A parallel region costs a scheduler time slice per barrier on a busy machine, so a
    call runs on as many threads as its size gives enough work each (the first call of a
    configuration compiles on all of them); the caller's thread count is restored after."""
    monkeypatch.setattr(compiled, "_REGISTRY", {})
    threads = torch.get_num_threads()
    per_thread = compiled._MIN_ELEMENTS_PER_THREAD
    assert compiled.call_threads(100, threads) == 1
    assert compiled.call_threads(per_thread * threads, threads) == threads
    assert compiled.call_threads(per_thread * threads * 10, threads) == threads
    seen = []
    args = canonical(FAST, 5)
    x, t = logits((2, 5, 8), dtype=torch.float32).requires_grad_(), targets((2, 8), 5)
    compiled.softmax_focal_loss(x, t, **args).sum().backward()  # compiles
    (entry,) = compiled._REGISTRY.values()
    inner = entry.compiled["forward_and_grad"]
    monkeypatch.setitem(
        entry.compiled, "forward_and_grad", lambda *a, **k: seen.append(torch.get_num_threads()) or inner(*a, **k)
    )
    compiled.softmax_focal_loss(x, t, **args).sum().backward()
    assert seen == [1] and torch.get_num_threads() == threads
    big = per_thread * threads // 5 + 8
    xb, tb = logits((1, 5, big), dtype=torch.float32).requires_grad_(), targets((1, big), 5)
    loss = compiled.softmax_focal_loss(xb, tb, **args)
    assert seen == [1, threads] and torch.get_num_threads() == threads
    assert_close(loss.detach(), reference.softmax_focal_loss(xb.detach(), tb, **args), "large call")


@pytest.mark.parametrize("rows", [False, True])
def test_a_planned_batch_far_from_the_real_one_changes_no_result(monkeypatch, rows):
    """The threading plan's batch hint (31 on a 16-thread machine, 4096 for rows) is only a
    hint: batches on both sides of it give the reference's numbers and compile no more."""
    monkeypatch.setattr(compiled, "_REGISTRY", {})
    monkeypatch.setattr(compiled, "_planned_batch", lambda rows: 4096 if rows else 31)
    args = canonical(dict(reduction="mean", alpha=0.25), 5)
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        for batch in (2, 40, 3, 1):
            shape = (batch, 5, 1) if rows else (batch, 5, 9)
            compare(logits(shape), targets(shape[:1] + shape[2:], 5), **args)
    for entry in compiled._REGISTRY.values():
        for function in entry.compiled.values():
            versions = _debug_get_cache_entry_list(function._torchdynamo_orig_callable.__code__)
            assert len(versions) <= 2, f"{entry.description} compiled {len(versions)} versions"


def test_sigmoid_focal_loss_star_matches_the_reference():
    x, t = logits((5, 7)), torch.rand(5, 7, dtype=F64)
    for alpha, gamma in ((0.25, 1.0), (0.5, 3.0)):
        kwargs = dict(alpha=alpha, gamma=gamma, reduction="mean")
        got = loss_and_grad(compiled.sigmoid_focal_loss_star, x, t, **kwargs)
        expected = loss_and_grad(reference.sigmoid_focal_loss_star, x, t, **kwargs)
        assert_close(got[0], expected[0], "loss")
        assert_close(got[1], expected[1], "grad")


def test_low_precision_matches_the_reference():
    x = logits((2, 5, 16), dtype=torch.float32).to(torch.bfloat16)
    t = targets((2, 16), 5)
    args = canonical(FAST, 5)
    got = loss_and_grad(compiled.softmax_focal_loss, x, t, **args)
    expected = loss_and_grad(reference.softmax_focal_loss, x, t, **args)
    assert got[0].dtype == got[1].dtype == torch.bfloat16
    assert_close(got[0], expected[0], "loss")
    assert_close(got[1], expected[1], "grad")


# --- autograd ----------------------------------------------------------------------------


def test_retain_graph_and_gradcheck():
    """The forward's gradient buffer is handed to autograd only by a backward that frees the
    graph: the kept graph's later backwards still read it unchanged."""
    x, t = logits((2, 5, 6)), targets((2, 6), 5)
    args = canonical(FAST, 5)
    xs = x.clone().requires_grad_()
    loss = compiled.softmax_focal_loss(xs, t, **{**args, "reduction": "mean"})
    loss.backward(retain_graph=True)
    first = xs.grad.clone()
    expected = loss_and_grad(reference.softmax_focal_loss, x, t, **{**args, "reduction": "mean"})[1]
    assert_close(first, expected, "first backward")
    loss.backward(retain_graph=True)
    loss.backward()
    assert_close(xs.grad, 3 * first, "third backward")
    assert torch.autograd.gradcheck(lambda x: compiled.softmax_focal_loss(x, t, **args), (x.clone().requires_grad_(),))


def test_second_derivative_raises_instead_of_returning_a_wrong_number():
    x, t = logits((2, 5, 6)), targets((2, 6), 5)
    xs = x.clone().requires_grad_()
    loss = compiled.softmax_focal_loss(xs, t, **canonical(FAST, 5)).sum()
    # A Hessian-vector product of the loss plus another term: the loss's part must not vanish.
    total = loss + (xs**3).sum()
    (grad,) = torch.autograd.grad(total, xs, create_graph=True)
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad((grad * torch.ones_like(grad)).sum(), xs)


def test_activation_checkpointing_and_torch_func():
    x, t = logits((2, 5, 6)), targets((2, 6), 5)
    args = canonical(FAST, 5)
    layer = torch.nn.Linear(6, 6).double()

    def block(x):
        return compiled.softmax_focal_loss(layer(x), t, **args).sum()

    xs = x.clone().requires_grad_()
    torch.utils.checkpoint.checkpoint(block, xs, use_reentrant=False).backward()
    expected = x.clone().requires_grad_()
    block(expected).backward()
    assert_close(xs.grad, expected.grad, "checkpointed grad")

    def loss(x):
        return compiled.softmax_focal_loss(x, t, **args).sum()

    assert_close(torch.func.grad(loss)(x), loss_and_grad(lambda x, t: loss(x), x, t)[1], "torch.func.grad")


# --- compilation -------------------------------------------------------------------------


def test_user_errors_propagate_and_change_nothing():
    """An error of the call itself (here a class index out of range, which this backend
    counts in its forward) is raised as is; the configuration stays compiled."""
    x, t = logits((2, 5, 6)), targets((2, 6), 5)
    args = canonical(FAST, 5)
    bad = t.clone()
    bad[0, 1] = 7
    with pytest.raises(ValueError, match="class index 7, outside"):
        compiled.softmax_focal_loss(x, bad, **args)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        compare(x, t, **args)
    assert not any(entry.failed for entry in compiled._REGISTRY.values())


def test_compile_failure_runs_the_same_math_eagerly_with_one_warning(monkeypatch):
    def cannot_compile(fn, **kwargs):
        def run(*args, **kw):
            raise torch._inductor.exc.InvalidCxxCompiler()

        return run

    monkeypatch.setattr(compiled, "_REGISTRY", {})
    monkeypatch.setattr(torch, "compile", cannot_compile)
    x, t = logits((2, 5, 6)), targets((2, 6), 5)
    args = canonical(FAST, 5)
    with pytest.warns(RuntimeWarning, match="cannot compile"):
        compare(x, t, **args)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        compare(x, t, **args)


def test_twelve_configurations_compile_once_each_with_one_notice(monkeypatch):
    """A realistic script: two image sizes, batch 1, reduction none, alpha, weight, label
    smoothing and a gamma sweep, through the public API. No function reaches torch's
    recompile limit (it would raise here); each configuration announces its compilation
    once, naming it and how to skip it; the values that vary recompile nothing."""
    monkeypatch.setattr(compiled, "_REGISTRY", {})
    gen = torch.Generator().manual_seed(0)
    weight = torch.rand(4, generator=gen) + 0.5
    calls = [
        ((2, 4, 8, 8), {}),
        ((2, 4, 12, 10), {}),
        ((1, 4, 8, 8), {}),
        ((2, 4, 8, 8), dict(reduction="none")),
        ((1, 4, 12, 10), dict(reduction="none")),
        ((2, 4, 8, 8), dict(alpha=0.25)),
        ((2, 4, 8, 8), dict(alpha=0.5)),
        ((2, 4, 8, 8), dict(weight=weight)),
        ((3, 4, 12, 10), dict(weight=weight, gamma=1.0)),
        ((2, 4, 8, 8), dict(label_smoothing=0.1)),
        ((1, 4, 8, 8), dict(label_smoothing=0.2, gamma=0.5)),
        ((2, 4, 8, 8), dict(gamma=3.0)),
    ]
    with warnings.catch_warnings(record=True) as caught, torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        warnings.simplefilter("always")
        for shape, kwargs in calls:
            x = torch.randn(shape, generator=gen, requires_grad=True)
            t = torch.randint(0, 4, shape[:1] + shape[2:], generator=gen)
            loss = triton_focal.focal_loss(x, t, backend="compile", **kwargs)
            loss.sum().backward()
            expected = triton_focal.focal_loss(x.detach(), t, backend="reference", **kwargs)
            assert_close(loss.detach(), expected, f"loss of {kwargs}")
    notices = [str(w.message) for w in caught if issubclass(w.category, compiled.CompileNotice)]
    assert len(notices) == len(set(notices)) == len(compiled._REGISTRY) == 5
    assert all("backend='reference'" in n and "TRITON_FOCAL_BACKEND" in n and "reduction=" in n for n in notices)
    for entry in compiled._REGISTRY.values():
        for function in entry.compiled.values():
            versions = _debug_get_cache_entry_list(function._torchdynamo_orig_callable.__code__)
            assert len(versions) <= 2, f"{entry.description} compiled {len(versions)} versions"
    assert not [w for w in caught if "recompile" in str(w.message).lower()]


@pytest.mark.parametrize("index_targets", [True, False])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_float32_sums_over_millions_of_terms_are_accurate(index_targets, reduction):
    """A detection head's fp32 loss, (100000, 80) = 8M terms: the sum is taken per row, then
    over rows in float64, so it agrees with a float64 reference to ~1e-7 (one float32 sum
    over every element was off by 1.5e-4)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(100_000, 80, generator=gen) * 3
    labels = torch.randint(0, 81, (100_000,), generator=gen)  # 80: background
    labels[::7] = -100
    target = labels if index_targets else F.one_hot(labels.clamp_min(0), 81)[:, :80].float()
    kwargs = dict(alpha=0.25, gamma=2.0, reduction=reduction)
    got = triton_focal.sigmoid_focal_loss(x.requires_grad_(), target, backend="compile", **kwargs)
    wide_target = target if index_targets else target.double()
    expected = triton_focal.sigmoid_focal_loss(x.detach().double(), wide_target, backend="reference", **kwargs)
    assert got.dtype == torch.float32
    rel = abs(float(got) - float(expected)) / abs(float(expected))
    assert rel < 2e-6, f"relative error {rel:.1e}"


@pytest.mark.real_eager_threshold
def test_tiny_cpu_inputs_run_the_reference_and_compile_nothing(monkeypatch):
    """Below EAGER_BELOW logits the compile backend's fixed cost per call exceeds the whole
    eager loss: such calls run the reference (same numbers), compile nothing, announce nothing."""
    monkeypatch.setattr(compiled, "_REGISTRY", {})
    x = logits((1, 5, 8, 8), dtype=torch.float32).requires_grad_()
    t = targets((1, 8, 8), 5)
    assert x.numel() < compiled.EAGER_BELOW
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = triton_focal.focal_loss(x, t, backend="compile")
        loss.backward()
        sig = triton_focal.sigmoid_focal_loss(x, t, backend="compile", reduction="sum")
    assert compiled._REGISTRY == {}
    assert not [w for w in caught if issubclass(w.category, compiled.CompileNotice)]
    assert_close(loss.detach(), triton_focal.focal_loss(x.detach(), t, backend="reference"), "loss")
    assert_close(
        sig.detach(), triton_focal.sigmoid_focal_loss(x.detach(), t, backend="reference", reduction="sum"), "sigmoid"
    )
    with pytest.raises(ValueError, match="target"):  # the class-index check still runs
        triton_focal.focal_loss(x, torch.full((1, 8, 8), 7), backend="compile")
