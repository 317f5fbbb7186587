"""Reliability at the inputs users pass: target dtypes that cannot hold ``ignore_index``,
learnable per-class tensors, zero-size dimensions, ``torch.func`` transforms, infinite
sigmoid logits, the launch device, and the arguments the modules and the fused head check.

Each case runs on every backend it concerns, against ``F.cross_entropy`` or a float64
statement written here. Shapes are small; the compile backend's cases share settings where
they can (each new static configuration costs a compilation).
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import BACKENDS, DEVICE, assert_close

import triton_focal

pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")

INF = float("inf")


def gold_sigmoid_index_loss(x, target, *, alpha, gamma, ignore_index):
    """Float64 sigmoid focal loss of ``(N, C)`` logits against class indices (``C``:
    background), summed over the rows that are not ignored (``target`` compared as int64)."""
    x = x.double()
    target = target.long()
    valid = target != ignore_index
    t = (target.unsqueeze(1) == torch.arange(x.shape[1]).unsqueeze(0)).double()
    p = torch.sigmoid(x)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = (alpha * t + (1 - alpha) * (1 - t)) * (1 - p_t) ** gamma * bce
    return loss[valid].sum()


# ignore_index that the target's dtype cannot represent ------------------------------------


def uint8_batch(num_rows=40, num_classes=200, seed=0):
    """A 200-class batch whose uint8 targets include class 156, what -100 wraps to in uint8."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_rows, num_classes, generator=gen)
    target = torch.randint(0, num_classes, (num_rows,), generator=gen)
    target[:6] = 156
    return x, target


def test_uint8_targets_with_the_default_ignore_index_follow_cross_entropy(backend):
    """-100 is no uint8 value: it ignores nothing, and class 156 is scored and counted."""
    x, target = uint8_batch()
    x = x.to(DEVICE).requires_grad_(True)
    x_gold = x.detach().clone().requires_grad_(True)
    loss = triton_focal.focal_loss(x, target.to(torch.uint8).to(DEVICE), gamma=0.0, backend=backend)
    gold = F.cross_entropy(x_gold, target.to(torch.uint8).to(DEVICE))
    assert_close(loss, gold, "loss with uint8 targets")
    loss.backward()
    gold.backward()
    assert_close(x.grad, x_gold.grad, "gradient with uint8 targets")


@pytest.mark.parametrize(
    "dtype, ignore_index",
    [(torch.int32, 2**40), (torch.int8, -200), (torch.int8, 300)],
    ids=["int32-2**40", "int8-low", "int8-high"],
)
def test_ignore_index_beyond_the_target_dtype_matches_nothing(backend, dtype, ignore_index):
    x, target = uint8_batch(num_classes=100)
    target = target % 100
    target[:4] = 0  # what 2**40 becomes in int32, and what a wrapped comparison would ignore
    x = x.to(DEVICE)
    for reduction in ("mean", "none"):
        loss = triton_focal.focal_loss(
            x, target.to(dtype).to(DEVICE), gamma=0.0, ignore_index=ignore_index, reduction=reduction, backend=backend
        )
        gold = F.cross_entropy(x, target.to(DEVICE), reduction=reduction)
        assert_close(loss, gold, f"loss ({reduction}) with {dtype} targets and ignore_index={ignore_index}")


def test_ignore_index_still_ignores_when_the_dtype_holds_it(backend):
    x, target = uint8_batch()
    target[6:10] = 255
    x = x.to(DEVICE)
    loss = triton_focal.focal_loss(x, target.to(torch.uint8).to(DEVICE), gamma=0.0, ignore_index=255, backend=backend)
    gold = F.cross_entropy(x, target.to(DEVICE), ignore_index=255)
    assert_close(loss, gold, "loss with uint8 targets and ignore_index=255")


def test_sigmoid_uint8_class_indices_with_the_default_ignore_index(backend):
    x, target = uint8_batch(num_rows=12)
    loss = triton_focal.sigmoid_focal_loss(
        x.to(DEVICE), target.to(torch.uint8).to(DEVICE), alpha=0.25, gamma=2.0, reduction="sum", backend=backend
    )
    gold = gold_sigmoid_index_loss(x, target, alpha=0.25, gamma=2.0, ignore_index=-100)
    assert_close(loss, gold, "sigmoid loss with uint8 class indices", dtype=torch.float32)


