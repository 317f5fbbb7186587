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
