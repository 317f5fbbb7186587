"""``python -m perf.model --measure``, the GPU check's timing of the model's cases, runs end to
end at the cases' scaled-down shapes: without a GPU on the CPU, the kernels interpreted."""

import dataclasses
import json

import pytest
from helpers import DEVICE

pytest.importorskip("triton")
from perf.model.headline import all_cases, select  # noqa: E402
from perf.model.measure import measure  # noqa: E402


def test_measure_times_and_checks_each_case(tmp_path):
    cases = [
        dataclasses.replace(case, shape=case.small_shape)
        for case in select(all_cases(), "seg (8,dfl,qfl", "bf16")
        if not case.compiled and case.grad_output == 1
    ]
    assert {case.kind for case in cases} == {"softmax", "distribution", "quality_index"}
    result = measure(cases, tmp_path, device=DEVICE)
    rows = json.loads((tmp_path / "measured.json").read_text())["cases"]
    assert [row["case"] for row in rows] == [case.name for case in cases]
    for row in rows:
        assert "error" not in row and "check_error" not in row, row
        assert row["ms"] > 0 and row["floor_ms"] > 0 and row["host_ms"] > 0
        assert row["finite"]
        assert row["loss_rel_err"] < 2e-2 and row["grad_rel_err"] < 2e-2, row  # bf16 inputs
    text = (tmp_path / "measured.md").read_text()
    assert all(case.name in text for case in cases)
    assert result["cases"] == rows


def test_compare_puts_each_measured_launch_beside_the_model_on_the_measured_device():
    import os

    from perf.model.compare import _modeled_ms, compare
    from perf.model.device import H200

    name = "seg (8,19,512,1024), bf16, loss.backward()"
    path = os.path.join(os.path.dirname(__file__), "..", "perf", "results", "model", "model.json")
    with open(path) as f:
        committed = {row["case"]: row for row in json.load(f)}
    measured = {
        "device": {"name": "NVIDIA H200"},
        "copy_bandwidth_gbs": 4000.0,
        "cases": [
            {
                "case": name,
                "model_commit": "abc1234",
                "launches": {
                    "_softmax_focal_one_read_kernel": {"calls_per_step": 2, "us_per_step": 120.0},
                    "void at::native::vectorized_elementwise_kernel": {"calls_per_step": 1, "us_per_step": 1.0},
                },
            }
        ],
    }
    asked = []
    rows = compare(measured, lambda commit: asked.append(commit) or committed)
    assert asked == ["abc1234"]  # the model of the measured commit
    (row,) = rows  # torch's kernel has no prediction; the count kernel no measurement
    assert row["kernel"] == "_softmax_focal_one_read_kernel"
    mine = [launch for launch in committed[name]["launches"] if launch["kernel"] == row["kernel"]]
    assert row["launches"] == len(mine) == 2
    assert row["model_ms"] == pytest.approx(_modeled_ms(mine, H200))
    # on the H200 without a launch gap: below the committed H100 time with it
    assert row["model_ms"] < sum(launch["calibrated_ms"] for launch in mine)
    assert row["measured_over_model"] == pytest.approx(0.120 / row["model_ms"])
    nbytes = sum(launch["bytes"] for launch in mine)
    assert row["bytes_ms"] == pytest.approx(nbytes / 4e12 * 1e3)
    assert row["pct_of_copy_rate"] == pytest.approx(100 * row["bytes_ms"] / 0.120)
