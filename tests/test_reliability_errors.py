"""Reliability of argument checks and messages: the mistakes users make get a clear error
naming the argument (and, where it helps, the fix); modules check at construction, show
their arguments, and document themselves."""

import pydoc

import pytest
import torch

import triton_focal

INF, NAN = float("inf"), float("nan")
X, T = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])


# values that were accepted and gave NaN or inf --------------------------------------------


@pytest.mark.parametrize("gamma", [INF, NAN, torch.tensor([1.0, INF, 2.0]), torch.tensor([1.0, NAN, 2.0])])
def test_non_finite_gamma_is_refused(gamma):
    with pytest.raises(ValueError, match="gamma"):
        triton_focal.focal_loss(X, T, gamma=gamma)
    with pytest.raises(ValueError, match="gamma"):
        triton_focal.sigmoid_focal_loss(X, T, gamma=gamma)


@pytest.mark.parametrize("value", [2.0, -0.5, NAN])
def test_dense_sigmoid_targets_must_be_probabilities(value):
    target = torch.rand(4, 3)
    target[1, 2] = value
    with pytest.raises(ValueError, match=r"target values must lie in \[0, 1\]"):
        triton_focal.sigmoid_focal_loss(X, target)
    with pytest.raises(ValueError, match=r"target values must lie in \[0, 1\]"):
        triton_focal.sigmoid_focal_loss_star(X, target)


@pytest.mark.parametrize(
    "normalizer",
    [0.0, -1.0, INF, NAN, torch.tensor(0.0), torch.tensor(-2.0), torch.tensor(INF), torch.tensor(NAN), torch.tensor(0)],
)
def test_normalizer_is_checked_as_a_number_or_a_tensor(normalizer):
    """A tensor normalizer is checked like a number where its value is known (CPU here):
    ``tensor(0)`` used to give inf where ``0.0`` raised."""
    with pytest.raises(ValueError, match="normalizer"):
        triton_focal.sigmoid_focal_loss(X, T, reduction="sum", normalizer=normalizer)


def test_a_valid_normalizer_tensor_divides_the_sum():
    total = triton_focal.sigmoid_focal_loss(X, T, reduction="sum", backend="reference")
    for normalizer in (torch.tensor(4), torch.tensor(4.0), 4):
        got = triton_focal.sigmoid_focal_loss(X, T, reduction="sum", normalizer=normalizer, backend="reference")
        torch.testing.assert_close(got, total / 4)


# messages ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn", [triton_focal.focal_loss, triton_focal.sigmoid_focal_loss, triton_focal.sigmoid_focal_loss_star]
)
def test_a_list_as_input_names_input(fn):
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        fn([[0.5, 1.0, -1.0]], torch.tensor([0]))


@pytest.mark.parametrize("ignore_index", [2**70, -(2**64)])
def test_ignore_index_beyond_int64_names_ignore_index(ignore_index):
    with pytest.raises(ValueError, match="ignore_index"):
        triton_focal.focal_loss(X, T, ignore_index=ignore_index)
    with pytest.raises(ValueError, match="ignore_index"):
        triton_focal.sigmoid_focal_loss(X, T, ignore_index=ignore_index)


