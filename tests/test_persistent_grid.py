"""The persistent grid: as many programs as the SMs keep resident, by the compiled kernel's
registers where they are known, fewer where re-reads must stay in L2 or tiles are few."""

import torch
from helpers import DEVICE

import triton_focal
from triton_focal.ops import launch
from triton_focal.ops.launch import Footprint, PersistentGrid

H100 = dict(num_sms=132, l2_bytes=50 * 2**20)


def test_rereads_stay_in_l2_or_the_grid_fills_the_gpu():
    grid = PersistentGrid(**H100)
    # 64 KB rows (a 32k bf16 vocabulary): 200 rows in flight stay in a quarter of the L2
    # (the model's sure hit), every SM with a program.
    assert grid.programs(8192, 16, 64 * 1024) == 200
    # 256 KB rows (a 128k bf16 vocabulary): 51 would fit, fewer than the SMs: the grid fills
    # the GPU instead (no SM idles for a re-read the L2 may not serve).
    assert grid.programs(8192, 16, 256 * 1024) == 132 * 4
    # 600 KB tiles: too few programs would fit, so the grid fills the GPU instead.
    assert grid.programs(100000, 4, 600 * 1024) == 132 * 16
    # small tiles of few warps: as many as fit would leave the SMs short of warps
    assert grid.programs(10**6, 1, 64 * 1024) == 132 * 32
    # Fewer tiles than programs: one program per tile.
    assert grid.programs(10, 4, 1024) == 10


def test_registers_bound_the_programs_per_sm():
    grid = PersistentGrid(**H100)
    # 164 registers a thread: 5,376 a warp (21 allocation units of 256), 3 programs of 4 warps
    # in 65,536; a grid of 2,112 (the warps' limit) would run 5.3 waves, the last a third full.
    assert grid.programs_per_sm(4, Footprint(registers=164, num_warps=4)) == 3
    assert grid.programs(10**6, 4, 0, Footprint(registers=164, num_warps=4)) == 132 * 3
    assert grid.programs_per_sm(4, Footprint(registers=78, num_warps=4)) == 6
    assert grid.programs_per_sm(4, Footprint(registers=32, num_warps=4)) == 16  # the warps' limit
    # shared memory: 100 KB a program (plus the driver's 1 KB) fits twice in 228 KB
    assert grid.programs_per_sm(4, Footprint(registers=32, num_warps=4, shared_bytes=100 * 1024)) == 2
    # a kernel too big for any occupancy rule still gets one program per SM
    assert grid.programs_per_sm(32, Footprint(registers=255, num_warps=32)) == 1
    # unknown registers: the warps alone
    assert grid.programs_per_sm(4) == 16
    assert grid.max_programs >= grid.programs(10**9, 1, 0)


def test_a_stand_in_footprint_sizes_the_launch(monkeypatch):
    """Under the interpreter the grid takes the footprint someone installed for the exact
    configuration (perf.model does, from its sm_90 compile), and the loss is unchanged."""
    seen = []
    real = PersistentGrid.programs

    def programs(self, num_tiles, num_warps, footprint, compiled=None):
        seen.append(compiled)
        return real(self, num_tiles, num_warps, footprint, compiled)

    monkeypatch.setattr(PersistentGrid, "programs", programs)
    x = torch.randn(2, 5, 8, 8, device=DEVICE, requires_grad=True)
    target = torch.randint(0, 5, (2, 8, 8), device=DEVICE)
    expected = triton_focal.focal_loss(x, target, backend="reference")
    if "triton" not in triton_focal.available_backends(DEVICE):
        assert seen == []
        return
    triton_focal.focal_loss(x, target, backend="triton")
    if x.is_cuda:  # compiled, not interpreted: the kernel's own registers and shared memory
        assert seen and seen[-1] is not None and seen[-1].registers > 0
        return
    assert seen and seen[-1] is None  # nothing installed: the warps' limit

    installed = {"another kernel": Footprint(registers=32, num_warps=4)}  # not empty: keys are computed
    monkeypatch.setattr(launch, "STAND_IN_FOOTPRINTS", installed)
    key_seen = []
    real_key = launch.footprint_key
    monkeypatch.setattr(launch, "footprint_key", lambda *a: key_seen.append(real_key(*a)) or key_seen[-1])
    triton_focal.focal_loss(x, target, backend="triton")
    installed[key_seen[-1]] = Footprint(registers=255, num_warps=4)
    loss = triton_focal.focal_loss(x, target, backend="triton")
    assert seen[-1] == Footprint(registers=255, num_warps=4)
    torch.testing.assert_close(loss, expected)
