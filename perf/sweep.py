"""Measure triton_focal against the alternatives, side by side in one process.

    python -m perf.sweep                                  # every family, bf16 and fp32
    python -m perf.sweep --table                          # the four headline cases
    python -m perf.sweep --cpu-table                      # CPU: the fallback against other libraries
    python -m perf.sweep --quick --families seg --dtypes bf16

Writes ``results.json`` (every point, the machine, its load, the versions, the command), one
PNG per family and ``summary.md`` into ``--out``, by default a folder outside the source tree
(``~/.cache/triton_focal/perf/<device-name>/``, or ``$TRITON_FOCAL_PERF_DIR``), so that a run
leaves the checkout unchanged; the committed results were written with ``--out perf/results/...``.
Without a GPU it runs the CPU grid (tiny shapes) and labels the figures as CPU figures.
"""

import sys

if __name__ == "__main__":  # importing torch takes seconds: say at once that the run has started
    print("perf.sweep: starting (importing torch)", flush=True)

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from . import cases as cases_mod  # noqa: E402
from .cases import DTYPES, FAMILIES, MODES, bytes_moved, family_cases, make_inputs  # noqa: E402
from .providers import BASELINE, CPU_TABLE_PROVIDERS, DEFAULT_PROVIDERS, PROVIDERS, select  # noqa: E402
from .timing import (  # noqa: E402
    bench,
    bench_interleaved,
    copy_bandwidth_gbs,
    device_info,
    extra_peak_mb,
    free_memory,
    is_oom,
    machine_load,
    versions,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"  # the committed results
PLOT_HINT = 'For plots: pip install "triton-focal[perf]" (matplotlib), then python -m perf.plot {out}/results.json'
DEFAULT_FAMILIES = ("seg", "vocab", "det")
ROUNDS = 7  # interleaved rounds of the CPU comparison


def default_out(slug):
    """Where a run writes unless ``--out`` says otherwise: outside the source tree."""
    base = os.environ.get("TRITON_FOCAL_PERF_DIR")
    if base:
        return Path(base) / slug
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "triton_focal" / "perf" / slug


def _csv(text, allowed, what):
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise SystemExit(f"--{what}: unknown {unknown or text!r}; expected a comma list of {list(allowed)}")
    return items


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m perf.sweep",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a few points per family, fewer repetitions")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="auto: cuda if visible")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (None: $TRITON_FOCAL_PERF_DIR/<device> if set, else ~/.cache/triton_focal/perf/<device>)",
    )
    parser.add_argument("--families", default=",".join(DEFAULT_FAMILIES), help=f"comma list of {FAMILIES}")
    parser.add_argument("--dtypes", default="bf16,fp32", help=f"comma list of {tuple(DTYPES)}")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma list of {MODES}")
    parser.add_argument("--providers", default=",".join(DEFAULT_PROVIDERS), help=f"comma list of {tuple(PROVIDERS)}")
    parser.add_argument(
        "--table",
        action="store_true",
        help="only the four headline cases, bf16 forward+backward (= --families table --dtypes bf16 --modes fwd+bwd)",
    )
    parser.add_argument(
        "--cpu-table",
        action="store_true",
        help="the CPU comparison: the compile fallback against F.cross_entropy / BCE, the blog and torchvision "
        "formulas (eager and compiled), kornia, MONAI and smp; fp32 and bf16 forward+backward, interleaved rounds, "
        f"ratios to the gamma=0 baseline (= --families cpu --dtypes fp32,bf16 --modes fwd+bwd --rounds {ROUNDS})",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="time the providers of a case in this many interleaved rounds (0: one provider after the other)",
    )
    parser.add_argument("--no-plots", action="store_true", help="no PNGs: write results.json and summary.md only")
    args = parser.parse_args(argv)
    if args.table:
        args.families, args.dtypes, args.modes = "table", "bf16", "fwd+bwd"
    if args.cpu_table:
        args.families, args.dtypes, args.modes = "cpu", "fp32,bf16", "fwd+bwd"
        args.device = "cpu" if args.device == "auto" else args.device
        args.rounds = args.rounds or ROUNDS
        if args.providers == ",".join(DEFAULT_PROVIDERS):
            args.providers = ",".join(CPU_TABLE_PROVIDERS)
    args.families = _csv(args.families, FAMILIES, "families")
    args.dtypes = _csv(args.dtypes, tuple(DTYPES), "dtypes")
    args.modes = _csv(args.modes, MODES, "modes")
    args.providers = _csv(args.providers, tuple(PROVIDERS), "providers")
    if args.rounds < 0:
        raise SystemExit("--rounds must be >= 0")
    return args


