"""Timing, memory and the machine: how every number in the JSON is taken.

On CUDA, ``triton.testing.do_bench`` times each call with CUDA events and flushes the L2
cache before it (so repeated calls over one buffer do not measure the cache), after an
explicit warm-up that keeps compilation (Triton JIT, torch.compile) out of its estimate.
On the CPU a wall-clock loop with ``time.perf_counter`` stands in; its figures describe the
CPU, not any GPU.
"""

import gc
import os
import platform
import re
import statistics
import subprocess
import time

import torch

QUANTILES = (0.5, 0.2, 0.8)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _quantile(samples, q):
    ordered = sorted(samples)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def bench(fn, device, quick=False, setup=None):
    """Median and 20 / 80 % quantiles of ``fn``'s run time in ms.

    Args:
        fn: the timed callable; ``fn()``, or ``fn(setup())`` when ``setup`` is given.
        device: "cuda" or "cpu".
        quick: fewer repetitions (a smoke run).
        setup: an untimed callable run before every timed call, its result passed to ``fn``
            (the backward mode: a fresh forward each time, so no graph is kept with
            ``retain_graph``, which torch.compile's donated buffers forbid).

    Returns:
        (median_ms, p20_ms, p80_ms)
    """
    call = fn if setup is None else (lambda: fn(setup()))
    # Warm-up outside the measurement: the first calls compile (Triton JIT, torch.compile,
    # cuBLAS handles); on CUDA the last one estimates the time per call.
    for _ in range(1 if quick and device != "cuda" else 2):
        call()
    sync(device)
    if device == "cuda":
        start = time.perf_counter()
        call()
        sync(device)
        estimate_ms = (time.perf_counter() - start) * 1e3
        # At least ~20 timed calls, at most ~2 s of them (fewer for --quick).
        rep_ms = min(max(20 * estimate_ms, 100.0), 500.0 if quick else 2000.0)
        if setup is None:
            try:
                from triton.testing import do_bench
            except ImportError:
                do_bench = None
            if do_bench is not None:
                median, p20, p80 = do_bench(fn, warmup=25, rep=rep_ms, quantiles=list(QUANTILES))
                return float(median), float(p20), float(p80)
        reps = int(min(max(rep_ms / max(estimate_ms, 1e-3), 10), 1000))
        return _bench_events(fn, reps, setup)

    # CPU: repeat until 10 samples (3 in quick mode) or a time budget is used up.
    budget_s, max_reps = (0.5, 3) if quick else (2.0, 10)
    samples = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < max_reps and (len(samples) < 3 or time.perf_counter() < deadline):
        args = () if setup is None else (setup(),)
        start = time.perf_counter()
        fn(*args)
        samples.append((time.perf_counter() - start) * 1e3)
        del args
    return statistics.median(samples), _quantile(samples, 0.2), _quantile(samples, 0.8)


def bench_interleaved(calls, device, rounds, quick=False):
    """Per-round times in ms of several callables, timed in turn within each round.

    Args:
        calls: name -> ``(fn, setup)`` as for :func:`bench`.
        device: "cuda" or "cpu".
        rounds: how many rounds; each times every callable ``reps`` times and keeps the
            fastest (a call slowed by another process on the machine is noise, never the
            callable's own cost), starting each round at the next callable so that none
            always runs first.
        quick: one call per round instead of three.

    Returns:
        name -> list of ``rounds`` per-round times (ms), in round order.
    """
    names = list(calls)
    runners = {
        name: (fn if setup is None else (lambda fn=fn, setup=setup: fn(setup()))) for name, (fn, setup) in calls.items()
    }
    timed = {name: fn for name, (fn, _) in calls.items()}
    for name in names:  # warm-up: compilation happens here
        for _ in range(2):
            runners[name]()
    sync(device)
    reps = 1 if quick else 3
    samples = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            setup = calls[name][1]
            times = []
            for _ in range(reps):
                args = () if setup is None else (setup(),)
                sync(device)
                start = time.perf_counter()
                timed[name](*args)
                sync(device)
                times.append((time.perf_counter() - start) * 1e3)
                del args
            samples[name].append(min(times))
    return samples