def test_fused_linear_uint8_targets_follow_cross_entropy(backend):
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(12, 8, generator=gen).to(DEVICE)
    lm_weight = torch.randn(200, 8, generator=gen).to(DEVICE)
    target = torch.randint(0, 200, (12,), generator=gen)
    target[:3] = 156
    loss = triton_focal.fused_linear_focal_loss(
        hidden, lm_weight, target.to(torch.uint8).to(DEVICE), gamma=0.0, backend=backend
    )
    gold = F.cross_entropy(hidden @ lm_weight.t(), target.to(DEVICE))
    assert_close(loss, gold, "fused head loss with uint8 targets", rtol=1e-4, atol=1e-5)


# learnable alpha, weight and gamma ---------------------------------------------------------


def gold_weighted_focal(x, target, alpha, weight, gamma):
    """Float64 ``sum(a_y w_y (1 - p_y)^g_y (-log p_y)) / sum(w_y)`` (no smoothing)."""
    log_p = torch.log_softmax(x.double(), dim=1).gather(1, target.view(-1, 1)).squeeze(1)
    g = gamma.double()[target]
    rows = alpha.double()[target] * weight.double()[target] * (1 - log_p.exp()) ** g * -log_p
    return rows.sum() / weight.double()[target].sum()


def learnable_case(seed=4, num_classes=5):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(8, num_classes, generator=gen)
    target = torch.randint(0, num_classes, (8,), generator=gen)
    alpha = torch.rand(num_classes, generator=gen) + 0.5
    weight = torch.rand(num_classes, generator=gen) + 0.5
    gamma = torch.rand(num_classes, generator=gen) * 2 + 0.5
    return x, target, alpha, weight, gamma


def test_reference_differentiates_alpha_weight_and_gamma():
    x, target, *params = learnable_case()
    ours = [p.clone().to(DEVICE).requires_grad_(True) for p in params]
    gold = [p.double().requires_grad_(True) for p in params]
    loss = triton_focal.focal_loss(
        x.to(DEVICE), target.to(DEVICE), alpha=ours[0], weight=ours[1], gamma=ours[2], backend="reference"
    )
    loss.backward()
    gold_weighted_focal(x, target, *gold).backward()
    for name, p, g in zip(("alpha", "weight", "gamma"), ours, gold):
        assert p.grad is not None, f"{name}'s gradient was dropped"
        assert_close(p.grad, g.grad, f"gradient of {name}", dtype=torch.float32)


def test_reference_differentiates_the_sigmoid_weight_and_gamma():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, 3, generator=gen)
    t = (torch.rand(6, 3, generator=gen) > 0.5).float()
    weight = (torch.rand(6, 1, generator=gen) + 0.5).requires_grad_(True)
    gamma = (torch.rand(3, generator=gen) + 1).requires_grad_(True)
    loss = triton_focal.sigmoid_focal_loss(x, t, weight=weight, gamma=gamma, reduction="sum", backend="reference")
    loss.backward()
    w64, g64 = weight.detach().double().requires_grad_(True), gamma.detach().double().requires_grad_(True)
    x64 = x.double()
    p = torch.sigmoid(x64)
    p_t = p * t + (1 - p) * (1 - t)
    gold = (
        (0.25 * t + 0.75 * (1 - t))
        * (1 - p_t) ** g64
        * F.binary_cross_entropy_with_logits(x64, t.double(), reduction="none")
        * w64
    ).sum()
    gold.backward()
    assert_close(weight.grad, w64.grad, "gradient of the sigmoid weight", dtype=torch.float32)
    assert_close(gamma.grad, g64.grad, "gradient of the sigmoid gamma", dtype=torch.float32)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
