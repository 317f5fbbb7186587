"""Every bad input raises a clear error naming the argument, before any computation (README: "Errors")."""

import pytest
import torch

import triton_focal

X = torch.randn(4, 3, 5)
T = torch.randint(0, 3, (4, 5))


@pytest.mark.parametrize(
    "kwargs, error, names",
    [
        (dict(target=torch.randint(0, 3, (4, 6))), ValueError, "target shape"),  # shape mismatch
        (dict(target=torch.randint(0, 3, (4,))), ValueError, "target shape"),
        (dict(target=T.float()), TypeError, "class indices"),  # float target where indices are needed
        (dict(target=T.bool()), TypeError, "class indices"),
        (dict(target=[0, 1]), TypeError, "target"),
        (dict(input=X.long()), TypeError, "input"),
        (dict(input=torch.tensor(1.0), target=torch.tensor(0)), ValueError, "input"),
        (dict(reduction="avg"), ValueError, "reduction"),
        (dict(gamma=-1.0), ValueError, "gamma"),
        (dict(gamma=float("nan")), ValueError, "gamma"),
        (dict(gamma=torch.tensor([1.0, -1.0, 0.0])), ValueError, "gamma"),
        (dict(gamma=torch.ones(4)), ValueError, "gamma"),
        (dict(gamma="2"), TypeError, "gamma"),
        (dict(alpha=torch.ones(2)), ValueError, "alpha"),  # wrong length
        (dict(alpha=torch.tensor([0.5, -0.1, 1.0])), ValueError, "alpha"),  # negative
        (dict(alpha=-0.5), ValueError, "alpha"),
        (dict(weight=torch.ones(4)), ValueError, "weight"),
        (dict(weight=torch.tensor([1.0, -1.0, 1.0])), ValueError, "weight"),
        (dict(weight=torch.ones(3, 1)), ValueError, "weight"),
        (dict(weight=[1.0, 1.0, 1.0]), TypeError, "weight"),
        (dict(weight=torch.ones(3, dtype=torch.long)), TypeError, "weight"),
        (dict(label_smoothing=1.5), ValueError, "label_smoothing"),
        (dict(label_smoothing=-0.1), ValueError, "label_smoothing"),
        (dict(ignore_index=1.5), TypeError, "ignore_index"),
        (dict(target=torch.full((4, 5), 3)), ValueError, "class index 3"),  # out of range
        (dict(target=torch.full((4, 5), -1)), ValueError, "class index -1"),
        (dict(backend="cuda"), ValueError, "backend"),
    ],
)
def test_focal_loss_rejects(kwargs, error, names):
    args = dict(input=X, target=T)
    args.update(kwargs)
    with pytest.raises(error, match=names):
        triton_focal.focal_loss(args.pop("input"), args.pop("target"), **args)


@pytest.mark.parametrize(
    "kwargs, error, names",
    [
        (dict(target=torch.rand(4, 3, 6)), ValueError, "dense target shape"),
        (dict(target=torch.randint(0, 3, (4, 6))), ValueError, "class-index target shape"),
        (dict(target=torch.full((4, 5), 5)), ValueError, "class index 5"),  # C = 3 is background, 5 is not
        (dict(target=T.bool()), TypeError, "target"),
        (dict(reduction="max"), ValueError, "reduction"),
        (dict(gamma=-2.0), ValueError, "gamma"),
        (dict(alpha="0.25"), TypeError, "alpha"),
        (dict(weight=torch.ones(4, 3, 2)), ValueError, "weight"),
        (dict(weight=-torch.ones(3, 1)), ValueError, "weight"),
        (dict(normalizer=4.0, reduction="none"), ValueError, "normalizer"),
        (dict(normalizer=0.0, reduction="sum"), ValueError, "normalizer"),
        (dict(normalizer=torch.ones(2), reduction="sum"), ValueError, "normalizer"),
        (dict(backend="nope"), ValueError, "backend"),
    ],
)
def test_sigmoid_focal_loss_rejects(kwargs, error, names):
    args = dict(input=X, target=T)
    args.update(kwargs)
    with pytest.raises(error, match=names):
        triton_focal.sigmoid_focal_loss(args.pop("input"), args.pop("target"), **args)


