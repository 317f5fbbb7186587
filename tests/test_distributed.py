"""vocab_parallel_focal_loss over gloo, 2 and 3 CPU processes with uneven vocabulary slices,
equals focal_loss of the whole logits (float64 reference): values and each rank's gradient slice.

One spawn per (world size, backend) runs every case, so the processes start once.
"""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import assert_close, skip_unless_on_cpu

import triton_focal
from triton_focal.distributed import vocab_parallel_focal_loss

VOCAB = 23
SHARDS = {2: [10, 13], 3: [5, 11, 7]}  # uneven; with 3 ranks the first slice holds few targets
NEG_INF = float("-inf")


def _cases():
    """(name, logits shape, settings, non-finite logits): every keyword of the contract at least once."""
    return [
        ("plain", (12,), dict(gamma=2.0), False),
        (
            "all",
            (12,),
            dict(gamma=0.5, alpha="tensor", weight="tensor", label_smoothing=0.1, z_loss=1e-2, softcap=4.0),
            False,
        ),
        (
            "per_class_gamma_none",
            (3, 5),
            dict(gamma="tensor", reduction="none", label_smoothing=0.2, z_loss=1e-3),
            False,
        ),
        ("sum_softcap", (12,), dict(gamma=1.0, alpha=0.25, reduction="sum", softcap=1.5), False),
        ("cross_entropy", (12,), dict(gamma=0.0, weight="tensor", z_loss=1e-1), False),
        ("masked", (12,), dict(gamma=2.0, z_loss=1e-2), True),
        ("masked_smoothing", (12,), dict(gamma=0.5, label_smoothing=0.1), True),
        ("all_ignored", (4,), dict(gamma=2.0, label_smoothing=0.1, z_loss=1e-2), False),
        ("nan_in_ignored_row", (8,), dict(gamma=2.0, label_smoothing=0.1, z_loss=1e-2), True),
    ]


def _materialize(settings, generator):
    out = {}
    for key, value in settings.items():
        if value == "tensor":
            value = torch.rand(VOCAB, generator=generator, dtype=torch.float64) * (3.0 if key == "gamma" else 1.0) + 0.1
        out[key] = value
    return out


def _case_data(name, shape, masked, seed):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, VOCAB, generator=generator, dtype=torch.float64) * 3
    target = torch.randint(0, VOCAB, shape, generator=generator)
    target.view(-1)[::4] = -100
    if name == "all_ignored":
        target.fill_(-100)
    elif name == "nan_in_ignored_row":
        logits.view(-1, VOCAB)[0] = float("nan")  # row 0 is ignored: it changes nothing
    elif masked:
        # Masked classes: a whole column, and one class in some rows, never the target.
        logits[..., 3] = NEG_INF
        rows = logits.view(-1, VOCAB)
        rows[::3, 17] = NEG_INF
        flat = target.view(-1)
        flat[(flat == 3) | (flat == 17)] = 0
    return logits, target, generator


def _check_cases(rank, world_size, backend, dtype, non_finite_cases):
    sizes = SHARDS[world_size]
    start = sum(sizes[:rank])
    end = start + sizes[rank]
    for seed, (name, shape, settings, non_finite) in enumerate(_cases()):
        if non_finite != non_finite_cases:
            continue
        logits, target, generator = _case_data(name, shape, non_finite, seed)
        settings = _materialize(settings, generator)
        expected_logits = logits.clone().requires_grad_(True)
        expected = triton_focal.focal_loss(
            expected_logits.movedim(-1, 1) if logits.dim() > 2 else expected_logits,
            target,
            backend="reference",
            **settings,
        )
        grad_output = torch.rand(expected.shape, generator=generator, dtype=torch.float64) + 0.5
        (expected_grad,) = torch.autograd.grad(expected, expected_logits, grad_output)

        shard = logits[..., start:end].to(dtype).requires_grad_(True)
        loss, z_part = vocab_parallel_focal_loss(shard, target, backend=backend, return_z_loss=True, **settings)
        (grad,) = torch.autograd.grad(loss, shard, grad_output.to(dtype))

        what = f"{name} (rank {rank} of {world_size}, {backend}, {dtype})"
        assert loss.dtype == dtype and grad.dtype == dtype, what
        tol = dict(rtol=1e-9, atol=1e-12) if dtype == torch.float64 else {}
        assert_close(loss, expected, f"loss of {what}", **tol)
        assert_close(grad, expected_grad[..., start:end], f"gradient of {what}", **tol)
        if settings.get("z_loss", 0) == 0:
            assert float(z_part.abs().max()) == 0.0, what


