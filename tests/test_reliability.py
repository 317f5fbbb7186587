"""Reliability: every backend gives the same, documented result at the edges users meet.

Masked (-inf) logits, NaN in ignored elements, a mean whose denominator is 0, zero classes,
a normalizer that requires grad, second derivatives and torch.func, the in-place gradient
through the public API. Each case runs on every backend it concerns, against a float64
statement written here, independent of the backends. Shapes are small and the cases share
their settings where they can: each new static configuration costs the compile backend a
compilation.
"""

import pytest
import torch
from helpers import DEVICE, assert_close

import triton_focal

# The interpreter evaluates masked-off lanes too (log 0, inf * 0); numpy warns about them.
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")

INF = float("inf")

# Settings shared by the softmax cases below (with a class weight and the mean).
SHARED_CASE = dict(gamma=2.0, label_smoothing=0.1)


def gold_rows(x, target, *, gamma, label_smoothing, num_classes, weight=None):
    """Float64 focal loss of each row of finite logits ``x`` ``(N, K)`` against ``target`` in
    ``[0, K)``: ``(1 - eps) w_y f_y + (eps / num_classes) sum_c w_c f_c``, as the README states.
    ``num_classes`` may exceed ``K``: masked classes are left out of ``x`` and add nothing."""
    weight = torch.ones(x.shape[1], dtype=x.dtype) if weight is None else weight
    log_p = torch.log_softmax(x, dim=1)
    focal = (1 - log_p.exp()) ** gamma * -log_p
    on_target = focal.gather(1, target.view(-1, 1)).squeeze(1)
    return (1 - label_smoothing) * weight[target] * on_target + label_smoothing / num_classes * (weight * focal).sum(1)


def gold_mean(x, target, *, weight=None, ignore_index=-100, **kwargs):
    """The weighted mean of ``gold_rows`` over the non-ignored rows."""
    valid = target != ignore_index
    weight = torch.ones(x.shape[1], dtype=x.dtype) if weight is None else weight
    rows = gold_rows(x[valid], target[valid], weight=weight, num_classes=x.shape[1], **kwargs)
    return rows.sum() / weight[target[valid]].sum()


# masked logits ----------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_masked_logits_give_the_loss_and_gradient_of_the_unmasked_classes(backend, gamma, label_smoothing):
    """-inf on non-target classes (vocabulary or invalid-class masking): a finite gradient,
    0 on the masked classes, equal to the float64 value over the unmasked ones."""
    gen = torch.Generator().manual_seed(0)
    num_rows, num_classes = 6, 7
    x = torch.randn(num_rows, num_classes, generator=gen, dtype=torch.float64) * 3
    target = torch.tensor([0, 1, 2, 3, 4, 5])
    masked = torch.zeros(num_rows, num_classes, dtype=torch.bool)
    masked[0, 6] = True  # one masked class
    masked[1, 3:] = True  # most of the row masked
    masked[2, [0, 1, 6]] = True
    masked[4, 0] = masked[5, 6] = True  # row 3 masks nothing
    weight = torch.rand(num_classes, generator=gen, dtype=torch.float64) + 0.5
    x_masked = x.masked_fill(masked, -INF).float().to(DEVICE).requires_grad_(True)

    loss = triton_focal.focal_loss(
        x_masked,
        target.to(DEVICE),
        gamma=gamma,
        label_smoothing=label_smoothing,
        weight=weight.float().to(DEVICE),
        backend=backend,
    )
    loss.backward()

    # Gold: each row over its own unmasked classes only, eps / C with C counting them all.
    x_gold = x.clone().requires_grad_(True)
    row_losses = []
    for row in range(num_rows):
        kept = ~masked[row]
        target_among_kept = kept[: target[row]].sum().view(1)
        row_losses.append(
            gold_rows(
                x_gold[row, kept].view(1, -1),
                target_among_kept,
                gamma=gamma,
                label_smoothing=label_smoothing,
                num_classes=num_classes,
                weight=weight[kept],
            )
        )
    gold = torch.cat(row_losses).sum() / weight[target].sum()
    gold.backward()
    assert torch.isfinite(loss) and torch.isfinite(x_masked.grad).all(), "masked logits gave a non-finite result"
    assert_close(loss, gold, "loss", dtype=torch.float32)
    assert_close(x_masked.grad, x_gold.grad, "grad", dtype=torch.float32)  # 0 where masked
    assert (x_masked.grad.cpu()[masked] == 0).all()


