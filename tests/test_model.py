"""perf.model: the GPU cost model without a GPU.

First its pieces, on kernels small enough to count by hand (bytes of a copy, trips of a loop,
the SASS instructions a loop runs, the dependent memory rounds, an early exit, the L2 rule, the
fit); then the headline cases: the kernels must not spill, the model must give sane numbers,
and the calibrated model at its pessimistic end must not fall below the committed figures.
"""

import json
import math
import os

import pytest
import torch
import triton
import triton.language as tl

pytest.importorskip("triton.backends.nvidia")

from perf import model  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


@triton.jit
def _copy_kernel(x_ptr, y_ptr, row_length, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * row_length
    for start in range(0, row_length, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < row_length
        tl.store(y_ptr + row + offs, tl.load(x_ptr + row + offs, mask=mask), mask=mask)


@triton.jit
def _center_rows_kernel(x_ptr, y_ptr, row_length, BLOCK: tl.constexpr):
    """Two passes over a row: its sum, then ``x - mean``; every element is read twice."""
    row = tl.program_id(0).to(tl.int64) * row_length
    total = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, row_length, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        total += tl.load(x_ptr + row + offs, mask=offs < row_length, other=0.0).to(tl.float32)
    mean = tl.sum(total, axis=0) / row_length
    for start in range(0, row_length, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row + offs, mask=offs < row_length, other=0.0).to(tl.float32)
        tl.store(y_ptr + row + offs, (x - mean).to(y_ptr.dtype.element_ty), mask=offs < row_length)


@triton.jit
def _scale_unless_one_kernel(x_ptr, scale_ptr, numel, BLOCK: tl.constexpr):
    scale = tl.load(scale_ptr)
    if scale != 1.0:
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs, mask=offs < numel)
        tl.store(x_ptr + offs, x * scale, mask=offs < numel)


@triton.jit
def _tile_sums_kernel(x_ptr, out_ptr, numel, num_tiles, BLOCK: tl.constexpr):
    """A persistent grid: each program adds its tiles ``pid, pid + grid, ...``."""
    total = tl.zeros([BLOCK], dtype=tl.float32)
    for tile in range(tl.program_id(0), num_tiles, tl.num_programs(0)):
        offs = tile * BLOCK + tl.arange(0, BLOCK)
        total += tl.load(x_ptr + offs, mask=offs < numel, other=0.0)
    tl.store(out_ptr + tl.program_id(0), tl.sum(total, axis=0))


def _count(kernel, grid, *args, **kwargs):
    """The launch, executed under the interpreter with the model's counters."""
    with model.recording("count") as launches:
        kernel[grid](*args, **kwargs)
    (launch,) = launches
    return launch


@pytest.fixture(scope="module")
def sass_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("sass"))


def _machine_code(launch, cache):
    return model.compile_launches([launch], cache, extra_paths=[HERE])[model.spec_key(launch)]


def test_copy_moves_the_floor_and_its_loop_runs_trips_over_unroll(sass_cache):
    rows, block = 3, 1024
    counts = {}
    for trips in (8, 16):
        x = torch.randn(rows, trips * block).to(torch.bfloat16)
        y = torch.empty_like(x)
        launch = _count(_copy_kernel, (rows,), x, y, x.shape[1], BLOCK=block, num_warps=4)
        torch.testing.assert_close(y, x, rtol=0, atol=0)
        # bytes: read once, write once, nothing re-read: exactly the floor
        assert launch.load_first_bytes == launch.store_bytes == x.numel() * 2
        assert launch.reread_same_program == [] and launch.reread_other_program_bytes == 0
        floor = 2 * x.numel() * 2
        assert (model.dram_load_bytes(launch, resident_programs=rows) + launch.store_bytes) / floor == 1.0
        code = _machine_code(launch, sass_cache)
        executed = model.dynamic_counts(code, launch)
        (loop,) = executed.loops
        assert loop["trips_per_entry"] == trips and executed.mufu == 0
        counts[trips] = (executed.warp_instructions, loop)
        # one warp runs the code before the loop, the unrolled body trips // unroll times, and
        # at most all of the code after it (remainder copies and the exit)
        ((first, last, _),) = code["loops"]
        reachable = [ins[2] for ins in code["instructions"]]
        body = (last - first + 1) * trips // loop["unroll"]
        per_warp = executed.warp_instructions / (rows * 4)
        assert sum(reachable[:first]) + body <= per_warp <= sum(reachable) - (last - first + 1) + body
    # ptxas unrolls this loop 4 times: 8 more trips run the unrolled body twice more per warp
    (w8, loop8), (w16, _) = counts[8], counts[16]
    unroll = loop8["unroll"]
    assert unroll == 4 and loop8["iterations_per_program"] == 8 // unroll
    assert w16 - w8 == rows * 4 * (16 - 8) // unroll * loop8["sass_instructions"]