def resolve_device(choice):
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to PyTorch")
    return choice


def _allow_recompiles():
    # Every (shape, dtype, mode) is a new graph; past the default limit torch.compile would
    # silently fall back to eager and the "compile" figures would be eager figures.
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 4096))


def _loss_call(provider, case, mode, x, target):
    """(fn, setup) for one mode: the timed callable and an untimed one run before each call."""
    loss_fn = provider.build(case)
    if mode == "fwd":
        return (lambda: loss_fn(x, target)), None
    if mode == "fwd+bwd":
        return (lambda: torch.autograd.grad(loss_fn(x, target), x)), None
    # bwd: a fresh forward before every timed backward
    return (lambda loss: torch.autograd.grad(loss, x)), (lambda: loss_fn(x, target))


def reference_value(case, dtype, device):
    """The loss from the eager reference, computed in float64, to check each focal provider's
    value against (None if it cannot be computed, e.g. out of memory)."""
    try:
        x, target = make_inputs(case, dtype, device)
        with torch.no_grad():
            wide = x.detach().double()
            if isinstance(target, torch.Tensor) and target.is_floating_point():
                wide_target = target.double()
            else:
                wide_target = target
            value = PROVIDERS["reference"].build(case)(wide, wide_target)
        return float(value)
    except Exception as err:  # out of memory at the largest GPU sizes: no check, not no run
        print(f"    (no reference value: {type(err).__name__})", flush=True)
        return None
    finally:
        free_memory(device)


def _new_point(case, dtype_name, mode, provider, copy_gbs):
    dtype = DTYPES[dtype_name]
    # read logits, read target, write grad (bwd, fwd+bwd), write loss (0-dim)
    nbytes = bytes_moved(case, dtype, mode)
    return {
        "family": case.family,
        "series": case.series,
        "x_name": case.x_name,
        "x": case.x,
        "shape": list(case.shape),
        "target": case.target,
        "dtype": dtype_name,
        "mode": mode,
        "provider": provider.name,
        "label": provider.label,
        "bytes": nbytes,
        "floor_ms": nbytes / (copy_gbs * 1e9) * 1e3,
        "status": "ok",
        "error": None,
        "ms": None,
        "ms_p20": None,
        "ms_p80": None,
        "gbs": None,
        "pct_of_floor": None,
        "above_floor": False,
        "extra_peak_mb": None,
        "rel_err": None,
        "ratio": None,
        "ratio_min": None,
        "ratio_max": None,
        "rounds": None,
        "load": None,
    }


def _set_time(point, ms, p20, p80):
    """Time, bandwidth and % of the floor. A time below the copy-bandwidth floor means the
    working set sat in cache (small CPU shapes): that floor is no floor there, so no
    percentage is given (``above_floor``) rather than one above 100 %."""
    point.update(ms=ms, ms_p20=p20, ms_p80=p80, gbs=point["bytes"] / (ms * 1e-3) / 1e9)
    pct = 100.0 * point["floor_ms"] / ms
    point["above_floor"] = pct > 100.0
    point["pct_of_floor"] = None if point["above_floor"] else pct


