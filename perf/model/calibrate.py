"""``python -m perf.model --calibrate``: the model against measured times, and its fitted constants.

Each row of the points CSV (``perf/calibration/points.csv``; the schema is in
``perf/calibration/README.md``) is one measured time. Liger-Kernel's H100 points name a runner
that re-creates the measured call (its kernels, shape, dtype and timed phase): the model counts
and compiles that call as it does the headline cases, one subprocess per Liger-Kernel version
(versions cannot share a process), and keeps per launch what the fit needs. Our own kernels'
points (``perf/calibration/own.py``) take their launches from the model committed at the
measured commit, re-timed on the measured device. The fit is a grid search of
``(launch_s, round_latency_s, issue_factor)`` minimising the squared log error over all points;
leave-one-family-out fits give each family's held-out error and the constants' range.
"""

import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time

from .device import DEVICE

OWN_RUNNER = "triton_focal_case"  # perf/calibration/own.py: our kernels' measured points

DEFAULT_POINTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "calibration", "points.csv")
GRID = {
    "launch_s": [i * 0.25e-6 for i in range(0, 61)],  # 0-15 us
    "round_latency_s": [i * 20e-9 for i in range(0, 76)],  # 0-1.5 us
    "issue_factor": [i * 0.05 for i in range(0, 81)],  # 0-4
}


def read_points(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["shape"] = json.loads(row["shape"])
        for key in ("measured_ms", "measured_p20_ms", "measured_p80_ms"):
            row[key] = float(row[key]) if row.get(key) not in (None, "") else None
    return rows


# --- in the counting subprocess ---------------------------------------------------------


def _launch_features(launch, device):
    """What the fit needs of one launch: the terms of the model that do not depend on the fit."""
    clock, schedulers = device.clock_hz, device.warp_instructions_per_sm_per_clock
    issue, mufu, transfer, _ = launch.times(device)
    per_program_instructions = launch.warp_instructions / launch.programs
    per_program_bytes = launch.bytes(device) / launch.programs
    return {
        "kernel": launch.big.qualname,
        "grid": list(launch.big.grid),
        "num_warps": launch.warps,
        "issue_s": issue,
        "mufu_s": mufu,
        "bytes_s": transfer,
        "waves": launch.waves,
        "rounds": launch.rounds_per_program,
        "instructions_s": launch.resident_per_sm * per_program_instructions / (schedulers * clock),
        "transfer_s": launch.resident_per_sm * per_program_bytes * launch.active_sms / device.copy_bandwidth,
        "registers": launch.code["registers"],
        "spills": launch.code["local_bytes"],
    }


def count_points(rows, cache_dir, log):
    """Count and compile each row's workload (this process has the row's Liger version)."""
    from perf.calibration import runners

    from .capture import count_workload
    from .cost import LaunchCounts, check_same_path
    from .machine_code import compile_launches, spec_key

    counted_rows = []
    for row in rows:
        t0 = time.time()
        version = row["liger_version"]

        def make(headline, row=row, version=version):
            shape = row["shape"] if headline else runners.scaled_down(row["runner"], row["shape"], version)
            return runners.workload(row["runner"], shape, row["dtype"], row["phase"], headline, version)

        counted = count_workload(make)
        check_same_path(f"{row['runner']} {row['shape']}", counted)
        counted_rows.append((row, counted))
        log(f"  counted {row['runner']} {row['phase']} {row['shape']} ({time.time() - t0:.1f} s)")
    from perf.calibration.liger import liger_path

    paths = sorted({liger_path(row["liger_version"]) for row in rows})
    codes = compile_launches([launch for _, c in counted_rows for launch in c.headline], cache_dir, extra_paths=paths)
    out = []
    for row, counted in counted_rows:
        scale = counted.elements / counted.small_elements
        launches = [
            LaunchCounts(big, small, codes[spec_key(big)], scale) for big, small in zip(counted.headline, counted.small)
        ]
        out.append(
            {
                "row": row,
                "launches": [_launch_features(launch, DEVICE) for launch in launches],
                "torch_ops": [
                    [name, nbytes * scale / DEVICE.copy_bandwidth, calls]
                    for name, (nbytes, calls) in counted.torch_ops.items()
                ],
            }
        )
    return out


def _count_worker(spec_path, out_path, cache_dir):
    """Entry of the counting subprocess: ``perf.model --count-points SPEC OUT CACHE``."""
    with open(spec_path) as f:
        rows = json.load(f)
    features = count_points(rows, cache_dir, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    with open(out_path, "w") as f:
        json.dump(features, f)


def count_all(rows, cache_dir, log=print, counted=None):
    """The features of every row: our own kernels' from the committed model of their commit,
    the others counted, one subprocess per Liger version. ``counted``: features of an earlier
    run (``calibration.json``) to reuse for the rows they match instead of counting again."""
    from perf.calibration import own
    from perf.calibration.liger import liger_path

    def key(row):
        return (row["runner"], json.dumps(row["shape"], sort_keys=True), row["dtype"], row["phase"], row.get("device"))

    reuse = {key(f["row"]): f for f in counted or []}
    features, by_version = [], {}
    for row in rows:
        if own.is_own(row):
            features.append(own.features(row))
        elif key(row) in reuse:
            features.append(dict(reuse[key(row)], row=row))
        else:
            by_version.setdefault(row["liger_version"], []).append(row)
    for version, group in sorted(by_version.items()):
        path = liger_path(version)
        with tempfile.TemporaryDirectory() as tmp:
            spec, out = os.path.join(tmp, "rows.json"), os.path.join(tmp, "features.json")
            with open(spec, "w") as f:
                json.dump(group, f)
            env = dict(os.environ, TRITON_INTERPRET="1")
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [path, env.get("PYTHONPATH")]))
            log(f"perf.model: counting {len(group)} points with liger-kernel {version}")
            done = subprocess.run(
                [sys.executable, "-m", "perf.model", "--count-points", spec, out, cache_dir],
                env=env,
                cwd=_repo(),
                stderr=subprocess.PIPE,
                text=True,
            )
            if done.returncode != 0:
                raise RuntimeError(f"counting the liger-kernel {version} points failed:\n{done.stderr[-4000:]}")
            for line in done.stderr.splitlines():
                if line.startswith("  counted"):
                    log(line)
            with open(out) as f:
                features.extend(json.load(f))
    return features


