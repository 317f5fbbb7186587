"""Write points.csv from Liger-Kernel's ``benchmark/data/all_benchmark_data.csv``.

    python -m perf.calibration.extract --csv PATH --commit SHA > perf/calibration/points.csv

Keeps the rows measured on an "NVIDIA H100 80GB HBM3" by the Liger provider, metric
``speed`` (p50/p20/p80), for the families below, and turns each into one point: the runner
that re-creates the benchmark's call, the sizes it needs, the dtype the benchmark script really
used, and the phase (Liger's ``full`` is ``fwd+bwd``).  Where the same point was measured more
than once, the latest timestamp wins.  ``liger_version`` is the release holding the kernel code
that was measured (see MEASURED_RELEASE), which is not always the row's own label.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys

DEVICE = "NVIDIA H100 80GB HBM3"
SOURCE = "linkedin/Liger-Kernel benchmark/data/all_benchmark_data.csv"
COLUMNS = [
    "family",
    "runner",
    "shape",
    "dtype",
    "phase",
    "measured_ms",
    "measured_p20_ms",
    "measured_p80_ms",
    "device",
    "source",
    "source_commit",
    "liger_version",
    "fit",
]
# Phases whose measured time is not the kernels' (the benchmark harness or the host dominates):
# the model has no host, so these are reported beside the fit but not fitted ("fit" says why).
NOT_FITTED = {
    ("megatron_cross_entropy", "backward"): "times the same step as fwd+bwd (the forward included)",
    ("megatron_rms_norm", "backward"): "re-runs the forward; flat at 0.30 ms from H=1K to 8K: host-bound",
    ("megatron_rms_norm", "fwd+bwd"): "host-bound like its backward",
    ("layer_norm", "fwd+bwd"): "about 0.27 ms for every N up to 4K: host-bound",
    ("relu_squared", "fwd+bwd"): "0.075-0.12 ms where forward and backward add up to 0.015-0.07 ms: host-bound",
}
# Liger's benchmark rows are labelled with the version string of the source tree they were
# measured from, the pull request that added the kernel or the data (the previous release's
# number).  points.csv's liger_version is the release that ships that same kernel code, the
# one to install and compile (checked file by file against the tree at that commit):
#   layer_norm rows "0.6.0" were measured at 6a2c491 (a rewritten kernel); PyPI 0.6.0
#     has the old one, 0.6.1 has it (plus an XPU-only kernel_args change).
#   relu_squared rows "0.7.0" were measured at 39a1f45 (the kernel's first commit);
#     0.7.0 has no relu_squared, 0.8.0's ops/ and transformers/relu_squared.py are identical.
#   megatron_* rows "0.8.0" were measured at 27fe47e and 80f19ad; 0.8.0 has no
#     liger_kernel.megatron, 0.8.1's megatron/cross_entropy.py, ops/vocab_parallel_cross_entropy.py
#     and megatron/rms_norm.py are identical (ops/rms_norm.py differs only in how DTensor is imported).
MEASURED_RELEASE = {
    "liger_layer_norm": {"0.6.0": "0.6.1"},
    "liger_relu_squared": {"0.7.0": "0.8.0"},
    "liger_megatron_rms_norm": {"0.8.0": "0.8.1"},
    "liger_megatron_cross_entropy": {"0.8.0": "0.8.1"},
}

PHASES = {"forward": "forward", "backward": "backward", "full": "fwd+bwd"}
DTYPES = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}


def _config_dtype(cfg):
    return DTYPES[cfg["dtype"]]


def _megatron_cross_entropy(x, cfg):
    # benchmark_megatron_cross_entropy.py: logits (S, B, V) bf16 (hard-coded in _make_inputs).
    if cfg.get("TP", 1) != 1:
        return None  # vocab-parallel over several ranks: not re-created on one device
    return {"S": cfg["S"], "B": cfg["B"], "V": x}, "bf16"


def _megatron_rms_norm(x, cfg):
    # benchmark_megatron_rms_norm.py: x (S, B, H) bf16, layer cast to bf16 (hard-coded).
    return {"S": cfg["S"], "B": cfg["B"], "H": x}, "bf16"


def _rows_by_n(x, cfg):
    # benchmark_layer_norm.py / benchmark_relu_squared.py: x (M, N) of the config's dtype.
    return {"M": cfg["M"], "N": x}, _config_dtype(cfg)


FAMILIES = {
    # family: (runner, x_name, shape/dtype builder)
    "megatron_cross_entropy": ("liger_megatron_cross_entropy", "V", _megatron_cross_entropy),
    "layer_norm": ("liger_layer_norm", "N", _rows_by_n),
    "relu_squared": ("liger_relu_squared", "N", _rows_by_n),
    "megatron_rms_norm": ("liger_megatron_rms_norm", "H", _megatron_rms_norm),
}


def _int(value: str) -> int:
    f = float(value)
    if f != int(f):
        raise ValueError(f"non-integer size {value!r}")
    return int(f)


def extract(rows, commit: str):
    """Points (dicts with COLUMNS) from Liger's benchmark rows (dicts as csv.DictReader gives)."""
    best = {}
    for r in rows:
        if (
            r["gpu_name"] != DEVICE
            or r["kernel_provider"] != "liger"
            or r["metric_name"] != "speed"
            or r["kernel_name"] not in FAMILIES
            or r["kernel_operation_mode"] not in PHASES
        ):
            continue
        runner, x_name, build = FAMILIES[r["kernel_name"]]
        if r["x_name"] != x_name:
            print(f"skipping {r['kernel_name']} row with x_name {r['x_name']!r}", file=sys.stderr)
            continue
        if r["metric_unit"] != "ms":
            raise ValueError(f"unexpected unit {r['metric_unit']!r} in a speed row")
        built = build(_int(r["x_value"]), json.loads(r["extra_benchmark_config_str"]))
        if built is None:
            continue
        shape, dtype = built
        point = {
            "family": r["kernel_name"],
            "runner": runner,
            "shape": json.dumps(shape),
            "dtype": dtype,
            "phase": PHASES[r["kernel_operation_mode"]],
            "measured_ms": r["y_value_50"],
            "measured_p20_ms": r["y_value_20"],
            "measured_p80_ms": r["y_value_80"],
            "device": DEVICE,
            "source": SOURCE,
            "source_commit": commit,
            "liger_version": MEASURED_RELEASE.get(runner, {}).get(r["liger_version"], r["liger_version"]),
            "fit": "no: " + NOT_FITTED[(r["kernel_name"], PHASES[r["kernel_operation_mode"]])]
            if (r["kernel_name"], PHASES[r["kernel_operation_mode"]]) in NOT_FITTED
            else "yes",
        }
        key = (point["family"], point["shape"], point["dtype"], point["phase"])
        if key not in best or r["timestamp"] >= best[key][0]:
            best[key] = (r["timestamp"], point)
    order = {f: i for i, f in enumerate(FAMILIES)}
    phase_order = {p: i for i, p in enumerate(PHASES.values())}
    points = [p for _, p in best.values()]
    points.sort(key=lambda p: (order[p["family"]], phase_order[p["phase"]], sorted(json.loads(p["shape"]).items())))
    return points


def write(points, out) -> None:
    w = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(points)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv", required=True, help="Liger's benchmark/data/all_benchmark_data.csv")
    ap.add_argument("--commit", required=True, help="the Liger-Kernel commit that file was read at")
    args = ap.parse_args(argv)
    with open(args.csv, newline="") as f:
        points = extract(csv.DictReader(f), args.commit)
    write(points, sys.stdout)


if __name__ == "__main__":
    main()
