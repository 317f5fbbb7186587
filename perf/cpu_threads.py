"""The CPU fallback's threading, idle and on a busy machine: is ``backend="auto"`` ever slower
than the eager reference, or far from the best focal loss a user could write instead?

    python -m perf.cpu_threads                      # idle, then with a second busy process
    python -m perf.cpu_threads --quick              # fewer rounds, the two small shapes only
    python -m perf.cpu_threads --out perf/results/cpu/threads

A parallel region costs microseconds on an idle machine and a scheduler time slice on a busy
one (a thread waits at each barrier for a sibling that is not running), so the fallback runs
each call on as many threads as its size gives enough work each (``triton_focal.compiled``).
This measures fp32 forward+backward of two small segmentation losses and the CPU table's
shapes (``perf.cases.cpu_cases``) for:

- ``auto``: the fallback as it runs (threads chosen per call, the eager reference below
  ``compiled.EAGER_BELOW`` logits);
- ``compile, all threads``: the same compiled functions on every thread whatever the size
  (what the fallback did before it chose per call);
- the eager reference, and the formulas users write (the blog formula, torchvision's),
  eager and compiled with ``torch.compile``.

Each condition times every implementation in interleaved rounds (one call each per round,
in turn); a point is the median over rounds and its 20-80 % spread. "Busy" starts one more
Python process spinning on a core for the whole condition, as a second job on a laptop or
a CI runner would. Writes ``results.json`` and ``summary.md`` to ``--out``.
"""

import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import cases as cases_mod
from .providers import PROVIDERS
from .sweep import default_out
from .timing import machine_load, versions

SMALL = (
    cases_mod.Case("seg", "small", "H*W", 32 * 32, (1, 19, 32, 32), "index", "softmax"),
    cases_mod.Case("seg", "small", "H*W", 64 * 64, (2, 19, 64, 64), "index", "softmax"),
)
# The peers: focal losses a user could write instead (the gamma = 0 baselines are not).
PEERS = {
    "softmax": ("reference", "blog", "blog_compiled"),
    "sigmoid": ("reference", "tv_formula", "tv_formula_compiled"),
}


@contextlib.contextmanager
def _all_threads():
    """The fallback as it was before it chose per call: every call compiled (no eager
    reference for tiny inputs) and on every thread (no minimum of work per thread)."""
    from triton_focal import compiled

    saved = compiled._MIN_ELEMENTS_PER_THREAD, compiled.EAGER_BELOW
    compiled._MIN_ELEMENTS_PER_THREAD, compiled.EAGER_BELOW = 1, 0
    try:
        yield
    finally:
        compiled._MIN_ELEMENTS_PER_THREAD, compiled.EAGER_BELOW = saved


def _implementations(case):
    """name -> ``fn(x, target) -> loss``."""
    auto = PROVIDERS["compile"].build(case)

    def all_threads(x, t):
        with _all_threads():
            return auto(x, t)

    impls = {"auto": auto, "compile, all threads": all_threads}
    for name in PEERS[case.loss]:
        impls[name] = PROVIDERS[name].build(case)
    return impls


def _fwd_bwd(fn, x, t):
    def step():
        (grad,) = torch.autograd.grad(fn(x, t), x)
        return grad

    return step


def _quantile(ordered, q):
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def measure_case(case, rounds, log):
    x, t = cases_mod.make_inputs(case, torch.float32, "cpu")
    steps = {name: _fwd_bwd(fn, x, t) for name, fn in _implementations(case).items()}
    for name, step in steps.items():  # warm-up: compilation happens here
        for _ in range(3):
            step()
    samples = {name: [] for name in steps}
    names = list(steps)
    deadline = time.perf_counter() + 60.0  # a slow case on a busy machine: fewer rounds, not minutes
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            steps[name]()
            samples[name].append((time.perf_counter() - start) * 1e3)
        if r >= 4 and time.perf_counter() > deadline:
            break
    points = {}
    for name, times in samples.items():
        ordered = sorted(times)
        points[name] = {
            "ms": _quantile(ordered, 0.5),
            "p20": _quantile(ordered, 0.2),
            "p80": _quantile(ordered, 0.8),
            "rounds": len(times),
        }
    best_peer = min(points[name]["ms"] for name in PEERS[case.loss])
    auto = points["auto"]["ms"]
    verdict = {
        "auto_vs_reference": auto / points["reference"]["ms"],
        "auto_vs_best_peer": auto / best_peer,
    }
    log(
        f"  {case.name:60s} auto {auto:8.2f} ms  all threads {points['compile, all threads']['ms']:8.2f} ms  "
        f"reference {points['reference']['ms']:8.2f} ms  auto/best peer {verdict['auto_vs_best_peer']:.2f}"
    )
    return {"case": case.name, "shape": list(case.shape), "loss": case.loss, "points": points, **verdict}


