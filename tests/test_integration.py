"""FocalLoss inside real training machinery: torch.compile, autocast and DDP.

Each test puts the loss where a training script puts it (inside the compiled model, under
autocast, behind DistributedDataParallel) and checks the values and gradients that come
out against an eager float64 computation or a single-process run.
"""

import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_close, skip_unless_on_cpu

import triton_focal

NUM_CLASSES = 5
IGNORE_INDEX = 255
# A RetinaNet-style per-class alpha: enters the loss, not the mean's denominator.
ALPHA = (0.25, 0.75, 0.75, 0.75, 0.75)


class SegmentationStep(nn.Module):
    """A tiny segmentation net whose forward returns the focal loss, as a compiled train step would."""

    def __init__(self, backend, reduction="mean"):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, NUM_CLASSES, 1))
        self.criterion = triton_focal.FocalLoss(
            gamma=2.0, alpha=torch.tensor(ALPHA), ignore_index=IGNORE_INDEX, reduction=reduction, backend=backend
        )

    def forward(self, images, target):
        return self.criterion(self.net(images), target)


def make_batch(batch=4, size=6, seed=0):
    """``(images (B, 3, S, S), target (B, S, S))``; the first row of every image is ignored,
    so equal shards of the batch have equal counts of non-ignored pixels."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=generator)
    target = torch.randint(0, NUM_CLASSES, (batch, size, size), generator=generator)
    target[:, 0, :] = IGNORE_INDEX
    return images, target


def gradients(model):
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def reference_loss_and_grads(model, images, target):
    """Loss and parameter gradients of the same weights with the float64 eager reference."""
    twin = SegmentationStep("reference").double()
    twin.load_state_dict(model.state_dict())
    loss = twin(images.double(), target)
    loss.backward()
    return loss, gradients(twin)


# --------------------------------------------------------------------------------------
# torch.compile(fullgraph=True): the loss is part of the compiled graph.
# --------------------------------------------------------------------------------------


# "compile" nests the fallback's own torch.compile inside the outer one; "triton" is the
# torch.library custom op, run on the CPU by the interpreter. One compile each (~20 s).
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["compile", "triton"])
def test_compiled_train_step_fullgraph(backend, device):
    if backend not in triton_focal.available_backends(device):
        pytest.skip(f"backend {backend!r} cannot run on {device} here")
    torch.manual_seed(0)
    model = SegmentationStep(backend).to(device)
    images, target = make_batch()
    compiled = torch.compile(model, fullgraph=True)

    # No TF32 convolutions on a GPU: the comparison is with a float64 twin at fp32 tolerance.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        loss = compiled(images.to(device), target.to(device))
        loss.backward()

    expected_loss, expected_grads = reference_loss_and_grads(model.cpu(), images, target)
    assert_close(loss, expected_loss, "compiled loss", dtype=torch.float32)
    for name, grad in gradients(model).items():
        assert_close(grad, expected_grads[name], f"grad of {name}", dtype=torch.float32)


# --------------------------------------------------------------------------------------
# Autocast: the loss follows F.cross_entropy's autocast policy.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_autocast_bf16_matches_cross_entropy_dtype(backend, reduction):
    skip_unless_on_cpu(backend)
    torch.manual_seed(0)
    model = SegmentationStep(backend, reduction)
    images, target = make_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.net(images)
        ce = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction=reduction)
        loss = model.criterion(logits, target)
    assert logits.dtype == torch.bfloat16
    # F.cross_entropy autocasts to float32 (its inputs are upcast, its result is float32);
    # a drop-in replacement must give the same dtype under the same autocast.
    assert loss.dtype == ce.dtype, f"focal loss under autocast is {loss.dtype}, F.cross_entropy gives {ce.dtype}"

    # The bf16 logits are upcast exactly, so the value is float32-accurate for those logits.
    expected = triton_focal.focal_loss(
        logits.detach().double(), target, gamma=2.0, alpha=torch.tensor(ALPHA, dtype=torch.float64),
        ignore_index=IGNORE_INDEX, reduction=reduction, backend="reference",
    )  # fmt: skip
    assert_close(loss, expected, "autocast loss", dtype=torch.float32)

    loss.sum().backward()
    for name, grad in gradients(model).items():
        assert grad.dtype == torch.float32 and torch.isfinite(grad).all(), name


# --------------------------------------------------------------------------------------
# DistributedDataParallel (gloo, 2 CPU processes) == one process on the whole batch.
# --------------------------------------------------------------------------------------

WORLD_SIZE = 2


def _ddp_worker(rank, init_file, backends, out_path):
    # A file rendezvous (no port to race for), and a timeout: a rank that never arrives
    # fails the test instead of hanging it.
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        images, target = make_batch()
        shard = slice(rank * len(images) // WORLD_SIZE, (rank + 1) * len(images) // WORLD_SIZE)
        results = {}
        for backend in backends:  # one process group for all backends: spawning is the cost
            torch.manual_seed(0)
            model = nn.parallel.DistributedDataParallel(SegmentationStep(backend))
            model(images[shard], target[shard]).backward()  # DDP averages the gradients here
            results[backend] = gradients(model.module)
        if rank == 0:
            torch.save(results, out_path)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's teardown: freeing DDP's reducer at exit can deadlock
    # (gloo's worker thread waits for the GIL that the freeing thread holds).
    os._exit(0)


def test_ddp_gloo_matches_single_process(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    # The reference backend only: with the Triton interpreter, gloo's teardown after DDP
    # intermittently deadlocked on the GIL in CI (an open item); DDP only sums gradients, and
    # the Triton backend's gloo path is tested in test_distributed.py.
    backends = ["reference"]
    out_path = tmp_path / "ddp_grads.pt"
    # Spawned children inherit the environment (TRITON_INTERPRET) and sys.path of this process.
    mp.spawn(_ddp_worker, args=(str(tmp_path / "rendezvous"), backends, str(out_path)), nprocs=WORLD_SIZE, join=True)
    ddp_grads = torch.load(out_path)

    images, target = make_batch()
    for backend in backends:
        torch.manual_seed(0)
        model = SegmentationStep(backend)
        model(images, target).backward()
        # Every shard has the same count of non-ignored pixels, so the average of the shards'
        # mean-loss gradients is the gradient of the mean over the whole batch.
        for name, grad in gradients(model).items():
            assert_close(ddp_grads[backend][name], grad, f"DDP grad of {name} ({backend})", dtype=torch.float32)