def _failed(point, err):
    point["status"] = "oom" if is_oom(err) else "error"
    point["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]


def _check_value(point, provider, case, x, target, ref_value):
    if provider.focal and ref_value is not None:
        value = float(provider.build(case)(x, target).detach())
        point["rel_err"] = abs(value - ref_value) / max(abs(ref_value), 1e-30)


def measure(case, dtype_name, mode, provider, device, quick, copy_gbs, ref_value):
    """One point: time, bandwidth, floor, memory and value check of one provider."""
    point = _new_point(case, dtype_name, mode, provider, copy_gbs)
    x = target = fn = setup = None
    try:
        x, target = make_inputs(case, DTYPES[dtype_name], device)
        if mode == "fwd":
            _check_value(point, provider, case, x, target, ref_value)
        fn, setup = _loss_call(provider, case, mode, x, target)
        _set_time(point, *bench(fn, device, quick=quick, setup=setup))
        point["extra_peak_mb"] = extra_peak_mb(fn, device, setup=setup)
    except Exception as err:
        _failed(point, err)
    finally:
        del x, target, fn, setup
        free_memory(device)
    return point


def measure_interleaved(case, dtype_name, mode, providers, device, quick, copy_gbs, ref_value, rounds):
    """Every provider of one case, timed in ``rounds`` interleaved rounds (each round times
    each provider once, in turn), so that a change of machine load hits all of them alike.
    Each point's time is the median over rounds, its p20/p80 the spread between rounds, and
    its ``ratio`` the median of the per-round ratios to the gamma = 0 baseline of the same
    round (``ratio_min``/``ratio_max``: their range). The value check runs on every provider
    (its forward), whatever the mode."""
    points, calls = [], {}
    load_before = machine_load()
    x, target = make_inputs(case, DTYPES[dtype_name], device)
    for provider in providers:
        point = _new_point(case, dtype_name, mode, provider, copy_gbs)
        points.append(point)
        try:
            _check_value(point, provider, case, x, target, ref_value)
            calls[provider.name] = _loss_call(provider, case, mode, x, target)
        except Exception as err:
            _failed(point, err)
    try:
        samples = bench_interleaved(calls, device, rounds=rounds, quick=quick)
    except Exception as err:  # one provider failing mid-run: record it, keep the others
        samples = {}
        for point in points:
            if point["status"] == "ok":
                _failed(point, err)
    load = {"before": load_before, "after": machine_load()}
    baseline = samples.get(BASELINE[case.loss])
    for point in points:
        rows = samples.get(point["provider"])
        point["load"] = load
        if point["status"] != "ok" or rows is None:
            continue
        ordered = sorted(rows)
        _set_time(point, _median(ordered), _quantile(ordered, 0.2), _quantile(ordered, 0.8))
        point["rounds"] = len(rows)
        if baseline is not None:
            ratios = sorted(ms / base for ms, base in zip(rows, baseline))
            point.update(ratio=_median(ratios), ratio_min=ratios[0], ratio_max=ratios[-1])
    del x, target, calls
    free_memory(device)
    return points


def _median(ordered):
    return _quantile(ordered, 0.5)


def _quantile(ordered, q):
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _progress(index, total, case, dtype_name, mode, point):
    where = f"[{index:4d}/{total}] {case.name} {dtype_name} {mode:7s} {point['provider']:13s}"
    if point["status"] != "ok":
        return f"{where} {point['status'].upper()}: {point['error']}"
    floor = "in cache: above the copy floor" if point["above_floor"] else f"{point['pct_of_floor']:5.1f}% of floor"
    line = (
        f"{where} {point['ms']:9.3f} ms [{point['ms_p20']:.3f}, {point['ms_p80']:.3f}] {point['gbs']:8.1f} GB/s {floor}"
    )
    if point["ratio"] is not None:
        line += f"  x{point['ratio']:.2f} of baseline [{point['ratio_min']:.2f}, {point['ratio_max']:.2f}]"
    if point["extra_peak_mb"] is not None:
        line += f"  +{point['extra_peak_mb']:.0f} MiB"
    if point["rel_err"] is not None:
        line += f"  rel.err {point['rel_err']:.1e}"
    return line


def run(args):
    device = resolve_device(args.device)
    info = device_info(device)
    out = args.out or default_out(info["slug"])
    out.mkdir(parents=True, exist_ok=True)
    print(f"writing to {out}" + ("" if args.out else " (--out to choose)"), flush=True)
    if info["note"]:
        print(f"NOTE: {info['note']}", flush=True)
    # Checked before measuring, so that a missing plotting library costs no minutes of work.
    plots = not args.no_plots and importlib.util.find_spec("matplotlib") is not None
    if not args.no_plots and not plots:
        print(
            f"matplotlib is not installed: writing results.json and summary.md, no plots. {PLOT_HINT.format(out=out)}",
            flush=True,
        )

    providers, skipped = select(args.providers, device)
    for name, reason in skipped:
        print(f"{name}: skipped ({reason})", flush=True)
    if "compile" in [p.name for p in providers]:
        _allow_recompiles()

    copy_gbs = copy_bandwidth_gbs(device, quick=args.quick)
    print(f"copy bandwidth on {info['name']}: {copy_gbs:.1f} GB/s (read + write)", flush=True)

    result = {
        "schema": 1,
        "device": info,
        "versions": versions(),
        "command": " ".join(["python -m perf.sweep"] + [shlex.quote(a) for a in args.argv]),
        "argv": list(args.argv),
        "env": {k: os.environ[k] for k in ("TRITON_INTERPRET", "TRITON_FOCAL_BACKEND") if k in os.environ},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "copy_bandwidth_gbs": copy_gbs,
        "cpu_cores": os.cpu_count(),
        "load_at_start": machine_load(),
        "rounds": args.rounds,
        "timing": (
            "triton.testing.do_bench: CUDA events, L2 flushed before each call, after explicit warm-up"
            if device == "cuda"
            else "time.perf_counter wall clock around each call, after warm-up (CPU)"
        ),
        "settings": {
            "gamma": cases_mod.GAMMA,
            "det_alpha": cases_mod.DET_ALPHA,
            "ignore_index": cases_mod.IGNORE_INDEX,
            "ignored_fraction": cases_mod.IGNORED_FRACTION,
            "background_fraction": cases_mod.BACKGROUND_FRACTION,
            "softmax_reduction": "mean",
            "sigmoid_reduction": "sum",
        },
        "families": args.families,
        "dtypes": args.dtypes,
        "modes": args.modes,
        "providers": {p.name: p.label for p in providers},
        "skipped": [{"provider": name, "reason": reason} for name, reason in skipped],
        "points": [],
    }
    json_path = out / "results.json"

    work = [
        (case, dtype_name)
        for family in args.families
        for case in family_cases(family, gpu=device == "cuda", quick=args.quick)
        for dtype_name in args.dtypes
    ]
    total = sum(len(args.modes) * sum(p.applies(case) for p in providers) for case, _ in work)
    index = 0
    for case, dtype_name in work:
        active = [p for p in providers if p.applies(case)]
        if not active:
            continue
        checks = ("fwd" in args.modes or args.rounds) and any(p.focal for p in active)
        ref_value = reference_value(case, DTYPES[dtype_name], device) if checks else None
        for mode in args.modes:
            if args.rounds:
                points = measure_interleaved(
                    case, dtype_name, mode, active, device, args.quick, copy_gbs, ref_value, args.rounds
                )
            else:
                points = (measure(case, dtype_name, mode, p, device, args.quick, copy_gbs, ref_value) for p in active)
            for point in points:
                index += 1
                result["points"].append(point)
                print(_progress(index, total, case, dtype_name, mode, point), flush=True)
        # Written after every case, so a run cut short still leaves its data.
        json_path.write_text(json.dumps(result, indent=1))
    result["load_at_end"] = machine_load()
    json_path.write_text(json.dumps(result, indent=1))
    print(f"wrote {json_path}", flush=True)

    from . import summary

    if plots:
        from . import plot

        for path in plot.plot_all(result, out):
            print(f"wrote {path}", flush=True)
    print(f"wrote {summary.write_summary(result, out)}", flush=True)
    if not args.no_plots and not plots:
        print(f"no plots: {PLOT_HINT.format(out=out)}", flush=True)
    if "table" in args.families:
        from .summary import headline_table

        print(headline_table(result))
    if "cpu" in args.families:
        from .summary import cpu_table

        print("\n".join(cpu_table(result)))
    return result


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.argv = argv
    run(args)


if __name__ == "__main__":
    main()