def test_two_passes_count_a_reread_and_the_l2_rule_decides_where_it_comes_from(sass_cache):
    rows, length, block = 4, 4096, 512
    x = torch.randn(rows, length)
    y = torch.empty_like(x)
    launch = _count(_center_rows_kernel, (rows,), x, y, length, BLOCK=block, num_warps=4)
    torch.testing.assert_close(y, x - x.mean(dim=1, keepdim=True), rtol=1e-5, atol=1e-5)
    row_bytes = length * 4
    assert launch.load_first_bytes == x.numel() * 4 and launch.store_bytes == x.numel() * 4
    # every element is re-read once, after the program loaded the whole row; the second pass's
    # loads and stores before it pass through the L2 too: between one row and two in between
    distances = [d for d, _ in launch.reread_same_program]
    assert sum(b for _, b in launch.reread_same_program) == x.numel() * 4
    assert min(distances) == row_bytes and max(distances) < 2 * row_bytes
    device = model.DEVICE
    hit = int(device.l2_sure_hit_bytes // (2 * row_bytes))
    miss = int(device.l2_sure_miss_bytes // row_bytes) + 1
    assert model.dram_load_bytes(launch, resident_programs=hit) == x.numel() * 4  # from L2
    assert model.dram_load_bytes(launch, resident_programs=miss) == 2 * x.numel() * 4  # from DRAM
    assert not model.l2_uncertain(launch, hit) and not model.l2_uncertain(launch, miss)
    # near the boundary the model is unsure and judges both outcomes
    unsure = int(device.l2_reuse_bytes // row_bytes)
    assert model.l2_uncertain(launch, unsure)
    assert model.dram_load_bytes(launch, unsure, l2="hit") == x.numel() * 4
    assert model.dram_load_bytes(launch, unsure, l2="miss") == 2 * x.numel() * 4
    code = _machine_code(launch, sass_cache)
    counts = model.dynamic_counts(code, launch)
    assert sorted(l["trips_per_entry"] for l in counts.loops) == [length // block] * 2
    # each pass loads, then uses what it loaded: a round per iteration of each loop (ptxas may
    # unroll with its loads hoisted, which merges rounds), at least one per pass
    rounds_per_program = counts.rounds / rows
    assert 2 <= rounds_per_program <= 2 * length // block


def test_memory_rounds_follow_the_loads_a_loop_waits_for(sass_cache):
    rows, block, trips = 2, 1024, 16
    x = torch.randn(rows, trips * block).to(torch.bfloat16)
    launch = _count(_copy_kernel, (rows,), x, torch.empty_like(x), x.shape[1], BLOCK=block, num_warps=4)
    code = _machine_code(launch, sass_cache)
    counts = model.dynamic_counts(code, launch)
    (loop,) = counts.loops
    # x and y may alias, so ptxas keeps each store before the next load: the unrolled body is
    # load, store (waits for the load), load, ...: a round per source trip, not per SASS iteration
    assert loop["unroll"] > 1
    assert trips <= counts.rounds / rows <= trips + loop["unroll"]


def test_the_fit_recovers_known_constants():
    from perf.model import calibrate

    truth = (5e-6, 400e-9, 1.5)
    features = []
    for rounds in (1, 10, 100, 1000):
        for waves in (1, 3):
            for issue in (1e-6, 1e-4):
                row = {
                    "family": f"f{rounds}",
                    "runner": "synthetic",
                    "shape": {"rounds": rounds},
                    "dtype": "bf16",
                    "phase": "forward",
                    "liger_version": "",
                    "measured_ms": 0.0,
                }
                feature = {
                    "row": row,
                    "launches": [
                        {
                            "kernel": "k",
                            "issue_s": issue,
                            "mufu_s": 0.0,
                            "bytes_s": 2e-5,
                            "waves": waves,
                            "rounds": rounds,
                            "instructions_s": issue / waves,
                            "transfer_s": 2e-5 / waves,
                        }
                    ],
                    "torch_ops": [["sum", 1e-6, 1]],
                }
                feature["row"]["measured_ms"] = calibrate.predict(feature, *truth) * 1e3
                features.append(feature)
    fitted = calibrate.fit(features)
    assert fitted == pytest.approx(truth, rel=0.05)
    result = calibrate.calibrate(features)
    assert result["errors"]["calibrated"]["median"] == pytest.approx(1.0, abs=0.02)
    assert len(result["leave_one_family_out"]) == 4


def test_a_persistent_grid_of_one_tile_per_program_scales_its_loops_per_program(sass_cache):
    """The scaled-down shape fills a tenth of its one tile: the headline's loops cost what its
    programs run (one full tile each), not the elements' ratio times the small tile's trip."""
    block = 1024

    def launch(numel, programs):
        x, out = torch.randn(numel), torch.empty(programs)
        tiles = -(-numel // block)
        counted = _count(_tile_sums_kernel, (programs,), x, out, numel, tiles, BLOCK=block, num_warps=4)
        assert torch.allclose(out.sum(), x.sum(), rtol=1e-5, atol=1e-4)
        return counted

    small = launch(100, 1)
    scale = 8 * block / 100
    # the machine code is the headline launch's (one tile is a constant there: no loop)
    one_tile_each = launch(8 * block, 8)
    code = _machine_code(one_tile_each, sass_cache)
    per_program = model.cost.LaunchCounts(small, small, code, 1.0).warp_instructions
    assert model.cost.LaunchCounts(one_tile_each, small, code, scale).warp_instructions == pytest.approx(
        8 * per_program
    )
    # two tiles a program: the loop grows with the elements again
    two_tiles_each = launch(8 * block, 4)
    counts = model.cost.LaunchCounts(two_tiles_each, small, _machine_code(two_tiles_each, sass_cache), scale)
    assert counts.warp_instructions > 20 * per_program


def test_another_interpreter_compiles_into_a_cache_of_its_own(sass_cache):
    """``--compile-python``: the kernels compiled by another Python's Triton (here this one's, so
    the summary must agree), cached apart from this process's compiles."""
    import sys

    from perf.model.machine_code import compile_cache_dir

    x = torch.randn(2, 2048).to(torch.bfloat16)
    launch = _count(_copy_kernel, (2,), x, torch.empty_like(x), x.shape[1], BLOCK=1024, num_warps=4)
    other = compile_cache_dir(sass_cache, sys.executable)
    assert other != sass_cache and compile_cache_dir(sass_cache) == sass_cache
    key = model.spec_key(launch)
    theirs = model.compile_launches([launch], other, extra_paths=[HERE], python=sys.executable)[key]
    assert theirs == _machine_code(launch, sass_cache)
    assert os.listdir(other) == [key + ".json"]


def test_only_a_loop_counter_step_reads_as_an_unroll_factor():
    """A 64-bit address increment counts bytes (a loop that ptxas walks by pointers has no
    counter): its halves must not read as an unroll of the source step."""
    from perf.model.machine_code import _counter_immediates

    assert _counter_immediates("IADD3", "IADD3 R4, R4, 0x1000, RZ") == [0x1000]
    assert _counter_immediates("VIADD", "VIADD R39, R39, 0x1000") == [0x1000]
    assert _counter_immediates("IADD3", "IADD3 R82, P0, R82, 0x40, RZ") == []
    assert _counter_immediates("IADD3", "@P1 IADD3 R82, P0, R82, 0x40, RZ") == []
    assert _counter_immediates("IADD3.X", "IADD3.X R69, RZ, R69, 0x1, P0, !PT") == []


def test_an_early_exit_runs_only_the_code_before_it(sass_cache):
    numel, block = 8 * 1024, 1024
    x = torch.randn(numel)
    executed = {}
    for scale in (1.0, 2.0):
        launch = _count(
            _scale_unless_one_kernel, (numel // block,), x, torch.tensor(scale), numel, BLOCK=block, num_warps=4
        )
        assert launch.store_bytes == (0 if scale == 1.0 else numel * 4)
        code = _machine_code(launch, sass_cache)
        executed[scale] = model.dynamic_counts(code, launch).warp_instructions
        reachable = sum(1 for ins in code["instructions"] if ins[2])
        assert executed[scale] <= reachable * 4 * (numel // block)
    assert executed[1.0] < 0.5 * executed[2.0]


def test_occupancy_from_registers_warps_and_shared_memory():
    device = model.DEVICE
    assert device.programs_per_sm(registers=32, num_warps=4, shared_bytes=0) == 16  # warps: 64 / 4
    assert device.programs_per_sm(registers=128, num_warps=4, shared_bytes=0) == 4  # 65536 / (128 * 128)
    assert device.programs_per_sm(registers=85, num_warps=16, shared_bytes=0) == 1  # 88 allocated: 2816 per warp
    assert device.programs_per_sm(registers=32, num_warps=1, shared_bytes=100 * 1024) == 2  # shared memory
    assert device.programs_per_sm(registers=16, num_warps=1, shared_bytes=0) == 32  # the program limit


# --- the headline cases ------------------------------------------------------------------

HEADLINE = model.select(model.all_cases(), headline_only=True)
FAMILY = model.select(model.all_cases(), family_only=True)  # QFL, VFL, ASL


@pytest.fixture(scope="module")
def all_results(sass_cache):
    """The plain losses' targets and the focal family's, from one run (one compile step)."""
    results = model.run_model(HEADLINE + FAMILY, cache_dir=sass_cache, log=lambda *a: None)
    return {r["case"]: r for r in results}


@pytest.fixture(scope="module")
def headline_results(all_results):
    return {case.name: all_results[case.name] for case in HEADLINE}


def test_headline_and_family_kernels_do_not_spill(all_results):
    for name, r in all_results.items():
        for launch in r["launches"]:
            assert launch["spill_bytes_per_thread"] == 0 and launch["spill_instructions"] == 0, (
                f"{name}: {launch['kernel']} spills ({launch['spill_bytes_per_thread']} B of local memory per thread, "
                f"{launch['spill_instructions']} STL/LDL)"
            )


def test_model_gives_sane_numbers(headline_results):
    for case in HEADLINE:
        r = headline_results[case.name]
        elements = math.prod(case.shape)
        itemsize = 2 if case.dtype == "bf16" else 4
        target_bytes = elements * itemsize if case.kind == "sigmoid_dense" else elements // case.shape[1] * 8
        assert r["floor_bytes"] == 2 * elements * itemsize + target_bytes
        assert r["launches"] and all(l["registers"] > 0 and l["programs_per_sm"] >= 1 for l in r["launches"])
        assert r["bytes_over_floor"] >= 0.99, r  # a loss cannot move fewer bytes than it reads and writes
        assert 1 <= r["instructions_per_element"] < 10_000
        assert r["modeled_ms"] >= r["floor_ms"] * 0.99 and 0 < r["modeled_pct_of_floor"] <= 101
        # the calibrated model adds costs to the uncalibrated bound, never removes them
        assert r["calibrated_worst_ms"] >= r["calibrated_ms"] >= r["modeled_ms"] * 0.99
        assert r["launch_count"] >= len(r["launches"])


def _committed():
    path = os.path.join(os.path.dirname(HERE), "perf", "results", "model", "model.json")
    with open(path) as f:
        return {r["case"]: r for r in json.load(f)}


def test_headline_and_family_cases_do_not_fall_below_the_committed_calibrated_figures(all_results):
    committed = _committed()
    fell = [
        f"{name}: {r['calibrated_pct_of_floor_worst']:.1f}% at the pessimistic end, committed "
        f"{committed[name]['calibrated_pct_of_floor_worst']:.1f}%"
        for name, r in all_results.items()
        if name in committed
        and "calibrated_pct_of_floor_worst" in committed[name]
        and r["calibrated_pct_of_floor_worst"] < committed[name]["calibrated_pct_of_floor_worst"] - 1.0
    ]
    assert not fell, "\n".join(fell) + "\n(rerun python -m perf.model --write if this is intended)"


@pytest.mark.xfail(
    strict=True,
    reason="the kernels do not yet meet these targets under the calibrated model "
    "(perf/results/model/model.md); remove this mark when they do",
)
def test_headline_and_family_cases_meet_their_targets_at_the_pessimistic_end(all_results):
    missed = [
        f"{name}: {r['calibrated_pct_of_floor_worst']:.1f}% of the floor at the pessimistic end (target "
        f"{r['target_pct_of_floor']}%, {r['bound']}-bound, {r['launch_count']} launches)"
        for name, r in all_results.items()
        if r["calibrated_pct_of_floor_worst"] < r["target_pct_of_floor"]
    ]
    assert not missed, "\n".join(missed)
