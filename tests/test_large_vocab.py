"""z-loss and softcap on every backend (gamma=0: Liger-Kernel's cross entropy with
``lse_square_scale`` and ``softcap``), the fused linear head with them, and its chunk sizing."""

import os

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICE, assert_close

import triton_focal
from triton_focal import fused_linear

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def liger_cross_entropy(
    x,
    target,
    *,
    weight=None,
    ignore_index=-100,
    reduction="mean",
    label_smoothing=0.0,
    lse_square_scale=0.0,
    softcap=None,
):
    """Liger-Kernel's ``LigerCrossEntropyLoss`` written out in float64: cross entropy of the capped
    logits plus ``lse_square_scale * lse ** 2`` per non-ignored row; the mean divides the
    cross-entropy part by ``sum w_y`` and the z part by the number of non-ignored rows."""
    z = x.double()
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    valid = target != ignore_index
    ce = F.cross_entropy(
        z,
        target,
        weight=None if weight is None else weight.double(),
        ignore_index=ignore_index,
        reduction="none",
        label_smoothing=label_smoothing,
    )
    lse = torch.logsumexp(z, dim=1)
    z_rows = torch.where(valid, lse_square_scale * lse**2, torch.zeros_like(lse))
    if reduction == "none":
        return ce + z_rows
    if reduction == "sum":
        return ce.sum() + z_rows.sum()
    w_y = torch.ones_like(lse) if weight is None else weight.double()[target.clamp_min(0)]
    return ce.sum() / torch.where(valid, w_y, torch.zeros_like(w_y)).sum() + z_rows.sum() / valid.sum()


def _rows(dtype, seed=0, tokens=24, vocab=37):
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(tokens, vocab, generator=generator, dtype=torch.float64) * 4).to(dtype)
    target = torch.randint(0, vocab, (tokens,), generator=generator)
    target[::5] = -100
    weight = torch.rand(vocab, generator=generator, dtype=torch.float64) + 0.2
    return x.to(DEVICE), target.to(DEVICE), weight.to(DEVICE)


@pytest.mark.parametrize(
    "settings",
    [
        dict(z_loss=1e-2),
        dict(softcap=3.0),
        dict(z_loss=1e-1, softcap=2.0, label_smoothing=0.1, reduction="sum"),
        dict(z_loss=1e-2, softcap=5.0, weight=True, reduction="mean"),
        dict(z_loss=1e-3, softcap=1.0, reduction="none"),
    ],
    ids=["z", "softcap", "both_smoothing_sum", "both_weight_mean", "both_none"],
)
def test_gamma_zero_equals_liger_cross_entropy(backend, settings):
    x, target, weight = _rows(torch.float32)
    settings = dict(settings)
    weight = weight.float() if settings.pop("weight", False) else None
    reduction = settings.pop("reduction", "mean")
    leaf = x.clone().requires_grad_(True)
    loss = triton_focal.focal_loss(
        leaf, target, gamma=0.0, weight=weight, reduction=reduction, backend=backend, **settings
    )
    grad_output = torch.rand_like(loss) + 0.5
    (grad,) = torch.autograd.grad(loss, leaf, grad_output)

    gold_leaf = x.double().requires_grad_(True)
    gold = liger_cross_entropy(
        gold_leaf,
        target,
        weight=weight,
        reduction=reduction,
        label_smoothing=settings.get("label_smoothing", 0.0),
        lse_square_scale=settings.get("z_loss", 0.0),
        softcap=settings.get("softcap"),
    )
    (gold_grad,) = torch.autograd.grad(gold, gold_leaf, grad_output.double())
    assert_close(loss, gold, "loss")
    assert_close(grad, gold_grad, "gradient")


def test_focal_z_loss_and_softcap_against_float64(backend):
    # gamma > 0, per-class alpha, weight and smoothing with both features, against the float64 reference.
    x, target, weight = _rows(torch.float32, seed=1)
    settings = dict(
        gamma=1.5,
        alpha=(torch.rand(37, dtype=torch.float64) + 0.1).to(DEVICE),
        weight=weight,
        label_smoothing=0.05,
        z_loss=1e-2,
        softcap=4.0,
    )
    leaf = x.clone().requires_grad_(True)
    loss = triton_focal.focal_loss(
        leaf, target, backend=backend, **{k: v.float() if torch.is_tensor(v) else v for k, v in settings.items()}
    )
    (grad,) = torch.autograd.grad(loss, leaf)
    gold_leaf = x.double().requires_grad_(True)
    gold = triton_focal.focal_loss(gold_leaf, target, backend="reference", **settings)
    (gold_grad,) = torch.autograd.grad(gold, gold_leaf)
    assert_close(loss, gold, "loss")
    assert_close(grad, gold_grad, "gradient")


