"""triton_focal's own kernels, measured on a GPU, as calibration points.

    python -m perf.calibration.own perf/results/nvidia-h200/measured.json >> perf/calibration/points.csv

``python -m perf.model --measure`` (the GPU check) writes ``measured.json``: per headline case,
each kernel's device time in one forward + ``loss.backward()`` step, from the profiler. Each
kernel of ours in each case becomes one point (runner ``triton_focal_case``, phase ``device``):
its summed launches' device time against the model of those launches.

The model of a point is the one ``perf.model --write`` committed at the measured commit
(``perf/results/model/model.json`` of ``source_commit``, read with ``git show``): the launches as
that commit's kernels made them, counted and compiled for sm_90, re-timed on the measured
device (``perf/model/device.py``: the H200 differs from the H100 in its bandwidth only). So a
later change to the kernels cannot silently re-model an old measurement.

A device time has no launch gap in it: these points are modeled without the fitted per-launch
cost (``perf/model/calibrate.py``, ``predict``), unlike Liger's wall-clock points.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import subprocess
import sys

from perf.calibration.extract import COLUMNS

RUNNER = "triton_focal_case"
PHASE = "device"
# A launch shorter than this is mostly the GPU's own start and drain of a grid, which the model
# does not have: reported, not fitted.
SHORTEST_FITTED_US = 10.0
# One family per kernel design, so that leave-one-family-out holds each design out in turn.
FAMILY = {
    "_softmax_focal_kernel": "triton_focal softmax",
    "_softmax_focal_one_read_kernel": "triton_focal softmax one-read",
    "_sigmoid_focal_kernel": "triton_focal sigmoid",
    "_distribution_focal_kernel": "triton_focal distribution",
    "_target_count_kernel": "triton_focal target count",
}


def _repo():
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@functools.lru_cache(maxsize=None)
def committed_model(commit):
    """``perf/results/model/model.json`` as committed at ``commit``: {case name: case result}."""
    done = subprocess.run(
        ["git", "-C", _repo(), "show", f"{commit}:perf/results/model/model.json"], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"cannot read perf/results/model/model.json at {commit} (a shallow clone? fetch that commit): "
            f"{done.stderr.strip()}"
        )
    return {r["case"]: r for r in json.loads(done.stdout)}


def kernel_launches(modeled, kernel):
    """The launches of ``kernel`` in one case of ``model.json``."""
    return [launch for launch in modeled["launches"] if launch["kernel"] == kernel]


def measured_launches(measured, model_of=None):
    """``(case, modeled, kernel, timing, launches)`` for each kernel of ours that ``measured.json`` timed:
    ``modeled`` is the case in the model committed at the measured commit (``model_of(commit)``,
    by default :func:`committed_model`), ``launches`` the kernel's launches there. torch's own kernels (the
    backward's ``ones_like``, a multiply) and cases the model lacks are left out."""
    model_of = model_of or committed_model
    for case in measured["cases"]:
        timed = case.get("launches") or {}
        if "error" in timed or "model_commit" not in case:
            continue
        modeled = model_of(case["model_commit"]).get(case["case"])
        if modeled is None:
            continue
        for kernel, timing in sorted(timed.items()):
            launches = kernel_launches(modeled, kernel)
            if launches:
                yield case, modeled, kernel, timing, launches


def points(measured, source):
    """Rows (dicts with ``extract.COLUMNS``) from a ``measured.json`` object."""
    out = []
    for case, modeled, kernel, timing, _ in measured_launches(measured):
        us = timing["us_per_step"]
        out.append(
            {
                "family": FAMILY.get(kernel, f"triton_focal {kernel}"),
                "runner": RUNNER,
                "shape": json.dumps({"case": case["case"], "kernel": kernel}),
                "dtype": modeled["dtype"],
                "phase": PHASE,
                "measured_ms": us / 1e3,
                "measured_p20_ms": "",
                "measured_p80_ms": "",
                "device": measured["device"]["name"],
                "source": source,
                "source_commit": case["model_commit"],
                "liger_version": "",
                "fit": "yes" if us >= SHORTEST_FITTED_US else f"no: under {SHORTEST_FITTED_US:g} us of device time",
            }
        )
    return out


def is_own(row):
    return row["runner"] == RUNNER


def features(row):
    """The calibration feature of one of our points (the shape of ``calibrate.count_points``'s)."""
    from perf.model.device import for_measured_device
    from perf.model.retime import launch_features

    shape = row["shape"] if isinstance(row["shape"], dict) else json.loads(row["shape"])
    modeled = committed_model(row["source_commit"]).get(shape["case"])
    if modeled is None:
        raise KeyError(f"{shape['case']!r} is not in perf/results/model/model.json at {row['source_commit']}")
    device = for_measured_device(row["device"])
    launches = kernel_launches(modeled, shape["kernel"])
    if not launches:
        raise KeyError(f"{shape['case']!r} at {row['source_commit']} has no launch of {shape['kernel']}")
    return {
        "row": row,
        "launches": [launch_features(launch, device) for launch in launches],
        "torch_ops": [],
        "timing": PHASE,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m perf.calibration.own", description=__doc__.split("\n\n")[0])
    ap.add_argument("measured", help="a measured.json of python -m perf.model --measure")
    ap.add_argument("--header", action="store_true", help="print the CSV header first")
    args = ap.parse_args(argv)
    with open(args.measured) as f:
        measured = json.load(f)
    source = os.path.relpath(os.path.abspath(args.measured), _repo())
    writer = csv.DictWriter(sys.stdout, fieldnames=COLUMNS, lineterminator="\n")
    if args.header:
        writer.writeheader()
    writer.writerows(points(measured, source))


if __name__ == "__main__":
    main()