def _worker(rank, world_size, init_file, backend, dtype, non_finite_cases, failures):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        _check_cases(rank, world_size, backend, dtype, non_finite_cases)
    except Exception as err:  # report every rank's failure to the parent, with its message
        failures.put(f"rank {rank}: {type(err).__name__}: {err}")
        raise
    finally:
        dist.destroy_process_group()


def _run(world_size, backend, dtype, tmp_path, non_finite_cases=False):
    context = mp.get_context("spawn")
    failures = context.SimpleQueue()
    try:
        mp.start_processes(
            _worker,
            args=(world_size, str(tmp_path / "init"), backend, dtype, non_finite_cases, failures),
            nprocs=world_size,
            start_method="spawn",
        )
    except mp.ProcessRaisedException:
        messages = []
        while not failures.empty():
            messages.append(failures.get())
        pytest.fail("\n".join(messages) or "a rank failed")


@pytest.mark.parametrize("world_size", [2, 3])
def test_matches_unsharded_loss(world_size, backend, tmp_path):
    skip_unless_on_cpu(backend)
    if backend == "compile" and world_size == 3:
        pytest.skip("one compile run (2 ranks) covers the compiled shard functions")
    _run(world_size, backend, torch.float64, tmp_path)


def test_non_finite_logits(tmp_path):
    # -inf logits on non-target classes: finite loss and gradient, 0 for the masked classes;
    # NaN in an ignored row: no effect.
    _run(3, "reference", torch.float64, tmp_path, non_finite_cases=True)


def test_float32_shards(tmp_path):
    _run(2, "reference", torch.float32, tmp_path)


def test_needs_an_initialized_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialized here")
    with pytest.raises(RuntimeError, match="init_process_group"):
        vocab_parallel_focal_loss(torch.randn(4, 5), torch.zeros(4, dtype=torch.long))


def test_rejects_bad_arguments(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        logits, target = torch.randn(4, 5), torch.zeros(4, dtype=torch.long)
        with pytest.raises(ValueError, match="target"):
            vocab_parallel_focal_loss(logits, target[:3])
        with pytest.raises(ValueError, match="target holds class index 7"):
            vocab_parallel_focal_loss(logits, torch.full((4,), 7))
        with pytest.raises(ValueError, match="z_loss"):
            vocab_parallel_focal_loss(logits, target, z_loss=-1.0)
        with pytest.raises(ValueError, match="softcap"):
            vocab_parallel_focal_loss(logits, target, softcap=0.0)
        with pytest.raises(ValueError, match="weight"):
            vocab_parallel_focal_loss(logits, target, weight=torch.ones(4))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_masked_classes_give_finite_zero_gradients(tmp_path, gamma, label_smoothing):
    # The contract on its own (no oracle): masked classes cost nothing and get a 0 gradient;
    # an ignored row of NaN changes nothing.
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        logits, target, _ = _case_data("masked", (12,), True, 0)
        logits[0] = float("nan")
        target[0] = -100
        shard = logits.clone().requires_grad_(True)
        loss = vocab_parallel_focal_loss(shard, target, gamma=gamma, label_smoothing=label_smoothing, z_loss=1e-2)
        (grad,) = torch.autograd.grad(loss, shard)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
        assert (grad[shard.detach() == NEG_INF] == 0).all() and (grad[0] == 0).all()
        # The unmasked classes alone give the same loss without smoothing (whose 1/C counts every class).
        if label_smoothing == 0:
            finite = logits.clone()
            finite[1:][finite[1:] == NEG_INF] = -1e4  # exp(-1e4) is 0 in float64 too
            expected = triton_focal.focal_loss(finite[1:], target[1:], gamma=gamma, z_loss=1e-2, backend="reference")
            assert_close(loss, expected, "loss", rtol=1e-9, atol=1e-12)
    finally:
        dist.destroy_process_group()