@pytest.mark.parametrize("name", ["alpha", "weight", "gamma"])
def test_other_backends_refuse_a_learnable_per_class_tensor(backend, name):
    x, target, alpha, weight, gamma = learnable_case()
    kwargs = {"alpha": alpha, "weight": weight, "gamma": gamma}
    kwargs = {k: v.to(DEVICE) for k, v in kwargs.items()}
    kwargs[name] = kwargs[name].requires_grad_(True)
    with pytest.raises(ValueError, match=rf"{name} requires grad.*detach.*backend='reference'"):
        triton_focal.focal_loss(x.to(DEVICE).requires_grad_(True), target.to(DEVICE), backend=backend, **kwargs)
    with torch.no_grad():  # no gradient asked for: nothing to refuse
        loss = triton_focal.focal_loss(x.to(DEVICE), target.to(DEVICE), backend=backend, **kwargs)
    assert_close(loss, gold_weighted_focal(x, target, alpha, weight, gamma), "loss under no_grad", dtype=torch.float32)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
@pytest.mark.parametrize("name", ["weight", "gamma"])
def test_other_backends_refuse_a_learnable_sigmoid_tensor(backend, name):
    x = torch.randn(6, 3, device=DEVICE)
    t = torch.randint(0, 4, (6,), device=DEVICE)
    value = {"weight": torch.ones(6, 1), "gamma": torch.ones(3)}[name].to(DEVICE).requires_grad_(True)
    with pytest.raises(ValueError, match=rf"{name} requires grad.*detach.*backend='reference'"):
        triton_focal.sigmoid_focal_loss(x, t, backend=backend, reduction="sum", **{name: value})


def test_fused_head_refuses_a_learnable_weight():
    hidden, lm_weight = torch.randn(4, 3, device=DEVICE), torch.randn(7, 3, device=DEVICE)
    weight = torch.rand(7, device=DEVICE).requires_grad_(True)
    with pytest.raises(ValueError, match=r"weight requires grad.*detach.*backend='reference'"):
        triton_focal.fused_linear_focal_loss(
            hidden, lm_weight, torch.zeros(4, dtype=torch.long, device=DEVICE), weight=weight
        )


@pytest.mark.parametrize(
    "module, name",
    [
        (triton_focal.FocalLoss, "weight"),
        (triton_focal.FocalLoss, "alpha"),
        (triton_focal.FocalLoss, "gamma"),
        (triton_focal.SigmoidFocalLoss, "weight"),
        (triton_focal.SigmoidFocalLoss, "gamma"),
    ],
)
def test_modules_refuse_a_learnable_tensor_at_construction(module, name):
    with pytest.raises(ValueError, match=rf"{name} requires grad.*buffer.*detach"):
        module(**{name: torch.ones(3, requires_grad=True)})


# zero-size dimensions ----------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(2, 4, 0, 3), (3, 4, 0), (0, 4)], ids=["NC0W", "NC0", "0C"])
def test_zero_size_dimensions_give_empty_results(backend, reduction, shape):
    target_shape = shape[:1] + shape[2:]
    for kind in ("softmax", "sigmoid"):
        x = torch.randn(shape, device=DEVICE, requires_grad=True)
        target = torch.zeros(target_shape, dtype=torch.long, device=DEVICE)
        fn = triton_focal.focal_loss if kind == "softmax" else triton_focal.sigmoid_focal_loss
        loss = fn(x, target, reduction=reduction, backend=backend)
        expected_shape = {"softmax": target_shape, "sigmoid": shape}[kind] if reduction == "none" else ()
        assert tuple(loss.shape) == tuple(expected_shape), f"{kind} {reduction}: shape {tuple(loss.shape)}"
        if reduction != "none":
            assert loss.item() == 0.0, f"{kind} {reduction} of nothing is 0, got {loss.item()}"
        (grad,) = torch.autograd.grad(loss.sum(), x)
        assert grad.shape == x.shape and grad.numel() == 0
        dense = (
            fn(x, torch.zeros(shape, device=DEVICE), reduction=reduction, backend=backend)
            if kind == "sigmoid"
            else None
        )
        if dense is not None:
            assert tuple(dense.shape) == (tuple(shape) if reduction == "none" else ())


# torch.func transforms ---------------------------------------------------------------------


def per_sample_case(seed=7):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, 5, generator=gen)  # 3 samples of 4 rows, 5 classes
    target = torch.randint(0, 5, (3, 4), generator=gen)
    target[1, 2] = -100
    return x.to(DEVICE), target.to(DEVICE)