def test_fl_star_rejects():
    with pytest.raises(ValueError, match="gamma"):
        triton_focal.sigmoid_focal_loss_star(X, torch.rand_like(X), gamma=0.0)
    with pytest.raises(TypeError, match="target"):
        triton_focal.sigmoid_focal_loss_star(X, T)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs two devices")
def test_devices_must_match():
    with pytest.raises(ValueError, match="target is on"):
        triton_focal.focal_loss(X.cuda(), T)
    with pytest.raises(ValueError, match="weight is on"):
        triton_focal.focal_loss(X.cuda(), T.cuda(), weight=torch.ones(3))


def test_devices_must_match_meta():
    # The meta device stands in for a second device on a CPU-only machine.
    with pytest.raises(ValueError, match="target is on"):
        triton_focal.focal_loss(X, T.to("meta"))
    with pytest.raises(ValueError, match="alpha is on"):
        triton_focal.focal_loss(X, T, alpha=torch.ones(3, device="meta"))
    with pytest.raises(ValueError, match="weight is on"):
        triton_focal.sigmoid_focal_loss(X, T, weight=torch.ones(3, 1, device="meta"))


def test_unrunnable_backend_is_named(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if torch.cuda.is_available():
        pytest.skip("triton can run here")
    with pytest.raises(ValueError, match="backend='triton' cannot run"):
        triton_focal.focal_loss(X, T, backend="triton")


def test_bad_environment_backend(monkeypatch):
    monkeypatch.setenv("TRITON_FOCAL_BACKEND", "fast")
    with pytest.raises(ValueError, match="TRITON_FOCAL_BACKEND"):
        triton_focal.focal_loss(X, T)


def test_module_checks_values_at_construction():
    with pytest.raises(ValueError, match="weight"):
        triton_focal.FocalLoss(weight=torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="alpha"):
        triton_focal.FocalLoss(alpha=torch.tensor([float("nan")]))


@pytest.mark.parametrize("loss", [triton_focal.focal_loss, triton_focal.sigmoid_focal_loss])
def test_channels_last_logits_are_told_to_permute(loss):
    """(N, H, W, C) logits against (N, H, W) targets: the message says where the classes go
    and gives the permute, rather than only an expected shape that matches neither."""
    x, t = torch.randn(2, 8, 8, 5), torch.randint(0, 5, (2, 8, 8))
    with pytest.raises(ValueError, match=r"classes must be in dimension 1.*logits\.permute\(0, 3, 1, 2\)") as err:
        loss(x, t, backend="reference")
    assert "target shape (2, 8, 8)" in str(err.value)
    fixed = loss(x.permute(0, 3, 1, 2), t, backend="reference")  # the suggested fix runs
    assert torch.isfinite(fixed).all()
    with pytest.raises(ValueError, match=r"logits\.permute\(0, 2, 1\)"):  # (N, L, C) sequences
        loss(torch.randn(2, 7, 5), torch.randint(0, 5, (2, 7)), backend="reference")


def test_integer_one_hot_targets_are_told_to_argmax():
    x = torch.randn(2, 5, 4, 4)
    one_hot = torch.nn.functional.one_hot(torch.randint(0, 5, (2, 4, 4)), 5).permute(0, 3, 1, 2)
    with pytest.raises(ValueError, match=r"one-hot.*target\.argmax\(1\)"):
        triton_focal.focal_loss(x, one_hot, backend="reference")
    with pytest.raises(ValueError, match=r"target\.float\(\).*target\.argmax\(1\)"):
        triton_focal.sigmoid_focal_loss(x, one_hot, backend="reference")
    assert torch.isfinite(triton_focal.focal_loss(x, one_hot.argmax(1), backend="reference"))


def test_an_unrelated_shape_mismatch_gets_no_misleading_hint():
    with pytest.raises(ValueError, match="target shape") as err:
        triton_focal.focal_loss(X, torch.randint(0, 3, (4, 6)), backend="reference")
    assert "permute" not in str(err.value) and "argmax" not in str(err.value)
