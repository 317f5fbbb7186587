"""Each launch's measured device time beside the model's prediction for it.

``python -m perf.model --compare DIR`` reads ``DIR/measured.json`` (``--measure``) and
``perf/results/model/model.json`` and writes ``DIR/model_vs_measured.md``: per case and kernel,
the device time measured (the profiler's, summed over the kernel's launches in one step), the
model's calibrated time for the same launches, their ratio, and the time the launches' DRAM
bytes (as the model counts them) take at the bandwidth measured in the same run, so that a
ratio can be read as "moves its bytes at X% of the copy rate" as well as "the model is off by Y".

The model is of an H100 (3.0 TB/s); on another GPU its times are not that GPU's, and the ratio
mixes the model's error with the difference of the devices: a purely bandwidth-bound launch
would measure about 3.0 / (the measured bandwidth) of its modeled time on a faster memory.
"""

import collections
import json
import os

from .measure import MODEL_JSON


def _by_kernel(launches):
    totals = collections.defaultdict(lambda: [0.0, 0.0, 0])  # ms, bytes, launches
    for launch in launches:
        entry = totals[launch["kernel"]]
        entry[0] += launch["calibrated_ms"]
        entry[1] += launch["bytes"]
        entry[2] += 1
    return totals


def compare(measured, model_rows):
    model = {row["case"]: row for row in model_rows}
    gbs = measured["copy_bandwidth_gbs"]
    rows = []
    for case in measured["cases"]:
        modeled = model.get(case["case"])
        launches = case.get("launches") or {}
        if modeled is None or "error" in launches:
            continue
        predicted = _by_kernel(modeled["launches"])
        for name, timing in launches.items():
            if name not in predicted:  # torch's own kernels (autograd's ones_like, a multiply)
                continue
            model_ms, nbytes, count = predicted[name]
            measured_ms = timing["us_per_step"] / 1e3
            bytes_ms = nbytes / (gbs * 1e9) * 1e3
            rows.append(
                {
                    "case": case["case"],
                    "kernel": name,
                    "launches": count,
                    "measured_ms": measured_ms,
                    "model_ms": model_ms,
                    "measured_over_model": measured_ms / model_ms,
                    "bytes_ms": bytes_ms,
                    "pct_of_copy_rate": 100 * bytes_ms / measured_ms,
                    "model_bound": ",".join(sorted({l["bound"] for l in modeled["launches"] if l["kernel"] == name})),
                }
            )
    return rows


def markdown(rows, measured, command):
    info = measured["device"]
    lines = [
        f"# Measured launches on {info['name']} beside the model",
        "",
        f"`{command}`: `measured.json` of this folder (torch {measured['versions']['torch']}, triton "
        f"{measured['versions']['triton']}, copy bandwidth {measured['copy_bandwidth_gbs']:.0f} GB/s) against "
        "`perf/results/model/model.json` (an H100 at 3.0 TB/s, calibrated). bytes ms: the launches' DRAM bytes as "
        "the model counts them, at the measured bandwidth; % of copy rate: that over the measured time.",
        "",
        "| case | kernel | launches | measured ms | model ms (H100) | measured / model | bytes ms | % of copy rate "
        "| model's bound |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['kernel']} | {r['launches']} | {r['measured_ms']:.4f} | {r['model_ms']:.4f} | "
            f"{r['measured_over_model']:.2f} | {r['bytes_ms']:.4f} | {r['pct_of_copy_rate']:.0f}% | "
            f"{r['model_bound']} |"
        )
    return "\n".join(lines) + "\n"


def write(folder, command):
    with open(os.path.join(folder, "measured.json")) as f:
        measured = json.load(f)
    with open(MODEL_JSON) as f:
        model_rows = json.load(f)
    rows = compare(measured, model_rows)
    text = markdown(rows, measured, command)
    with open(os.path.join(folder, "model_vs_measured.md"), "w") as f:
        f.write(text)
    return text
