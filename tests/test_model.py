"""perf.model: the GPU cost model without a GPU.

First its pieces, on kernels small enough to count by hand (bytes of a copy, trips of a loop,
the SASS instructions a loop runs, an early exit, the L2 rule); then the headline cases: the
kernels must not spill, the model must give sane numbers, and the modeled bound must meet
issue 10's targets.
"""

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
    return model.compile_launches([launch], HERE, cache)[model.spec_key(launch)]


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
        (first, last, _), = code["loops"]
        reachable = [ins[2] for ins in code["instructions"]]
        body = (last - first + 1) * trips // loop["unroll"]
        per_warp = executed.warp_instructions / (rows * 4)
        assert sum(reachable[:first]) + body <= per_warp <= sum(reachable) - (last - first + 1) + body
    # ptxas unrolls this loop 4 times: 8 more trips run the unrolled body twice more per warp
    (w8, loop8), (w16, loop16) = counts[8], counts[16]
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
    # every element is re-read once, after the program loaded the whole row
    assert launch.reread_same_program == [(row_bytes, x.numel() * 4)]
    fits = int(model.DEVICE.l2_reuse_bytes // row_bytes)
    assert model.dram_load_bytes(launch, resident_programs=fits) == x.numel() * 4  # from L2
    assert model.dram_load_bytes(launch, resident_programs=fits + 1) == 2 * x.numel() * 4  # from DRAM
    code = _machine_code(launch, sass_cache)
    loops = model.dynamic_counts(code, launch).loops
    assert sorted(l["trips_per_entry"] for l in loops) == [length // block] * 2


def test_an_early_exit_runs_only_the_code_before_it(sass_cache):
    numel, block = 8 * 1024, 1024
    x = torch.randn(numel)
    executed = {}
    for scale in (1.0, 2.0):
        launch = _count(_scale_unless_one_kernel, (numel // block,), x, torch.tensor(scale), numel, BLOCK=block,
                        num_warps=4)
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


@pytest.fixture(scope="module")
def headline_results(sass_cache):
    return {r["case"]: r for r in model.run_model(HEADLINE, cache_dir=sass_cache, log=lambda *a: None)}


def test_headline_kernels_do_not_spill(headline_results):
    for name, r in headline_results.items():
        for launch in r["launches"]:
            assert launch["spill_bytes_per_thread"] == 0 and launch["spill_instructions"] == 0, (
                f"{name}: {launch['kernel']} spills ({launch['spill_bytes_per_thread']} B of local memory per thread, "
                f"{launch['spill_instructions']} STL/LDL)")


def test_model_gives_sane_numbers(headline_results):
    for case in HEADLINE:
        r = headline_results[case.name]
        elements = math.prod(case.shape)
        itemsize = 2 if case.dtype == "bf16" else 4
        target_bytes = (elements * itemsize if case.kind == "sigmoid_dense"
                        else elements // case.shape[1] * 8)
        assert r["floor_bytes"] == 2 * elements * itemsize + target_bytes
        assert r["launches"] and all(l["registers"] > 0 and l["programs_per_sm"] >= 1 for l in r["launches"])
        assert r["bytes_over_floor"] >= 0.99, r  # a loss cannot move fewer bytes than it reads and writes
        assert 1 <= r["instructions_per_element"] < 10_000
        assert r["modeled_ms"] >= r["floor_ms"] * 0.99 and 0 < r["modeled_pct_of_floor"] <= 101


def test_headline_cases_meet_their_modeled_targets(headline_results):
    missed = [f"{name}: {r['modeled_pct_of_floor']:.1f}% of the floor (target {r['target_pct_of_floor']}%, "
              f"{r['bound']}-bound, {r['instructions_per_element']:.0f} instructions per element)"
              for name, r in headline_results.items() if r["modeled_pct_of_floor"] < r["target_pct_of_floor"]]
    assert not missed, "\n".join(missed)