def test_masked_channels_first_logits(backend):
    """The same over (N, C, H, W) logits, classes strided by H * W."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 3, 4), generator=gen)
    x_masked = x.clone()
    x_masked[:, 3:] = -INF  # classes 3 and 4 masked everywhere
    x_masked = x_masked.float().to(DEVICE).requires_grad_(True)
    loss = triton_focal.focal_loss(x_masked, target.to(DEVICE), gamma=0.5, label_smoothing=0.1, backend=backend)
    loss.backward()
    x_gold = x.clone().requires_grad_(True)
    rows = x_gold[:, :3].movedim(1, -1).reshape(-1, 3)
    gold = gold_rows(rows, target.reshape(-1), gamma=0.5, label_smoothing=0.1, num_classes=5).mean()
    gold.backward()
    assert_close(loss, gold, "loss", dtype=torch.float32)
    assert_close(x_masked.grad, x_gold.grad, "grad", dtype=torch.float32)


def test_masked_target_logit_follows_cross_entropy(backend):
    """A -inf logit on the target class: an infinite loss and F.cross_entropy's finite gradient."""
    x = torch.randn(3, 4, dtype=torch.float64)
    x[0, 1] = -INF
    target = torch.tensor([1, 2, 3])
    weight = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)
    x_ours = x.float().to(DEVICE).requires_grad_(True)
    loss = triton_focal.focal_loss(
        x_ours, target.to(DEVICE), gamma=0.0, weight=weight.float().to(DEVICE), backend=backend
    )
    loss.backward()
    x_ce = x.clone().requires_grad_(True)
    expected = torch.nn.functional.cross_entropy(x_ce, target, weight=weight)
    expected.backward()
    assert loss.item() == INF
    assert_close(x_ours.grad, x_ce.grad, "grad", dtype=torch.float32)


# NaN in an ignored element ----------------------------------------------------------------