def _repo():
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --- the fit -----------------------------------------------------------------------------


def predict(feature, launch_s, round_latency_s, issue_factor):
    """Modeled seconds of one point at these constants (the formula of ``perf/model/cost.py``);
    the constants may be numpy arrays (the fit's grid), and the result broadcasts with them.
    With numbers it needs no numpy (the sweep's table re-times cases on any install)."""
    if all(isinstance(c, (int, float)) for c in (launch_s, round_latency_s, issue_factor)):
        maximum = max
    else:
        import numpy as np

        maximum = np.maximum

    # A device time (the profiler's, our own points) holds no launch gap; a wall time does.
    per_launch = launch_s if feature.get("timing", "wall") == "wall" else 0.0
    total = 0.0
    for launch in feature["launches"]:
        serial = launch["waves"] * (
            launch["rounds"] * round_latency_s + issue_factor * launch["instructions_s"] + launch["transfer_s"]
        )
        total = total + per_launch + maximum(max(launch["issue_s"], launch["mufu_s"], launch["bytes_s"]), serial)
    return total + sum(calls * launch_s + seconds for _, seconds, calls in feature["torch_ops"])


def uncalibrated(feature):
    """The model before calibration: max(issue, MUFU, bytes) per launch, torch ops' bytes only."""
    return sum(max(launch["issue_s"], launch["mufu_s"], launch["bytes_s"]) for launch in feature["launches"]) + sum(
        seconds for _, seconds, _ in feature["torch_ops"]
    )


# The constants the data cannot tell apart from the best fit: every grid point whose rms log
# error is within this factor of the best one's. The pessimistic end of a prediction takes the
# worst of them (the model's time grows with each constant, so the points that maximise each
# one bound it).
PLAUSIBLE_ERROR_FACTOR = 1.10


def _error_grid(features):
    """Summed squared log error (measured / modeled) at every grid point."""
    import numpy as np

    t0 = np.array(GRID["launch_s"])[:, None, None]
    lat = np.array(GRID["round_latency_s"])[None, :, None]
    k = np.array(GRID["issue_factor"])[None, None, :]
    error = np.zeros((t0.shape[0], lat.shape[1], k.shape[2]))
    for feature in features:
        error += np.log(feature["row"]["measured_ms"] / 1e3 / predict(feature, t0, lat, k)) ** 2
    return error


def _at(index):
    i, j, m = index
    return float(GRID["launch_s"][i]), float(GRID["round_latency_s"][j]), float(GRID["issue_factor"][m])


def fit(features):
    """The grid point minimising the summed squared log error (measured / modeled)."""
    import numpy as np

    error = _error_grid(features)
    return _at(np.unravel_index(np.argmin(error), error.shape))