@contextlib.contextmanager
def _busy(on):
    """One more process spinning on a core while the block runs (``on``), or nothing."""
    if not on:
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        yield
    finally:
        spinner.terminate()
        spinner.wait()


def summary(result):
    lines = [
        "# The CPU fallback's threading, idle and busy",
        "",
        f"`{result['command']}` on {result['cpu']} ({result['cores']} cores, {result['threads']} torch threads), "
        f"torch {result['versions'].get('torch')}, {result['date']}. fp32 forward+backward, ms: median over "
        "interleaved rounds [20-80 % spread]. `auto`: the fallback, threads chosen per call; "
        "`compile, all threads`: every call compiled and on every thread (before). Busy: one more process "
        "spinning on a core. `auto / best`: against the fastest focal loss of the other columns "
        "but `compile, all threads`.",
        "",
    ]
    for condition in result["conditions"]:
        load = condition["load_before"], condition["load_after"]
        loads = " to ".join(f"{l['1min']:.2f}" for l in load if l)
        lines += [f"## {condition['name']} (load average {loads} on {result['cores']} cores)", ""]
        if any(l and l["1min"] > result["cores"] for l in load):
            lines += [f"**The load exceeded the {result['cores']} cores**: other jobs shared the machine.", ""]
        names = ["auto", "compile, all threads", "reference", "blog / tv formula", "blog / tv formula, compiled"]
        lines += [
            "| case | " + " | ".join(names) + " | auto / reference | auto / best |",
            "|---|" + "---:|" * (len(names) + 2),
        ]
        for row in condition["cases"]:
            pts = row["points"]
            peer_names = PEERS[row["loss"]]
            cells = [
                pts["auto"],
                pts["compile, all threads"],
                pts[peer_names[0]],
                pts[peer_names[1]],
                pts[peer_names[2]],
            ]
            text = [f"{p['ms']:.2f} [{p['p20']:.2f}-{p['p80']:.2f}]" for p in cells]
            lines.append(
                f"| {row['case']} | "
                + " | ".join(text)
                + f" | {row['auto_vs_reference']:.2f} | {row['auto_vs_best_peer']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="python -m perf.cpu_threads",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="the two small shapes, fewer rounds")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per case and condition")
    parser.add_argument("--conditions", default="idle,busy", help="comma list of idle, busy")
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: the sweep's, under cpu_threads/)"
    )
    args = parser.parse_args(argv)
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    if not conditions or set(conditions) - {"idle", "busy"}:
        raise SystemExit(f"--conditions: expected a comma list of idle, busy; got {args.conditions!r}")
    if args.rounds < 5:
        raise SystemExit("--rounds must be at least 5 (a median and a spread need a few)")
    import warnings

    warnings.filterwarnings("ignore", message="triton_focal: compiling")  # the notices, once per configuration
    out = args.out or default_out("cpu") / "cpu_threads"
    out.mkdir(parents=True, exist_ok=True)
    cases = list(SMALL) + ([] if args.quick else [c for c in cases_mod.cpu_cases()])
    rounds = 7 if args.quick else args.rounds
    from .timing import _cpu_name

    result = {
        "command": " ".join(["python -m perf.cpu_threads"] + argv),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "versions": versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "conditions": [],
    }
    for condition in conditions:
        print(f"{condition}:", flush=True)
        with _busy(condition == "busy"):
            entry = {"name": condition, "load_before": machine_load(), "cases": []}
            for case in cases:
                entry["cases"].append(measure_case(case, rounds, lambda line: print(line, flush=True)))
            entry["load_after"] = machine_load()
        result["conditions"].append(entry)
        (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "summary.md").write_text(summary(result) + "\n")
    print(f"wrote {out / 'results.json'} and {out / 'summary.md'}", flush=True)
    return result


if __name__ == "__main__":
    main()