def test_nan_in_ignored_elements_gives_zero_gradient(backend):
    """Padding rows full of NaN (or inf) that the target ignores change nothing."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 6, generator=gen)
    target = torch.tensor([0, -100, 2, -100, 4])
    weight = torch.rand(6, generator=gen) + 0.5
    x_padded = x.clone()
    x_padded[1] = float("nan")
    x_padded[3, 2] = INF
    x_padded = x_padded.to(DEVICE).requires_grad_(True)
    loss = triton_focal.focal_loss(
        x_padded, target.to(DEVICE), weight=weight.to(DEVICE), backend=backend, **SHARED_CASE
    )
    loss.backward()
    x_clean = x.clone().double().requires_grad_(True)
    expected = gold_mean(x_clean, target, weight=weight.double(), **SHARED_CASE)
    expected.backward()
    assert_close(loss, expected, "loss", dtype=torch.float32)
    assert_close(x_padded.grad, x_clean.grad, "grad", dtype=torch.float32)
    assert (x_padded.grad.cpu()[[1, 3]] == 0).all()


def test_nan_in_ignored_sigmoid_rows_gives_zero_gradient(backend):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, generator=gen)
    target = torch.tensor([0, -100, 3, 1])  # 3 = background
    x_padded = x.clone()
    x_padded[1] = float("nan")
    x_padded = x_padded.to(DEVICE).requires_grad_(True)
    loss = triton_focal.sigmoid_focal_loss(x_padded, target.to(DEVICE), reduction="mean", backend=backend)
    loss.backward()
    assert torch.isfinite(loss)
    assert (x_padded.grad.cpu()[1] == 0).all() and torch.isfinite(x_padded.grad).all()
    kept = torch.tensor([0, 2, 3])
    x_kept = x[kept].double().requires_grad_(True)
    one_hot = torch.nn.functional.one_hot(target[kept], 4)[:, :3].double()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(x_kept, one_hot, reduction="none")
    p_t = torch.sigmoid(x_kept) * one_hot + (1 - torch.sigmoid(x_kept)) * (1 - one_hot)
    expected = ((0.25 * one_hot + 0.75 * (1 - one_hot)) * (1 - p_t) ** 2 * expected).mean()
    expected.backward()
    assert_close(loss, expected, "loss", dtype=torch.float32)
    assert_close(x_padded.grad[kept], x_kept.grad, "grad", dtype=torch.float32)


# a mean over a zero denominator -----------------------------------------------------------


def test_mean_with_zero_denominator_is_zero_with_zero_gradient(backend):
    """Every present class weighted 0 (the smoothing term alone would be nonzero), or every
    element ignored: the mean is 0 and so is the gradient, on every backend."""
    x = torch.randn(4, 5, device=DEVICE, requires_grad=True)
    weight = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0], device=DEVICE)
    for target in (torch.tensor([0, 1, 0, -100]), torch.full((4,), -100)):
        x.grad = None
        loss = triton_focal.focal_loss(x, target.to(DEVICE), weight=weight, backend=backend, **SHARED_CASE)
        loss.backward()
        assert loss.item() == 0.0, f"mean over a zero denominator gave {loss.item()} for target {target.tolist()}"
        assert (x.grad == 0).all()


# backends agree ---------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_zero_classes_with_every_element_ignored(backend, reduction):
    """C = 0 and nothing to score: the empty sum (0), a zero mean, or one 0 per element."""
    x = torch.randn(3, 0, 2, device=DEVICE, requires_grad=True)
    target = torch.full((3, 2), -100, device=DEVICE)
    loss = triton_focal.focal_loss(x, target, reduction=reduction, backend=backend)
    assert loss.shape == (() if reduction != "none" else (3, 2))
    assert (loss == 0).all()
    loss.sum().backward()
    assert x.grad.shape == x.shape


def test_normalizer_tensor_gets_its_gradient(backend):
    """A normalizer computed from the network (a soft count of positives) gets d loss / d n."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(6, 3, generator=gen).to(DEVICE)
    target = torch.tensor([0, 3, 1, 3, 2, 3], device=DEVICE)
    normalizer = torch.tensor(2.5, device=DEVICE, requires_grad=True)
    loss = triton_focal.sigmoid_focal_loss(x, target, reduction="sum", normalizer=normalizer, backend=backend)
    loss.backward()
    total = triton_focal.sigmoid_focal_loss(x, target, reduction="sum", backend="reference")
    assert normalizer.grad is not None, "the normalizer got no gradient"
    assert_close(normalizer.grad, -total / 2.5**2, "grad of normalizer")


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(alpha=INF), "alpha"),
        (dict(alpha=float("nan")), "alpha"),
        (dict(alpha=torch.tensor([0.5, INF, 1.0])), "alpha"),
        (dict(gamma=INF), "gamma"),
        (dict(gamma=float("nan")), "gamma"),
        (dict(gamma=torch.tensor([1.0, INF, 2.0])), "gamma"),
        (dict(weight=torch.tensor([1.0, INF, 1.0])), "weight"),
    ],
)
def test_non_finite_per_class_arguments_are_refused(kwargs, name):
    x, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    with pytest.raises(ValueError, match=name):
        triton_focal.focal_loss(x, target, **kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(alpha=INF), "alpha"),
        (dict(alpha=float("nan")), "alpha"),
        (dict(gamma=INF), "gamma"),
        (dict(gamma=float("nan")), "gamma"),
    ],
)
def test_sigmoid_non_finite_arguments_are_refused(kwargs, name):
    with pytest.raises(ValueError, match=name):
        triton_focal.sigmoid_focal_loss(torch.randn(4, 3), torch.rand(4, 3), **kwargs)
    with pytest.raises(ValueError, match=name):
        triton_focal.sigmoid_focal_loss_star(torch.randn(4, 3), torch.rand(4, 3), **kwargs)