def machine_load():
    """The 1, 5 and 15 minute load averages and the core count: how busy the machine was
    (on a shared or loaded machine, CPU timings move with it)."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:  # not available on this platform
        return None
    return {"1min": round(one, 2), "5min": round(five, 2), "15min": round(fifteen, 2), "cores": os.cpu_count()}


def _bench_events(fn, reps, setup=None):
    """CUDA events around each call of ``fn``, the L2 cache flushed and ``setup`` run (both
    untimed) before it: do_bench's method, with room for an untimed setup."""
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    events = []
    for _ in range(reps):
        args = () if setup is None else (setup(),)
        flush.zero_()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn(*args)
        end.record()
        events.append((begin, end))
        del args
    torch.cuda.synchronize()
    samples = [begin.elapsed_time(end) for begin, end in events]
    return statistics.median(samples), _quantile(samples, 0.2), _quantile(samples, 0.8)


def copy_bandwidth_gbs(device, quick=False):
    """Device memory bandwidth measured with a large tensor copy, counting bytes read plus
    bytes written. The floor of every point is its byte count at this rate.
    """
    # 1 GiB on a GPU (far beyond L2); 64 MiB on the CPU (beyond its last-level cache).
    nbytes = (256 if quick else 1024) * 2**20 if device == "cuda" else 64 * 2**20
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    median_ms, _, _ = bench(lambda: dst.copy_(src), device, quick=quick)
    return 2 * nbytes / (median_ms * 1e-3) / 1e9


def extra_peak_mb(fn, device, setup=None):
    """Peak memory allocated by one call of ``fn`` (``fn(setup())``) beyond what was allocated
    before it (the inputs, and for the backward the forward's saved tensors), in MiB; the gradient,
    an output every implementation must write, is included. None on the CPU, where PyTorch
    keeps no allocator statistics.
    """
    if device != "cuda":
        return None
    args = () if setup is None else (setup(),)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    result = fn(*args)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del result, args
    return (peak - base) / 2**20


def free_memory(device):
    """Return cached GPU memory between points (so one point's cache does not count as the
    next one's peak, nor push it out of memory). A no-op on the CPU, where collecting after
    every point would cost more than the point."""
    if device == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def is_oom(err):
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def _nvidia_smi(field):
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        return out.strip().splitlines()[0].strip() or None
    except Exception:  # no nvidia-smi (ROCm, containers): the field stays unknown
        return None


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def slug(name):
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def device_info(device):
    """What the numbers were measured on."""
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return {
            "kind": "cuda",
            "is_gpu": True,
            "name": torch.cuda.get_device_name(0),
            "slug": slug(torch.cuda.get_device_name(0)),
            "driver": _nvidia_smi("driver_version"),
            "cuda_runtime": torch.version.cuda or torch.version.hip,
            "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
            "multiprocessors": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "note": None,
        }
    return {
        "kind": "cpu",
        "is_gpu": False,
        "name": _cpu_name(),
        "slug": "cpu",
        "driver": None,
        "cuda_runtime": None,
        "capability": None,
        "multiprocessors": os.cpu_count(),
        "memory_gib": None,
        "note": "CPU figures: NOT GPU figures. Tiny shapes, wall-clock timing, Triton only "
        "through its interpreter; they show that the suite runs, not how fast anything is on a GPU.",
    }


def versions():
    import sys

    found = {"python": sys.version.split()[0], "torch": torch.__version__}
    for module in ("triton", "triton_focal", "torchvision", "liger_kernel"):
        try:
            mod = __import__(module)
            found[module] = getattr(mod, "__version__", "unknown")
        except Exception:
            found[module] = None
    if found.get("triton_focal") == "unknown":
        try:
            from importlib.metadata import version

            found["triton_focal"] = version("triton-focal")
        except Exception:
            pass
    return found
