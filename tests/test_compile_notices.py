"""The compile backend announces every compilation (``CompileNotice``), at the user's line.

A validation loop (logits without grad, or ``torch.no_grad()``) compiles a forward of its
own, and ``fused_linear_focal_loss`` compiles its row steps: both are announced like the
training step. Each test starts from an empty registry so that its first call compiles.
"""

import warnings

import pytest
import torch

import triton_focal
from triton_focal import _row_math, compiled

pytestmark = pytest.mark.slow


def _notices(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [w for w in caught if issubclass(w.category, compiled.CompileNotice)]


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(compiled, "_REGISTRY", {})
    monkeypatch.setattr(_row_math, "_compiled_shard_functions", {})


def test_training_then_validation_announce_each_compilation_at_the_callers_line(fresh):
    x = torch.randn(2, 5, 6, 6, requires_grad=True)
    t = torch.randint(0, 5, (2, 6, 6))

    def train():
        triton_focal.focal_loss(x, t, backend="compile").backward()

    def validate():
        triton_focal.focal_loss(x.detach(), t, backend="compile")

    def validate_no_grad():
        with torch.no_grad():
            triton_focal.focal_loss(x, t, backend="compile")

    trained = _notices(train)
    assert len(trained) == 1 and "gradient" in str(trained[0].message)
    validated = _notices(validate)
    assert len(validated) == 1 and "loss only" in str(validated[0].message)
    assert _notices(validate_no_grad) == []  # the same forward-only function, compiled already
    assert _notices(train) == [] and _notices(validate) == []
    for notice in trained + validated:
        assert notice.filename == __file__, f"attributed to {notice.filename}:{notice.lineno}"


def test_no_grad_first_is_announced_too(fresh):
    x = torch.randn(3, 4, 1)  # rows: a configuration of its own
    t = torch.randint(0, 4, (3, 1))

    def validate_no_grad():
        with torch.no_grad():
            triton_focal.sigmoid_focal_loss(x.requires_grad_(), t, backend="compile")

    notices = _notices(validate_no_grad)
    assert len(notices) == 1 and "torch.no_grad()" in str(notices[0].message)
    assert notices[0].filename == __file__


def test_modules_are_attributed_to_the_users_line(fresh):
    criterion = triton_focal.FocalLoss(gamma=2.0, backend="compile")
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    notices = _notices(lambda: criterion(x, torch.randint(0, 3, (2, 4, 4))))
    assert len(notices) == 1 and notices[0].filename == __file__


def test_fused_linear_focal_loss_announces_its_compilations(fresh):
    hidden = torch.randn(6, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    tokens = torch.randint(0, 11, (6,))

    def step():
        triton_focal.fused_linear_focal_loss(hidden, weight, tokens, gamma=1.0, backend="compile").backward()

    notices = _notices(step)
    assert notices, "the fused head compiled without a notice"
    assert all("fused head" in str(n.message) and "backend='reference'" in str(n.message) for n in notices)
    assert all(n.filename == __file__ for n in notices)
    assert _notices(step) == []
