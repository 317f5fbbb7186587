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


def test_compare_puts_each_measured_launch_beside_the_model(tmp_path):
    from perf.model.compare import compare

    measured = {
        "copy_bandwidth_gbs": 4000.0,
        "cases": [
            {
                "case": "seg (8,19,512,1024), bf16, loss.backward()",
                "launches": {
                    "_softmax_focal_one_read_kernel": {"calls_per_step": 1, "us_per_step": 120.0},
                    "void at::native::vectorized_elementwise_kernel": {"calls_per_step": 1, "us_per_step": 1.0},
                },
            }
        ],
    }
    model = [
        {
            "case": "seg (8,19,512,1024), bf16, loss.backward()",
            "launches": [
                {"kernel": "_softmax_focal_one_read_kernel", "calibrated_ms": 0.1, "bytes": 4e8, "bound": "serial"},
                {"kernel": "_target_count_kernel", "calibrated_ms": 0.02, "bytes": 3e7, "bound": "serial"},
            ],
        }
    ]
    (row,) = compare(measured, model)  # torch's kernel has no prediction; the count kernel no measurement
    assert row["kernel"] == "_softmax_focal_one_read_kernel"
    assert row["measured_over_model"] == pytest.approx(1.2)
    assert row["bytes_ms"] == pytest.approx(0.1) and row["pct_of_copy_rate"] == pytest.approx(100 / 1.2)
