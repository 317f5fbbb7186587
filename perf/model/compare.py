"""Each launch's measured device time beside the model's prediction for it, on the measured GPU.

``python -m perf.model --compare DIR`` reads ``DIR/measured.json`` (``--measure``) and writes
``DIR/model_vs_measured.md``: per case and kernel, the device time measured (the profiler's,
summed over the kernel's launches in one step) and the calibrated model of the same launches on
the measured device (``device.model_for``; the H100's where the GPU has none), taken from the
model committed at the measured commit (``perf/calibration/own.py``: exactly the launches the
calibration fits), with
their ratio; and the time the launches' DRAM bytes (as the model counts them) take at the
bandwidth measured in the same run, so that a ratio can be read as "moves its bytes at X% of
the copy rate" as well as "the model is off by Y". A device time has no launch gap, so the
modeled time here has no per-launch cost, as in the fit.
"""

import json
import os


def _modeled_ms(launches, device):
    """The calibrated model's device time of these committed launches on ``device``."""
    from .retime import seconds

    return seconds(launches, {}, device, timing="device") * 1e3


def compare(measured, committed_model=None):
    """Rows of the table; ``committed_model(commit)`` gives ``{case: model.json row}`` (by
    default the file as committed at ``commit``)."""
    from perf.calibration import own

    from .device import model_for

    device = model_for(measured["device"]["name"])
    gbs = measured["copy_bandwidth_gbs"]
    rows = []
    for case, _, name, timing, mine in own.measured_launches(measured, committed_model):
        model_ms, nbytes = _modeled_ms(mine, device), sum(launch["bytes"] for launch in mine)
        measured_ms = timing["us_per_step"] / 1e3
        bytes_ms = nbytes / (gbs * 1e9) * 1e3
        rows.append(
            {
                "case": case["case"],
                "kernel": name,
                "launches": len(mine),
                "measured_ms": measured_ms,
                "model_ms": model_ms,
                "measured_over_model": measured_ms / model_ms,
                "bytes_ms": bytes_ms,
                "pct_of_copy_rate": 100 * bytes_ms / measured_ms,
                "model_bound": ",".join(sorted({launch["bound"] for launch in mine})),
            }
        )
    return rows


def markdown(rows, measured, command):
    from .device import model_for

    info = measured["device"]
    device = model_for(info["name"])
    commits = sorted({case["model_commit"] for case in measured["cases"] if "model_commit" in case})
    lines = [
        f"# Measured launches on {info['name']} beside the model",
        "",
        f"`{command}`: `measured.json` of this folder (torch {measured['versions']['torch']}, triton "
        f"{measured['versions']['triton']}, copy bandwidth {measured['copy_bandwidth_gbs']:.0f} GB/s) against the "
        f"launches of `perf/results/model/model.json` at the measured commit ({', '.join(commits)}), modeled on "
        f"the {device.name} at {device.copy_bandwidth / 1e12:.2f} TB/s with the calibrated constants "
        f"({device.launch_s * 1e6:.2f} us a launch, not counted in a device time; "
        f"{device.round_latency_s * 1e9:.0f} ns a dependent round; issue factor {device.issue_factor:.2f}). "
        "These launches are calibration points, so the ratios are the fit's residuals, not a held-out test. "
        "bytes ms: the launches' DRAM bytes as the model counts them, at the measured bandwidth; "
        "% of copy rate: that over the measured time.",
        "",
        "| case | kernel | launches | measured ms | model ms | measured / model | bytes ms | % of copy rate "
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
    rows = compare(measured)
    text = markdown(rows, measured, command)
    with open(os.path.join(folder, "model_vs_measured.md"), "w") as f:
        f.write(text)
    return text