def sample_loss(kind, backend):
    if kind == "softmax":
        return lambda x, t: triton_focal.focal_loss(x, t, gamma=2.0, label_smoothing=0.1, backend=backend)
    return lambda x, t: triton_focal.sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0, reduction="mean", backend=backend)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_vmap_and_per_sample_gradients(backend, kind):
    x, target = per_sample_case()
    fn, gold_fn = sample_loss(kind, backend), sample_loss(kind, "reference")
    values = torch.func.vmap(fn)(x, target)
    grads = torch.func.vmap(torch.func.grad(fn))(x, target)
    for i in range(x.shape[0]):
        xi = x[i].clone().requires_grad_(True)
        gold = gold_fn(xi, target[i])
        (gold_grad,) = torch.autograd.grad(gold, xi)
        assert_close(values[i], gold, f"vmap value of sample {i}")
        assert_close(grads[i], gold_grad, f"per-sample gradient of sample {i}")


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_jacrev(backend, kind):
    x, target = per_sample_case()
    fn = sample_loss(kind, backend)
    jac = torch.func.jacrev(fn)(x[0], target[0])
    xi = x[0].clone().requires_grad_(True)
    (gold,) = torch.autograd.grad(sample_loss(kind, "reference")(xi, target[0]), xi)
    assert_close(jac, gold, "jacrev")


def test_vmap_of_the_fused_head(backend):
    gen = torch.Generator().manual_seed(8)
    hidden = torch.randn(2, 3, 4, generator=gen).to(DEVICE)
    lm_weight = torch.randn(9, 4, generator=gen).to(DEVICE)
    target = torch.randint(0, 9, (2, 3), generator=gen).to(DEVICE)
    values = torch.func.vmap(lambda h, t: triton_focal.fused_linear_focal_loss(h, lm_weight, t, backend=backend))(
        hidden, target
    )
    for i in range(2):
        gold = triton_focal.focal_loss(hidden[i] @ lm_weight.t(), target[i], backend="reference")
        assert_close(values[i], gold, f"vmap of the fused head, sample {i}")


# infinite sigmoid logits with matching targets ----------------------------------------------


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_infinite_sigmoid_logits_with_matching_targets(backend, gamma):
    """BCE is 0 at a +inf logit with target 1 and a -inf logit with target 0: loss and gradient
    0 there, the finite elements as the float64 formula says."""
    x = torch.tensor([[INF, -INF, 0.3], [-1.5, INF, -INF]], device=DEVICE, requires_grad=True)
    t = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], device=DEVICE)
    loss = triton_focal.sigmoid_focal_loss(x, t, alpha=0.25, gamma=gamma, reduction="sum", backend=backend)
    (grad,) = torch.autograd.grad(loss, x)
    finite = torch.tensor([[False, False, True], [True, False, False]])
    x64 = x.detach().cpu().double()[finite].requires_grad_(True)
    t64 = t.cpu().double()[finite]
    p = torch.sigmoid(x64)
    p_t = p * t64 + (1 - p) * (1 - t64)
    gold = (
        (0.25 * t64 + 0.75 * (1 - t64))
        * (1 - p_t) ** gamma
        * F.binary_cross_entropy_with_logits(x64, t64, reduction="none")
    ).sum()
    (gold_grad,) = torch.autograd.grad(gold, x64)
    expected_grad = torch.zeros(2, 3, dtype=torch.float64)
    expected_grad[finite] = gold_grad
    assert_close(loss, gold, "loss with matching infinite logits", dtype=torch.float32)
    assert_close(grad, expected_grad, "gradient with matching infinite logits", dtype=torch.float32)


