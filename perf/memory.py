"""Peak memory of a language-model head's loss, forward + backward: fused against materialized.

``python -m perf.memory`` runs every method in its own process (so one method's cached or
fragmented memory cannot flatter the next) on ``hidden (T, H)``, ``lm_head.weight (V, H)``
and ``T`` targets, and reports the peak memory over the inputs during one forward +
backward (the gradients of ``hidden`` and the weight included) and the median time of a
few more steps. Defaults: ``T = 4096, H = 1024, V = 32000``, float32, gamma = 1.

- CUDA: ``torch.cuda.max_memory_allocated`` over what was allocated before the step.
- CPU: the process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``
  after the inputs exist) minus the resident set at that moment. glibc's malloc is told to
  return every block above 128 KiB to the system (``MALLOC_MMAP_THRESHOLD_``), so the resident
  set follows the live tensors. Linux only.

Methods: ``materialized_ce`` (``F.cross_entropy`` of ``hidden @ weight.T``, the usual
training step), ``materialized_focal_<backend>`` (``focal_loss`` of the same logits) and
``fused_<backend>`` (``fused_linear_focal_loss``). Results go to
``perf/results/<device>/linear_head_memory.{json,md}``.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

MIB = 2**20
RESULTS = Path(__file__).resolve().parent / "results"


def _resident_bytes(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_resident():
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current resident set


def _step(method, hidden, weight, target, gamma):
    import triton_focal

    kind, _, backend = method.partition("_")
    if method == "materialized_ce":
        loss = F.cross_entropy(hidden @ weight.t(), target)
    elif kind == "materialized":
        backend = backend.removeprefix("focal_")
        loss = triton_focal.focal_loss(hidden @ weight.t(), target, gamma=gamma, backend=backend)
    elif kind == "fused":
        loss = triton_focal.fused_linear_focal_loss(hidden, weight, target, gamma=gamma, backend=backend)
    else:
        raise ValueError(f"unknown method {method!r}")
    loss.backward()
    return loss


def measure_one(method, tokens, hidden_size, vocab, dtype, device, gamma, repeats):
    """Peak bytes over the inputs and the median step time of ``method``, in this process."""
    generator = torch.Generator().manual_seed(0)
    hidden = (torch.randn(tokens, hidden_size, generator=generator) / hidden_size**0.5).to(device, dtype)
    weight = torch.randn(vocab, hidden_size, generator=generator).to(device, dtype).requires_grad_(True)
    hidden.requires_grad_(True)
    target = torch.randint(0, vocab, (tokens,), generator=generator).to(device)
    # One small step first: library start-up (thread pools, GEMM buffers, torch.compile's
    # compilation) is not the step's memory.
    small = min(tokens, 64)
    _step(
        method,
        hidden[:small].detach().requires_grad_(True),
        weight[:, :].detach().requires_grad_(True),
        target[:small],
        gamma,
    )

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        _step(method, hidden, weight, target, gamma)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        before = _resident_bytes("VmRSS")
        _reset_peak_resident()
        _step(method, hidden, weight, target, gamma)
        peak = _resident_bytes("VmHWM") - before

    times = []
    for _ in range(repeats):
        hidden.grad = weight.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        _step(method, hidden, weight, target, gamma)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"peak_over_inputs_mib": peak / MIB, "median_s": statistics.median(times) if times else None}


def methods_for(device):
    import triton_focal

    backends = triton_focal.available_backends(device)
    if device.type == "cpu":  # the interpreter is a correctness tool, far too slow for this size
        backends = [name for name in backends if name != "triton"]
    return ["materialized_ce"] + [f"materialized_focal_{b}" for b in backends] + [f"fused_{b}" for b in backends]


def _device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).lower().replace(" ", "-")
    return "cpu"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--gamma", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after the measured one")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--methods", nargs="*", help="default: every method that runs here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: one method, JSON on stdout
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)

    if args.one:
        result = measure_one(args.one, args.tokens, args.hidden, args.vocab, dtype, device, args.gamma, args.repeats)
        print(json.dumps(result))
        return result

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    rows = []
    for method in args.methods or methods_for(device):
        command = [
            sys.executable,
            "-m",
            "perf.memory",
            "--one",
            method,
            "--tokens",
            str(args.tokens),
            "--hidden",
            str(args.hidden),
            "--vocab",
            str(args.vocab),
            "--dtype",
            args.dtype,
            "--gamma",
            str(args.gamma),
            "--repeats",
            str(args.repeats),
            "--device",
            args.device,
        ]
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent
        )
        if done.returncode != 0:
            print(f"{method}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        result = {"method": method, **json.loads(done.stdout.strip().splitlines()[-1])}
        rows.append(result)
        print(
            f"{method:32s} {result['peak_over_inputs_mib']:8.0f} MiB  {result['median_s'] or float('nan'):7.3f} s",
            flush=True,
        )

    setup = {
        "tokens": args.tokens,
        "hidden": args.hidden,
        "vocab": args.vocab,
        "dtype": args.dtype,
        "gamma": args.gamma,
        "device": _device_name(device),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    if not args.no_save and rows:
        out = RESULTS / _device_name(device)
        out.mkdir(parents=True, exist_ok=True)
        (out / "linear_head_memory.json").write_text(json.dumps({"setup": setup, "results": rows}, indent=2) + "\n")
        (out / "linear_head_memory.md").write_text(summary_table(setup, rows))
    return rows


def summary_table(setup, rows):
    """Markdown: each method's peak over the inputs, as MiB and as a share of the materialized step's."""
    baseline = next((row["peak_over_inputs_mib"] for row in rows if row["method"] == "materialized_ce"), None)
    lines = [
        f"Linear head + loss, forward + backward: hidden ({setup['tokens']}, {setup['hidden']}) {setup['dtype']}, "
        f"V = {setup['vocab']}, gamma = {setup['gamma']}, on {setup['device']} ({setup['cpus']} CPUs, torch "
        f"{setup['torch']}). Generated by `python -m perf.memory`.",
        "",
        "| method | peak over inputs (MiB) | vs materialized CE | median step (s) |",
        "|---|---|---|---|",
    ]
    for row in rows:
        share = f"{row['peak_over_inputs_mib'] / baseline:.0%}" if baseline else "-"
        seconds = f"{row['median_s']:.3f}" if row["median_s"] is not None else "-"
        lines.append(f"| `{row['method']}` | {row['peak_over_inputs_mib']:.0f} | {share} | {seconds} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