def plausible_extremes(features):
    """Among the grid points within ``PLAUSIBLE_ERROR_FACTOR`` of the best rms error, the ones
    with the largest launch cost, round latency and issue factor."""
    import numpy as np

    error = _error_grid(features)
    plausible = np.sqrt(error) <= np.sqrt(error.min()) * PLAUSIBLE_ERROR_FACTOR
    extremes = {}
    for axis, name in enumerate(("launch_s", "round_latency_s", "issue_factor")):
        idx = np.argwhere(plausible)
        # the largest value of this constant; among those, the best error
        top = idx[idx[:, axis] == idx[:, axis].max()]
        best = top[np.argmin([error[tuple(i)] for i in top])]
        extremes[name] = _at(tuple(best))
    return extremes


def _ratios(features, params):
    return [f["row"]["measured_ms"] / 1e3 / predict(f, *params) for f in features]


def _stats(ratios):
    import statistics

    s = sorted(ratios)
    q = lambda p: s[min(len(s) - 1, int(p * len(s)))]  # noqa: E731
    return {
        "median": statistics.median(s),
        "p10": q(0.1),
        "p90": q(0.9),
        "within_15pct": sum(1 for r in s if abs(math.log(r)) <= math.log(1.15)),
        "points": len(s),
        "rms_log_error": math.sqrt(sum(math.log(r) ** 2 for r in s) / len(s)),
    }


def fitted(row):
    """Rows the fit uses: ``fit`` is ``yes`` (or absent); the others are reported only."""
    return row.get("fit", "yes").strip().lower() in ("", "yes")


def calibrate(all_features):
    """The fit on the fitted points, each family held out in turn, and the errors of each."""
    features = [f for f in all_features if fitted(f["row"])]
    params = fit(features)
    families = sorted({f["row"]["family"] for f in features})
    held_out, loo = [], []
    for family in families:
        rest = [f for f in features if f["row"]["family"] != family]
        mine = [f for f in features if f["row"]["family"] == family]
        if not rest:
            continue
        p = fit(rest)
        loo.append((family, *p))
        held_out += [(family, r) for r in _ratios(mine, p)]
    points = []
    for f in all_features:
        row = f["row"]
        points.append(
            {
                "family": row["family"],
                "runner": row["runner"],
                "shape": row["shape"],
                "dtype": row["dtype"],
                "phase": row["phase"],
                "liger_version": row["liger_version"],
                "device": row.get("device", ""),
                "measured_ms": row["measured_ms"],
                "uncalibrated_ms": uncalibrated(f) * 1e3,
                "calibrated_ms": predict(f, *params) * 1e3,
                "launches": len(f["launches"]) + sum(int(c) for _, _, c in f["torch_ops"]),
                "main_kernel": max(f["launches"], key=lambda l: l["bytes_s"])["kernel"] if f["launches"] else "",
                "fitted": fitted(row),
                "fit": row.get("fit", "yes"),
            }
        )
    extremes = plausible_extremes(features)
    return {
        "fit": {"launch_s": params[0], "round_latency_s": params[1], "issue_factor": params[2]},
        "plausible_extremes": [
            {"largest": name, "launch_s": a, "round_latency_s": b, "issue_factor": c}
            for name, (a, b, c) in extremes.items()
        ],
        "leave_one_family_out": [
            {"family": fam, "launch_s": a, "round_latency_s": b, "issue_factor": c} for fam, a, b, c in loo
        ],
        "errors": {
            "uncalibrated": _stats([p["measured_ms"] / p["uncalibrated_ms"] for p in points if p["fitted"]]),
            "calibrated": _stats([p["measured_ms"] / p["calibrated_ms"] for p in points if p["fitted"]]),
            "not_fitted": _stats([p["measured_ms"] / p["calibrated_ms"] for p in points if not p["fitted"]])
            if any(not p["fitted"] for p in points)
            else None,
            "held_out_by_family": _stats([r for _, r in held_out]),
            "held_out_per_family": {
                fam: _stats([r for g, r in held_out if g == fam])
                for fam in families
                if any(g == fam for g, _ in held_out)
            },
        },
        "points": points,
    }