# the launch device ---------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_kernels_launch_on_the_inputs_device(kind):
    """A tensor on cuda:1 while cuda:0 is current: the loss and gradient are those of cuda:0's run."""
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(64, 7, generator=gen)
    target = torch.randint(0, 7, (64,), generator=gen)
    fn = triton_focal.focal_loss if kind == "softmax" else triton_focal.sigmoid_focal_loss
    results = []
    for device in ("cuda:0", "cuda:1"):
        with torch.cuda.device(0):
            xd = x.to(device).requires_grad_(True)
            loss = fn(xd, target.to(device), gamma=2.0, reduction="sum", backend="triton")
            (grad,) = torch.autograd.grad(loss * 2.0, xd)  # grad_output != 1: the backward launches too
            torch.cuda.synchronize(device)
            results.append((loss.cpu(), grad.cpu()))
    assert_close(results[1][0], results[0][0], "loss on cuda:1")
    assert_close(results[1][1], results[0][1], "gradient on cuda:1")


# arguments the modules and the fused head check ---------------------------------------------


def test_sigmoid_normalizer_tensor_is_a_buffer():
    criterion = triton_focal.SigmoidFocalLoss(reduction="sum", normalizer=torch.tensor(4.0, device=DEVICE))
    assert "normalizer" in criterion.state_dict()
    moved = criterion.to(torch.float64)
    assert moved.normalizer.dtype == torch.float64
    x, t = torch.randn(5, 3).to(DEVICE), torch.randint(0, 4, (5,)).to(DEVICE)
    assert_close(
        criterion(x, t, normalizer=None),
        triton_focal.sigmoid_focal_loss(x, t, reduction="sum") / 4.0,
        "normalized loss",
    )
    restored = triton_focal.SigmoidFocalLoss(reduction="sum", normalizer=torch.tensor(1.0))
    restored.load_state_dict(criterion.state_dict())
    assert restored.normalizer.item() == 4.0


def test_sigmoid_module_normalizer_that_requires_grad_gets_its_gradient():
    normalizer = torch.tensor(4.0, requires_grad=True)
    criterion = triton_focal.SigmoidFocalLoss(reduction="sum", normalizer=normalizer, backend="reference")
    criterion(torch.randn(5, 3), torch.randint(0, 4, (5,))).backward()
    assert normalizer.grad is not None and normalizer.grad.item() < 0


@pytest.mark.parametrize(
    "call, error, pattern",
    [
        (
            lambda: triton_focal.focal_loss(torch.randn(4, 3).to_sparse(), torch.zeros(4, dtype=torch.long)),
            TypeError,
            r"input.*dense.*to_dense",
        ),
        (
            lambda: triton_focal.sigmoid_focal_loss(torch.randn(4, 3).to_sparse(), torch.zeros(4, 3)),
            TypeError,
            r"input.*dense.*to_dense",
        ),
        (
            lambda: triton_focal.fused_linear_focal_loss(
                torch.ones(4, 3, dtype=torch.uint8), torch.randn(5, 3), torch.zeros(4, dtype=torch.long)
            ),
            TypeError,
            r"hidden.*float",
        ),
        (
            lambda: triton_focal.fused_linear_focal_loss(
                torch.randn(4, 3), torch.randn(5, 3).half(), torch.zeros(4, dtype=torch.long)
            ),
            TypeError,
            r"lm_weight.*float16.*hidden.*float32.*lm_weight.to\(hidden.dtype\)",
        ),
        (
            lambda: triton_focal.fused_linear_focal_loss(
                torch.randn(4, 3), torch.randn(5, 3), torch.zeros(4, dtype=torch.long), torch.randn(5).double()
            ),
            TypeError,
            r"bias.*float64.*hidden",
        ),
        (
            lambda: triton_focal.fused_linear_focal_loss(
                torch.randn(4, 3).to_sparse(), torch.randn(5, 3), torch.zeros(4, dtype=torch.long)
            ),
            TypeError,
            r"hidden.*dense",
        ),
        (lambda: triton_focal.FocalLoss(inplace_grad="yes"), TypeError, r"inplace_grad.*bool"),
        (
            lambda: triton_focal.focal_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), inplace_grad=1),
            TypeError,
            r"inplace_grad.*bool",
        ),
    ],
    ids=[
        "sparse-logits",
        "sparse-sigmoid",
        "uint8-hidden",
        "fp16-weight",
        "fp64-bias",
        "sparse-hidden",
        "module-inplace",
        "functional-inplace",
    ],
)
def test_bad_arguments_are_named(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()