def test_softcap_and_z_loss_are_checked():
    x, target, _ = _rows(torch.float32)
    for bad in (0.0, -1.0, float("inf"), float("nan"), "2"):
        with pytest.raises(ValueError, match="softcap"):
            triton_focal.focal_loss(x, target, softcap=bad)
    for bad in (-1e-3, float("inf"), float("nan"), None):
        with pytest.raises(ValueError, match="z_loss"):
            triton_focal.focal_loss(x, target, z_loss=bad)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_fused_linear_with_z_loss_and_softcap(backend, reduction):
    # With weight, the mean has two divisors (sum w_y and the row count): each chunk's parts
    # are scaled apart.
    generator = torch.Generator().manual_seed(2)
    tokens, hidden_size, vocab = 29, 8, 41
    hidden = torch.randn(tokens, hidden_size, generator=generator, dtype=torch.float64).to(DEVICE).requires_grad_(True)
    lm_weight = (
        torch.randn(vocab, hidden_size, generator=generator, dtype=torch.float64).to(DEVICE).requires_grad_(True)
    )
    target = torch.randint(0, vocab, (tokens,), generator=generator).to(DEVICE)
    target[::4] = -100
    settings = dict(
        gamma=1.0,
        weight=(torch.rand(vocab, generator=generator, dtype=torch.float64) + 0.1).to(DEVICE),
        label_smoothing=0.1,
        z_loss=1e-2,
        softcap=3.0,
        reduction=reduction,
    )
    fused = triton_focal.fused_linear_focal_loss(hidden, lm_weight, target, chunk_size=6, backend=backend, **settings)
    grad_output = (torch.rand(fused.shape, generator=generator, dtype=torch.float64) + 0.5).to(DEVICE)
    grads = torch.autograd.grad(fused, (hidden, lm_weight), grad_output)
    plain = triton_focal.focal_loss(hidden @ lm_weight.t(), target, backend="reference", **settings)
    plain_grads = torch.autograd.grad(plain, (hidden, lm_weight), grad_output)
    assert_close(fused, plain, "loss", rtol=1e-9, atol=1e-12)
    for name, got, want in zip(("hidden", "lm_weight"), grads, plain_grads):
        assert_close(got, want, f"gradient of {name}", rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("tokens, hidden_size, vocab", [(4096, 1024, 32000), (8192, 4096, 128256), (3, 64, 50)])
def test_default_chunks_hold_about_as_many_logits_as_the_hidden_states(tokens, hidden_size, vocab):
    chunks = fused_linear._chunks(tokens, vocab, hidden_size, None)
    assert chunks[0][0] == 0 and chunks[-1][1] == tokens
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    rows = chunks[0][1] - chunks[0][0]
    assert rows * vocab <= max(2 * tokens * hidden_size, fused_linear.MIN_CHUNK_ROWS * vocab), (rows, len(chunks))
    assert rows >= min(tokens, fused_linear.MIN_CHUNK_ROWS)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="the CPU measurement reads Linux's /proc")
def test_fused_head_peak_memory_is_a_quarter_of_the_materialized_step():
    # Each method in its own process (perf.memory); peak resident memory over the inputs.
    from perf import memory

    rows = memory.main(
        [
            "--tokens",
            "4096",
            "--hidden",
            "256",
            "--vocab",
            "8000",
            "--repeats",
            "0",
            "--no-save",
            "--device",
            "cpu",
            "--methods",
            "materialized_ce",
            "fused_reference",
        ]
    )
    peaks = {row["method"]: row["peak_over_inputs_mib"] for row in rows}
    assert set(peaks) == {"materialized_ce", "fused_reference"}, peaks
    # The materialized step holds the (T, V) logits and their gradient: 2 * 125 MiB at least.
    assert peaks["materialized_ce"] >= 2 * 4096 * 8000 * 4 / 2**20
    assert peaks["fused_reference"] <= 0.25 * peaks["materialized_ce"], peaks


def test_finetune_example_runs(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "finetune_causal_lm.py"
    spec = importlib.util.spec_from_file_location("finetune_causal_lm", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main(
        [
            "--steps",
            "4",
            "--vocab",
            "64",
            "--width",
            "16",
            "--batch",
            "4",
            "--length",
            "8",
            "--backend",
            "reference",
            "--z-loss",
            "1e-3",
            "--softcap",
            "20",
        ]
    )
    assert set(results) == {"ce", "focal"}
    assert all(torch.isfinite(torch.tensor(values)).all() for values in results.values())
    assert "held-out per-token loss" in capsys.readouterr().out