def markdown(result, meta):
    fit_, errors = result["fit"], result["errors"]
    lines = [
        "# The cost model against measured H100 and H200 times (calibration)",
        "",
        f"`{meta['command']}`, triton {meta['triton']}, torch {meta['torch']}, {meta['seconds']:.0f} s on this "
        f"machine (no GPU). Points: `{meta['points_file']}`, {len(result['points'])} measured times: "
        f"{sum(1 for p in result['points'] if p['runner'] != OWN_RUNNER)} of Liger-Kernel's Triton kernels on an "
        "H100 (wall times from its published benchmark data) and "
        f"{sum(1 for p in result['points'] if p['runner'] == OWN_RUNNER)} of triton_focal's on an H200 (each "
        "kernel's device time in one forward + backward step of a headline case, from the profiler). Each row "
        "names its source and commit. The kernels are compiled for sm_90 here and counted under the interpreter, "
        "exactly as the headline cases are; ours are the launches the model committed at the measured commit, "
        "re-timed at the H200's bandwidth.",
        "",
        f"Fitted: **{fit_['launch_s'] * 1e6:.2f} us per launch, {fit_['round_latency_s'] * 1e9:.0f} ns per dependent "
        f"memory round, issue factor {fit_['issue_factor']:.2f}**.",
        "",
        "| measured / modeled | median | p10 | p90 | within 15% | rms log error |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, label in (
        ("uncalibrated", "uncalibrated model (max of issue, MUFU, bytes)"),
        ("calibrated", "calibrated, fitted on all points"),
        ("held_out_by_family", "calibrated, each family held out of its fit"),
        ("not_fitted", "calibrated, the points not fitted (host-bound phases, launches under 10 us)"),
    ):
        s = errors[name]
        if s is None:
            continue
        lines.append(
            f"| {label} | {s['median']:.2f} | {s['p10']:.2f} | {s['p90']:.2f} | "
            f"{s['within_15pct']} of {s['points']} | {s['rms_log_error']:.2f} |"
        )
    lines += [
        "",
        "Leave-one-family-out fits (the constants' range; the model's pessimistic end uses each):",
        "",
        "| left out | launch us | round ns | issue factor | its held-out median | p10-p90 |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for fit_row in result["leave_one_family_out"]:
        s = errors["held_out_per_family"][fit_row["family"]]
        lines.append(
            f"| {fit_row['family']} | {fit_row['launch_s'] * 1e6:.2f} | {fit_row['round_latency_s'] * 1e9:.0f} | "
            f"{fit_row['issue_factor']:.2f} | {s['median']:.2f} | {s['p10']:.2f}-{s['p90']:.2f} |"
        )
    lines += [
        "",
        f"Constants the data cannot tell apart from the fit (rms log error within "
        f"{PLAUSIBLE_ERROR_FACTOR:.2f}x of the best), at the largest value of each; the pessimistic end uses "
        "these too:",
        "",
        "| largest | launch us | round ns | issue factor |",
        "|---|---:|---:|---:|",
    ]
    for row in result["plausible_extremes"]:
        lines.append(
            f"| {row['largest']} | {row['launch_s'] * 1e6:.2f} | {row['round_latency_s'] * 1e9:.0f} | "
            f"{row['issue_factor']:.2f} |"
        )
    lines += [
        "",
        "![measured vs modeled](calibration.png)",
        "",
        "Every point:",
        "",
        "| family | device | phase | dtype | shape | version | launches | measured ms | uncalibrated ms | "
        "calibrated ms | measured / calibrated | fitted |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for p in result["points"]:
        shape = ", ".join(f"{k}={v}" for k, v in p["shape"].items())
        lines.append(
            f"| {p['family']} | {p.get('device', '')} | {p['phase']} | {p['dtype']} | {shape} | "
            f"{p['liger_version'] or '-'} | {p['launches']} | "
            f"{p['measured_ms']:.4f} | {p['uncalibrated_ms']:.4f} | {p['calibrated_ms']:.4f} | "
            f"{p['measured_ms'] / p['calibrated_ms']:.2f} | {p['fit']} |"
        )
    return "\n".join(lines) + "\n"


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5), sharex=True, sharey=True)
    markers = "osD^v<>px*"
    families = sorted({p["family"] for p in result["points"]})
    for ax, key, title in ((axes[0], "uncalibrated_ms", "uncalibrated"), (axes[1], "calibrated_ms", "calibrated")):
        for n, family in enumerate(families):
            pts = [p for p in result["points"] if p["family"] == family]
            ax.scatter(
                [p[key] for p in pts],
                [p["measured_ms"] for p in pts],
                marker=markers[n % len(markers)],
                label=family,
                s=22,
            )
        lo = min(min(p["measured_ms"], p["uncalibrated_ms"], p["calibrated_ms"]) for p in result["points"]) / 1.5
        hi = max(max(p["measured_ms"], p["uncalibrated_ms"], p["calibrated_ms"]) for p in result["points"]) * 1.5
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.8)
        ax.plot([lo, hi], [lo * 1.15, hi * 1.15], color="grey", lw=0.5, ls="--")
        ax.plot([lo, hi], [lo / 1.15, hi / 1.15], color="grey", lw=0.5, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(f"modeled ms ({title})")
        ax.set_title(f"{title} model vs measured H100 / H200 (dashed: 15%)", fontsize=9)
    axes[0].set_ylabel("measured ms (Liger: H100 wall time; triton_focal: H200 device time)")
    axes[1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
