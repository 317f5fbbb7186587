"""The Triton softmax focal loss against the float64 reference: values, gradients, layouts,
numerics and the torch.library / autograd wiring. Runs under TRITON_INTERPRET=1 without a
GPU, so every shape is small."""

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICE, assert_close, assert_no_worse_than_torch, assert_same_gradient

from triton_focal import reference
from triton_focal.kernels.grad_mode import GRAD_IF_POLICY, GRAD_NONE
from triton_focal.ops import softmax_focal as ops
from triton_focal.ops.softmax_options import NORMALIZER_ARG, OP_ARGS, SoftmaxOptions

# The interpreter evaluates masked lanes too (log 0, inf * 0) and numpy warns about them.
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")

DEFAULTS = dict(gamma=2.0, alpha=None, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0)


def make_inputs(shape, dtype=torch.float32, scale=3.0, ignore_frac=0.2, seed=0, layout="contiguous"):
    """Logits in the user's shape (``(N, C)`` or ``(N, C, d...)``), their canonical
    ``(N, C, P)`` view, and ``(N, P)`` targets with some ignored elements."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * scale).to(device=DEVICE, dtype=dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "transposed":
        # Classes last in memory, then sliced: no stride is 1 in the (N, C, P) view's P.
        full = torch.randn((shape[0],) + shape[2:-1] + (2 * shape[-1], shape[1]), generator=g) * scale
        full = full.to(device=DEVICE, dtype=dtype)
        x = full.movedim(-1, 1)[..., ::2]
    ncp = x.unsqueeze(2) if x.dim() == 2 else x.flatten(2)
    n, c, p = ncp.shape
    target = torch.randint(0, c, (n, p), generator=g)
    target[torch.rand((n, p), generator=g) < ignore_frac] = -100
    return ncp, target.to(DEVICE)


def run_both(x, target, grad_seed=1, **kwargs):
    """Loss and gradient of the Triton op and of the float64 reference, with the same
    random grad_output (a scalar for sum/mean, ``(N, P)`` for none)."""
    args = {**DEFAULTS, **kwargs}
    xt = x.detach().clone().requires_grad_()
    loss = ops.softmax_focal_loss(xt, target, **args)
    g = torch.Generator().manual_seed(grad_seed)
    grad_out = (torch.rand(loss.shape, generator=g, dtype=torch.float64) + 0.5).to(DEVICE)
    (grad,) = torch.autograd.grad(loss, xt, grad_out.to(loss.dtype))
    xr = x.detach().double().requires_grad_()
    ref_args = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    ref = reference.softmax_focal_loss(xr, target, **ref_args)
    (ref_grad,) = torch.autograd.grad(ref, xr, grad_out)
    return loss, grad, ref, ref_grad


def check(x, target, **kwargs):
    loss, grad, ref, ref_grad = run_both(x, target, **kwargs)
    assert loss.dtype == x.dtype and grad.dtype == x.dtype
    assert_close(loss, ref, "loss", dtype=x.dtype)
    assert_close(grad, ref_grad, "grad", dtype=x.dtype)
    return loss, grad


@pytest.fixture
def small_blocks(monkeypatch):
    """Shrink the launch table and the GPU so that tiny shapes take every loop: several class
    steps per row, rows split over lanes, and programs that walk several tiles."""
    monkeypatch.setattr(ops, "STRIDED_BLOCK_C", 2)
    monkeypatch.setattr(ops, "MAX_SPLIT", 4)
    monkeypatch.setattr(ops.PersistentGrid, "programs", lambda self, num_tiles, *args: min(num_tiles, 2))


SHAPES = [
    ((2, 5, 4, 6), "contiguous"),  # channels-first segmentation, C not a power of two
    ((2, 1, 3, 3), "contiguous"),  # C = 1: p_y = 1, the loss and gradient are exactly 0
    ((9, 2), "contiguous"),  # (T, V) rows with V = 2: several rows per program
    ((3, 5000), "contiguous"),  # rows with a large vocabulary held in one block
    ((2, 9000), "contiguous"),  # rows beyond one block: the looping path (9000 = 8192 + 808)
    ((1, 1100, 3, 2), "contiguous"),  # channels-first beyond 1024 classes: looping over strided classes
    ((2, 6, 3, 5), "channels_last"),  # stride_c == 1 and stride_p == C
    ((2, 7, 3, 4), "transposed"),  # a transposed, sliced view: no unit stride along positions
    ((1, 3, 1, 1), "contiguous"),  # a single element
]


@pytest.mark.parametrize("shape,layout", SHAPES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_layouts_match_reference(shape, layout, reduction):
    x, target = make_inputs(shape, layout=layout)
    check(x, target, reduction=reduction)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0, "per-class"])
@pytest.mark.parametrize("multi_block", [False, True])
def test_gamma(gamma, multi_block, request):
    if multi_block:
        request.getfixturevalue("small_blocks")
    x, target = make_inputs((2, 19, 3, 5))  # 19 classes: 3 blocks of 8 in the looping path
    if gamma == "per-class":
        gamma = torch.linspace(0.0, 5.0, 19, device=DEVICE)
    check(x, target, gamma=gamma)
    check(x, target, gamma=gamma, label_smoothing=0.2, reduction="none")


OPTIONS = [
    dict(alpha=0.25),  # scalar alpha: multiplies, never enters the mean's denominator
    dict(alpha="per-class"),  # RetinaNet-style per-class alpha
    dict(weight="per-class"),  # F.cross_entropy's weight: enters the denominator
    dict(weight="per-class", alpha="per-class", gamma="per-class", label_smoothing=0.1),  # everything at once
    dict(label_smoothing=1.0),  # the smoothing term alone
    dict(ignore_index=3),  # a real class index ignored
]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("multi_block", [False, True])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_options(options, multi_block, reduction, request):
    if multi_block:
        request.getfixturevalue("small_blocks")
    num_classes = 13
    x, target = make_inputs((3, num_classes, 2, 3), seed=2)
    g = torch.Generator().manual_seed(3)
    per_class = {
        "alpha": torch.rand(num_classes, generator=g).to(DEVICE),
        "weight": (torch.rand(num_classes, generator=g) + 0.1).to(DEVICE),
        "gamma": (torch.rand(num_classes, generator=g) * 3).to(DEVICE),
    }
    kwargs = {k: per_class[k] if v == "per-class" else v for k, v in options.items()}
    target[target == -100] = kwargs.get("ignore_index", -100)
    check(x, target, reduction=reduction, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,layout", [((2, 7, 4, 5), "contiguous"), ((6, 300), "contiguous")])
def test_low_precision(dtype, shape, layout):
    x, target = make_inputs(shape, dtype=dtype, layout=layout)
    loss, grad = check(x, target, reduction="sum", label_smoothing=0.1)
    # PyTorch's own computation in the same dtype: our error may not exceed its error.
    xt = x.detach().clone().requires_grad_()
    log_p = F.log_softmax(xt, dim=1)
    focal = (-torch.expm1(log_p)).clamp_min(torch.finfo(dtype).tiny) ** 2.0 * -log_p
    valid = target != -100
    safe = torch.where(valid, target, 0).unsqueeze(1)
    per_elem = 0.9 * focal.gather(1, safe).squeeze(1) + (0.1 / x.shape[1]) * focal.sum(1)
    torch_loss = torch.where(valid, per_elem, torch.zeros_like(per_elem)).sum()
    (torch_grad,) = torch.autograd.grad(torch_loss, xt)
    _, _, ref, ref_grad = run_both(x, target, reduction="sum", label_smoothing=0.1)
    assert_no_worse_than_torch(loss, torch_loss, ref, "loss")
    sum_args = {**DEFAULTS, "reduction": "sum", "label_smoothing": 0.1}
    xt2 = x.detach().clone().requires_grad_()
    (ours_grad,) = torch.autograd.grad(ops.softmax_focal_loss(xt2, target, **sum_args), xt2)
    xr = x.detach().double().requires_grad_()
    (gold_grad,) = torch.autograd.grad(reference.softmax_focal_loss(xr, target, **sum_args), xr)
    assert_no_worse_than_torch(ours_grad, torch_grad, gold_grad, "grad")


def test_gamma0_is_cross_entropy():
    # The drop-in contract, against PyTorch itself rather than our reference.
    x, target = make_inputs((3, 6, 4, 2), seed=5)
    weight = (torch.rand(6) + 0.5).to(DEVICE)
    for reduction in ("none", "sum", "mean"):
        loss, grad, _, _ = run_both(x, target, gamma=0.0, weight=weight, reduction=reduction, label_smoothing=0.1)
        xt = x.detach().view(3, 6, 4, 2).clone().requires_grad_()
        ce = F.cross_entropy(xt, target.view(3, 4, 2), weight=weight, reduction=reduction, label_smoothing=0.1)
        g = torch.Generator().manual_seed(1)
        grad_out = (torch.rand(loss.shape, generator=g, dtype=torch.float64) + 0.5).to(DEVICE)
        (ce_grad,) = torch.autograd.grad(ce, xt, grad_out.float().view(ce.shape))
        assert_close(loss, ce.reshape(loss.shape), "loss vs cross_entropy", rtol=1e-5, atol=1e-6)
        assert_close(grad, ce_grad.reshape(grad.shape), "grad vs cross_entropy", rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype,big", [(torch.float32, 1e4), (torch.float16, 6e4), (torch.bfloat16, 1e4)])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 5.0])
def test_extreme_logits_are_finite(dtype, big, gamma):
    # Saturated softmax: p_y exactly 0 or 1 in floating point, where (1 - p) ** (gamma - 1) blows up.
    rows = [
        ([1, -1, 0], 0),  # p_y == 1: loss and gradient exactly 0 at gamma > 0
        ([-1, 1, 1], 1),  # p_y == 0.5 next to a class at p == 0
        ([0, 0, 0], 2),  # uniform
        ([0, 1, 0], 0),  # p_y == 0: loss == big
    ]
    if dtype != torch.float16:
        rows.append(([1, 1, -1], 2))  # loss == 2 * big, past float16's range
    x = torch.tensor([r for r, _ in rows], dtype=torch.float64).mul(big).to(device=DEVICE, dtype=dtype)
    target = torch.tensor([t for _, t in rows], device=DEVICE)
    for smoothing in (0.0, 0.1):
        loss, grad = check(
            x.unsqueeze(2), target.unsqueeze(1), gamma=gamma, reduction="none", label_smoothing=smoothing
        )
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()


def test_all_ignored_mean_is_zero():
    x, target = make_inputs((2, 4, 3, 3))
    target.fill_(-100)
    xt = x.clone().requires_grad_()
    loss = ops.softmax_focal_loss(xt, target, **{**DEFAULTS, "weight": torch.rand(4).to(DEVICE)})
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(xt.grad, torch.zeros_like(xt))


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_empty_batch(reduction):
    xt = torch.randn(0, 5, 3, device=DEVICE, requires_grad=True)
    target = torch.zeros(0, 3, dtype=torch.long, device=DEVICE)
    loss = ops.softmax_focal_loss(xt, target, **{**DEFAULTS, "reduction": reduction})
    assert loss.shape == ((0, 3) if reduction == "none" else ())
    loss.sum().backward()
    assert xt.grad.shape == xt.shape
    if reduction != "none":
        assert loss.item() == 0.0


@pytest.mark.parametrize("multi_block", [False, True])
def test_nan_input_gives_nan_loss(multi_block, request):
    if multi_block:
        request.getfixturevalue("small_blocks")
    x, target = make_inputs((2, 11, 4), ignore_frac=0.0)
    x[0, 3, 2] = float("nan")
    loss, grad, ref, ref_grad = run_both(x, target, reduction="none")
    assert torch.isnan(loss[0, 2]) and torch.isnan(grad[0, :, 2]).all()
    others = torch.ones_like(loss, dtype=torch.bool)
    others[0, 2] = False
    assert_close(loss[others], ref[others], "other losses")
    assert_close(grad.movedim(1, 2)[others], ref_grad.movedim(1, 2)[others], "other gradients")


def test_out_of_range_target_is_nan_not_a_wild_read():
    # The public API rejects these on the CPU; the kernel masks its loads and flags the row.
    x, _ = make_inputs((1, 4, 3))
    target = torch.tensor([[0, 9, -7]], device=DEVICE)
    loss = ops.softmax_focal_loss(x, target, **{**DEFAULTS, "reduction": "none"})
    assert torch.isfinite(loss[0, 0]) and torch.isnan(loss[0, 1:]).all()


@pytest.mark.parametrize("multi_block", [False, True])
def test_reruns_are_bit_identical(multi_block, request):
    if multi_block:
        request.getfixturevalue("small_blocks")
    x, target = make_inputs((2, 21, 3, 4))
    first = run_both(x, target, label_smoothing=0.1)[:2]
    second = run_both(x, target, label_smoothing=0.1)[:2]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("multi_block", [False, True])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_gradcheck_float64(multi_block, reduction, request):
    if multi_block:
        request.getfixturevalue("small_blocks")
    x, target = make_inputs((2, 10, 3), dtype=torch.float64, scale=1.0)
    x.requires_grad_()
    g = torch.Generator().manual_seed(4)
    kwargs = {
        **DEFAULTS,
        "reduction": reduction,
        "label_smoothing": 0.1,
        "gamma": (torch.rand(10, generator=g) * 3).to(DEVICE),
        "weight": (torch.rand(10, generator=g) + 0.1).to(DEVICE),
        "alpha": 0.5,
    }
    assert torch.autograd.gradcheck(lambda x: ops.softmax_focal_loss(x, target, **kwargs), (x,), fast_mode=True)


def test_offsets_are_64_bit():
    # A tiny view whose second image starts 2**31 elements in: int32 offsets would wrap to a
    # negative address. The storage is allocated but never touched, so it costs no memory.
    try:
        storage = torch.empty(2**31 + 64, dtype=torch.float16, device=DEVICE)
    except RuntimeError:
        pytest.skip("cannot reserve 4 GiB of address space here")
    x = storage.as_strided((2, 3, 4), (2**31, 4, 1))
    values, target = make_inputs((2, 3, 4), dtype=torch.float16, ignore_frac=0.0)
    x.copy_(values)
    check(x, target, reduction="none")


def test_no_gradient_written_without_grad(monkeypatch):
    seen = []
    launch = ops.softmax_focal_launch

    def spy(*args, **kwargs):
        seen.append((kwargs["grad_mode"], kwargs.get("grad")))
        return launch(*args, **kwargs)

    monkeypatch.setattr(ops, "softmax_focal_launch", spy)
    x, target = make_inputs((2, 5, 6))
    x.requires_grad_()
    with torch.no_grad():
        loss = ops.softmax_focal_loss(x, target, **DEFAULTS)
    ops.softmax_focal_loss(x.detach(), target, **DEFAULTS)
    assert seen == [(GRAD_NONE, None), (GRAD_NONE, None)] and not loss.requires_grad
    ops.softmax_focal_loss(x, target, **DEFAULTS)
    assert seen[-1][0] == GRAD_IF_POLICY and seen[-1][1].shape == x.shape


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_grad_output_strides_and_values(reduction):
    # Stride-0 grad_output from expand (FACTS.md), a non-unit scalar, and exactly 1.
    x, target = make_inputs((2, 5, 6))
    _, _, ref, ref_grad_unit = run_both(x, target, reduction=reduction)
    xr = x.double().requires_grad_()
    ref = reference.softmax_focal_loss(xr, target, **{**DEFAULTS, "reduction": reduction})
    grad_outs = [torch.ones(ref.shape, device=DEVICE), torch.full(ref.shape, 2.5, device=DEVICE)]
    if reduction == "none":
        grad_outs.append(torch.randn(1, 6).to(DEVICE).expand(2, 6))
    for grad_out in grad_outs:
        xt = x.clone().requires_grad_()
        loss = ops.softmax_focal_loss(xt, target, **{**DEFAULTS, "reduction": reduction})
        loss.backward(grad_out)
        (expected,) = torch.autograd.grad(ref, xr, grad_out.double(), retain_graph=True)
        assert_close(xt.grad, expected, f"grad for grad_output strides {grad_out.stride()}")


def test_retain_graph_backward_twice():
    x, target = make_inputs((2, 5, 6))
    xt = x.clone().requires_grad_()
    loss = ops.softmax_focal_loss(xt, target, **{**DEFAULTS, "reduction": "sum"}) * 3.0
    (first,) = torch.autograd.grad(loss, xt, retain_graph=True)
    (second,) = torch.autograd.grad(loss, xt, retain_graph=True)
    (last,) = torch.autograd.grad(loss, xt)  # the in-place path, graph freed afterwards
    assert torch.equal(first, second) and torch.equal(first, last)


@pytest.mark.parametrize("multi_block", [False, True])
def test_inplace_grad(multi_block, request):
    if multi_block:
        request.getfixturevalue("small_blocks")
    x, target = make_inputs((2, 11, 3, 4))
    kwargs = {**DEFAULTS, "label_smoothing": 0.1}
    leaf = x.clone().requires_grad_()
    ops.softmax_focal_loss(leaf * 2.0, target, **kwargs).backward()
    expected = leaf.grad.clone()

    leaf.grad = None
    logits = leaf * 2.0  # a non-leaf whose values nothing else saved
    storage = logits.data_ptr()
    loss = ops.softmax_focal_loss(logits, target, **kwargs, inplace_grad=True)
    assert logits.data_ptr() == storage
    loss.backward()
    assert_same_gradient(leaf.grad, expected)
    assert_same_gradient(logits.detach(), expected / 2.0)  # the logits now hold d loss / d logits

    # A leaf cannot be overwritten: the gradient gets its own buffer and the leaf is intact.
    before = leaf.detach().clone()
    leaf.grad = None
    ops.softmax_focal_loss(leaf, target, **kwargs, inplace_grad=True).backward()
    assert torch.equal(leaf.detach(), before)
    (expected_leaf,) = torch.autograd.grad(ops.softmax_focal_loss(before.requires_grad_(), target, **kwargs), before)
    assert_same_gradient(leaf.grad, expected_leaf)


def test_inplace_grad_refuses_corrupting_saved_values():
    # Values saved by an earlier op are overwritten: autograd must notice (a bug Liger-Kernel once had).
    x, target = make_inputs((2, 4, 5))
    leaf = x.clone().requires_grad_()
    logits = leaf.exp()  # exp saves its output
    loss = ops.softmax_focal_loss(logits, target, **DEFAULTS, inplace_grad=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_opcheck(reduction):
    # The ops as a traced graph runs them: the forward stores no gradient, the backward op
    # recomputes it (the eager policy, which may store it, is tested in test_grad_policy.py).
    x, target = make_inputs((2, 5, 6))
    x.requires_grad_()
    options = (
        torch.rand(5).to(DEVICE),
        0.0,
        None,
        0.25,
        (torch.rand(5) + 0.1).to(DEVICE),
        -100,
        reduction,
        0.1,
        1e-3,
        4.0,
    )
    torch.library.opcheck(ops._forward_op, (x, target, False, True, *options))
    denominators = ops.mean_denominators(target, SoftmaxOptions.from_op_args(*options), torch.float32)
    grad_out = torch.rand(() if reduction == "mean" else target.shape).to(DEVICE)
    torch.library.opcheck(ops._backward_op, (grad_out, x.detach(), target, denominators, x.new_empty(0), *options))


@pytest.mark.slow
def test_compile_fullgraph():
    x, target = make_inputs((2, 5, 6))

    def fn(x):
        return ops.softmax_focal_loss(x * 1.0, target, **{**DEFAULTS, "reduction": "none", "label_smoothing": 0.1})

    compiled = torch.compile(fn, fullgraph=True)
    grad_out = torch.rand(2, 6).to(DEVICE)
    xt, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    loss = compiled(xt)
    loss.backward(grad_out)
    fn(xe).backward(grad_out)
    assert_close(loss, fn(x), "compiled loss")
    assert_close(xt.grad, xe.grad, "compiled grad")


def test_public_api_triton_backend():
    triton_focal = pytest.importorskip("triton_focal")
    if not hasattr(triton_focal, "focal_loss"):
        pytest.skip("the public API is not in place")
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 6, 5, 3, generator=g).to(DEVICE)
    target = torch.randint(0, 6, (2, 5, 3), generator=g).to(DEVICE)
    kwargs = dict(gamma=2.0, alpha=0.25, weight=(torch.rand(6, generator=g) + 0.1).to(DEVICE), label_smoothing=0.05)
    for reduction in ("none", "mean"):
        xt, xr = x.clone().requires_grad_(), x.double().requires_grad_()
        loss = triton_focal.focal_loss(xt, target, reduction=reduction, backend="triton", **kwargs)
        ref = triton_focal.focal_loss(xr, target, reduction=reduction, backend="reference", **kwargs)
        loss.sum().backward()
        ref.sum().backward()
        assert_close(loss, ref, "public loss", dtype=torch.float32)
        assert_close(xt.grad, xr.grad, "public grad", dtype=torch.float32)


@pytest.mark.gpu
def test_more_than_2_31_elements_gpu():
    # (T, V) rows past 2**31 elements: T * V = 2**31 + 2 * 3000 in bfloat16 (4 GiB).
    vocab = 3000
    rows = 2**31 // vocab + 2
    x = torch.randn(rows, vocab, device="cuda", dtype=torch.bfloat16)
    target = torch.randint(0, vocab, (rows,), device="cuda")
    target[:-2] = -100  # only the rows beyond 2**31 elements count
    xt = x.unsqueeze(2).requires_grad_()
    loss = ops.softmax_focal_loss(xt, target.unsqueeze(1), **{**DEFAULTS, "reduction": "sum"})
    loss.backward()
    tail = xt[-2:].detach()
    tail.requires_grad_()
    ref = reference.softmax_focal_loss(tail.double(), target[-2:].unsqueeze(1), **{**DEFAULTS, "reduction": "sum"})
    (ref_grad,) = torch.autograd.grad(ref, tail)
    assert_close(loss, ref, "loss beyond 2**31", dtype=torch.bfloat16)
    assert_close(xt.grad[-2:], ref_grad, "grad beyond 2**31", dtype=torch.bfloat16)
    assert torch.count_nonzero(xt.grad[:-2]) == 0


@pytest.mark.gpu
def test_memory_is_one_gradient_gpu():
    # Forward + backward allocate the gradient and nothing else of size N * C * P.
    x = torch.randn(4, 150, 128, 128, device="cuda", requires_grad=True)
    target = torch.randint(0, 150, (4, 128 * 128), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = ops.softmax_focal_loss(x.flatten(2), target, **DEFAULTS)
    (grad,) = torch.autograd.grad(loss, x)  # the stored buffer itself (no accumulation copy)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    one_tensor = x.numel() * x.element_size()
    assert extra < 1.25 * one_tensor, f"peak extra {extra} bytes for a {one_tensor}-byte input"


@pytest.mark.parametrize(
    "options,length",
    [
        (SoftmaxOptions(2.0, 1.0, None, -100, "mean"), 7),
        (SoftmaxOptions(torch.rand(5), torch.rand(5), torch.rand(5), 3, "sum", 0.1, 1e-3, 30.0), 10),
        (
            SoftmaxOptions(
                0.5, 0.25, None, -1, "sum", poly_epsilon=1.0, element_weight=torch.rand(2, 3), normalizer=4.0
            ),
            14,
        ),
        (SoftmaxOptions(2.0, 1.0, None, -100, "mean", normalizer=torch.tensor(7.0)), 13),
    ],
)
def test_options_object_round_trips_through_the_op_arguments(options, length):
    args = options.op_args()
    back = SoftmaxOptions.from_op_args(*args)
    for name, value in options.as_kwargs().items():
        assert getattr(back, name) is value if isinstance(value, torch.Tensor) else getattr(back, name) == value, name
    # Unused trailing options are left out: a call without them is the call it always was.
    assert len(args) == length


def test_every_op_lists_the_options_last_in_one_order():
    ops_and_first = [
        (ops._forward_op, ["input", "target", "store_grad", "needs_grad"]),
        (ops._backward_op, ["grad_output", "input", "target", "denominators", "row_stats"]),
        (ops._forward_inplace_op, ["input", "target"]),
    ]
    for op, first in ops_and_first:
        names = [a.name for a in op._opoverload._schema.arguments]
        assert names == first + list(OP_ARGS), (op, names)
    assert ops._FORWARD_OPTIONS_AT + NORMALIZER_ARG == 4 + OP_ARGS.index("normalizer")