def test_an_integer_mask_as_sigmoid_target_is_told_to_pass_floats():
    mask = torch.randint(0, 2, X.shape)
    with pytest.raises(ValueError, match=r"target.float\(\)"):
        triton_focal.sigmoid_focal_loss(X, mask)


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(alpha=[0.25, 0.75]), TypeError, r"alpha.*torch.tensor"),
        (dict(alpha=INF), ValueError, "alpha"),
        (dict(alpha=torch.tensor([0.5, -1.0])), ValueError, "alpha"),
        (dict(gamma=NAN), ValueError, "gamma"),
        (dict(gamma=torch.ones(2, 2)), ValueError, "gamma"),
        (dict(weight=[1.0, 2.0]), TypeError, "weight"),
        (dict(weight=torch.tensor([1.0, INF])), ValueError, "weight"),
        (dict(reduction="avg"), ValueError, "reduction"),
        (dict(label_smoothing=1.5), ValueError, "label_smoothing"),
        (dict(ignore_index=2.5), TypeError, "ignore_index"),
        (dict(backend="cuda"), ValueError, "backend"),
    ],
)
def test_focal_loss_module_checks_at_construction(kwargs, error, name):
    with pytest.raises(error, match=name):
        triton_focal.FocalLoss(**kwargs)


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(alpha="0.25"), TypeError, "alpha"),
        (dict(alpha=NAN), ValueError, "alpha"),
        (dict(gamma=-1.0), ValueError, "gamma"),
        (dict(weight=torch.tensor([1.0, -1.0])), ValueError, "weight"),
        (dict(normalizer=0.0, reduction="sum"), ValueError, "normalizer"),
        (dict(normalizer=4.0, reduction="none"), ValueError, "normalizer"),
        (dict(reduction="avg"), ValueError, "reduction"),
        (dict(backend="gpu"), ValueError, "backend"),
    ],
)
def test_sigmoid_focal_loss_module_checks_at_construction(kwargs, error, name):
    with pytest.raises(error, match=name):
        triton_focal.SigmoidFocalLoss(**kwargs)


def test_module_repr_shows_every_argument():
    module = triton_focal.FocalLoss(
        gamma=1.5,
        alpha=torch.tensor([0.25, 0.75]),
        weight=torch.tensor([1.0, 3.0]),
        ignore_index=255,
        label_smoothing=0.1,
    )
    text = repr(module)
    for part in (
        "gamma=1.5",
        "alpha=tensor([0.25, 0.75])",
        "weight=tensor([1, 3])",
        "ignore_index=255",
        "reduction='mean'",
        "label_smoothing=0.1",
        "backend='auto'",
    ):
        assert part in text, f"{part!r} missing from {text}"
    assert "weight=<tensor of shape (1000,)>" in repr(triton_focal.FocalLoss(weight=torch.ones(1000)))
    text = repr(triton_focal.SigmoidFocalLoss(alpha=0.5, weight=torch.ones(1, 3), normalizer=8.0, reduction="sum"))
    for part in ("alpha=0.5", "gamma=2.0", "reduction='sum'", "weight=tensor([1, 1, 1])", "normalizer=8.0"):
        assert part in text, f"{part!r} missing from {text}"


@pytest.mark.parametrize(
    "fn",
    [
        triton_focal.focal_loss,
        triton_focal.sigmoid_focal_loss,
        triton_focal.sigmoid_focal_loss_star,
        triton_focal.fused_linear_focal_loss,
    ],
)
def test_public_functions_document_their_errors(fn):
    assert "Raises:" in fn.__doc__ and "ValueError" in fn.__doc__


@pytest.mark.parametrize("module", [triton_focal.FocalLoss, triton_focal.SigmoidFocalLoss])
def test_help_of_a_module_describes_it(module):
    """``help(FocalLoss)`` opens on the loss's own description, arguments and errors, and
    its methods have their own docs rather than torch's generic ones."""
    text = pydoc.render_doc(module, renderer=pydoc.plaintext)
    own = text[: text.index("Method resolution order")]
    for part in ("Args:", "gamma:", "alpha:", "Shape:", "Raises:", "Example::"):
        assert part in own, f"{part!r} missing from help({module.__name__})"
    for method in ("__init__", "forward", "extra_repr"):
        assert getattr(module, method).__doc__ != getattr(torch.nn.Module, method).__doc__, f"{method} has torch's doc"


@pytest.mark.parametrize(
    "build, keyword",
    [
        (lambda: triton_focal.FocalLoss(2.0), r"gamma=2\.0"),
        (lambda: triton_focal.SigmoidFocalLoss(0.25, 2.0), r"alpha=0\.25, gamma=2\.0"),
    ],
)
def test_module_constructors_take_keywords_only(build, keyword):
    # FocalLoss(gamma, alpha) and SigmoidFocalLoss(alpha, gamma) took their options in opposite
    # orders; a positional value is refused with the keyword it meant.
    with pytest.raises(TypeError, match=rf"keyword arguments only.*{keyword}"):
        build()
