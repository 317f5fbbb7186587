"""perf/calibration/own.py: our kernels' measured GPU times as calibration points.

The points are the launches of each headline case measured on a GPU (``measured.json``), modeled
as the model committed at the measured commit made them; the fitted constants of the device
model are the committed calibration's.
"""

import csv
import json
import os
import subprocess

import pytest

from perf.calibration import own
from perf.model import calibrate, retime
from perf.model.device import DEVICE, H200, for_measured_device

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "perf", "results")


def _json(*parts):
    with open(os.path.join(RESULTS, *parts)) as f:
        return json.load(f)


def _has_commit(commit):
    done = subprocess.run(["git", "-C", REPO, "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True)
    return done.returncode == 0


def test_a_committed_case_re_timed_on_the_h100_is_the_committed_model():
    """model.json's counts, re-timed on the device it was modeled for, give back each launch's
    committed time and each case's fitted and pessimistic times: retime.py is cost.py's formula."""
    checked = 0
    for case in _json("model", "model.json"):
        for launch in case["launches"]:
            modeled = retime.seconds([launch], {}, DEVICE)
            assert modeled * 1e3 == pytest.approx(launch["calibrated_ms"], rel=1e-6), (case["case"], launch["kernel"])
        nominal, _, worst = retime.case_range(case, DEVICE)
        assert nominal * 1e3 == pytest.approx(case["calibrated_ms"], rel=1e-6), case["case"]
        assert worst * 1e3 == pytest.approx(case["calibrated_worst_ms"], rel=1e-6), case["case"]
        # on the H200: no slower (more bandwidth, the same constants); its kernels alone faster still
        h200, _, h200_worst = retime.case_range(case, H200)
        kernels, _, _ = retime.case_range(case, H200, timing="device")
        assert kernels < h200 <= nominal and h200_worst <= worst
        checked += 1
    assert checked > 20


def test_the_h200_differs_from_the_h100_in_bandwidth_only():
    h100 = {k: v for k, v in vars(DEVICE).items() if k not in ("name", "copy_bandwidth")}
    assert {k: v for k, v in vars(H200).items() if k not in ("name", "copy_bandwidth")} == h100
    assert H200.copy_bandwidth > DEVICE.copy_bandwidth
    measured = _json("nvidia-h200", "measured.json")
    assert H200.copy_bandwidth == pytest.approx(measured["copy_bandwidth_gbs"] * 1e9, rel=0.01)
    assert for_measured_device(measured["device"]["name"]) is H200
    with pytest.raises(KeyError, match="no device model"):
        for_measured_device("a GPU nobody measured")


def test_a_device_time_is_modeled_without_the_launch_gap():
    launch = {"issue_s": 1e-5, "mufu_s": 0.0, "bytes_s": 2e-5, "waves": 1, "rounds": 10, "instructions_s": 0.0}
    launch["transfer_s"] = 2e-5
    wall = {"row": {}, "launches": [launch], "torch_ops": []}
    device = dict(wall, timing="device")
    assert calibrate.predict(wall, 5e-6, 0.0, 0.0) == pytest.approx(2.5e-5)
    assert calibrate.predict(device, 5e-6, 0.0, 0.0) == pytest.approx(2e-5)


def _points_csv_rows():
    with open(calibrate.DEFAULT_POINTS, newline="") as f:
        return [row for row in csv.DictReader(f) if own.is_own(row)]


def test_points_csv_holds_every_measured_launch_of_ours():
    rows = _points_csv_rows()
    commits = {row["source_commit"] for row in rows}
    assert rows and len(commits) == 1
    (commit,) = commits
    if not _has_commit(commit):
        pytest.skip(f"this clone lacks the measured commit {commit} (shallow?)")
    measured = _json("nvidia-h200", "measured.json")
    regenerated = own.points(measured, "perf/results/nvidia-h200/measured.json")
    as_text = [{k: str(v) for k, v in row.items()} for row in regenerated]
    assert [dict(row) for row in rows] == as_text
    fitted = [row for row in rows if calibrate.fitted(row)]
    assert len(fitted) >= 25 and all(float(row["measured_ms"]) * 1e3 >= own.SHORTEST_FITTED_US for row in fitted)
    # every one models: the case and its kernel are in the model of the measured commit
    for row in rows:
        row = dict(row, shape=json.loads(row["shape"]), measured_ms=float(row["measured_ms"]))
        feature = own.features(row)
        assert feature["timing"] == "device" and feature["launches"]
        assert calibrate.predict(feature, 0.0, 0.0, 0.0) > 0


def test_the_device_model_holds_the_committed_fit():
    result = _json("model", "calibration.json")
    fit = result["fit"]
    assert (DEVICE.launch_s, DEVICE.round_latency_s, DEVICE.issue_factor) == pytest.approx(
        (fit["launch_s"], fit["round_latency_s"], fit["issue_factor"]), rel=1e-6
    )
    loo = {
        f"without {r['family']}": (r["launch_s"], r["round_latency_s"], r["issue_factor"])
        for r in result["leave_one_family_out"]
    }
    assert sorted(name for name, *_ in DEVICE.leave_one_out_fits) == sorted(loo)
    for name, *values in DEVICE.leave_one_out_fits:
        assert tuple(values) == pytest.approx(loo[name], rel=1e-6), name
    extremes = [(r["launch_s"], r["round_latency_s"], r["issue_factor"]) for r in result["plausible_extremes"]]
    assert len(DEVICE.plausible_fits) == len(extremes)
    for (name, *values), extreme in zip(DEVICE.plausible_fits, extremes):
        assert tuple(values) == pytest.approx(extreme, rel=1e-6), name
    every = [DEVICE.launch_s] + [f[1] for f in DEVICE.leave_one_out_fits + DEVICE.plausible_fits]
    assert DEVICE.launch_s_range == pytest.approx((min(every), max(every)), rel=1e-6)
