"""The benchmark suite runs end to end on the CPU and writes its data, figures and summary.

Only the eager reference and the PyTorch floors are timed here (torch.compile would cost
~17 s per graph on a CI CPU); no assertion is made on any timing's value.
"""

import json
import os

import pytest
import torch

from perf import plot, sweep
from perf.cases import bytes_moved, family_cases
from perf.providers import select

POINT_FIELDS = {
    "family",
    "series",
    "x_name",
    "x",
    "shape",
    "target",
    "dtype",
    "mode",
    "provider",
    "label",
    "bytes",
    "floor_ms",
    "status",
    "error",
    "ms",
    "ms_p20",
    "ms_p80",
    "gbs",
    "pct_of_floor",
    "above_floor",
    "extra_peak_mb",
    "rel_err",
    "ratio",
    "ratio_min",
    "ratio_max",
    "rounds",
    "load",
}


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("perf")
    sweep.main(
        [
            "--quick",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--families",
            "seg,vocab,det",
            "--dtypes",
            "fp32",
            "--modes",
            "fwd,fwd+bwd",
            "--providers",
            "reference,cross_entropy,bce",
        ]
    )
    return out


def test_json_has_machine_versions_command_and_points(sweep_dir):
    result = json.loads((sweep_dir / "results.json").read_text())
    assert result["device"]["kind"] == "cpu" and result["device"]["is_gpu"] is False
    assert "NOT GPU" in result["device"]["note"]
    assert {"python", "torch", "triton"} <= set(result["versions"])
    assert result["command"].startswith("python -m perf.sweep --quick")
    assert result["date"] and result["copy_bandwidth_gbs"] > 0
    assert {p["family"] for p in result["points"]} == {"seg", "vocab", "det"}
    assert {p["provider"] for p in result["points"]} == {"reference", "cross_entropy", "bce"}
    expected = sum(len(family_cases(f, gpu=False, quick=True)) for f in ("seg", "vocab", "det")) * 2 * 2
    assert len(result["points"]) == expected  # (reference + one floor) x two modes per case


def test_every_point_is_complete_and_consistent(sweep_dir):
    result = json.loads((sweep_dir / "results.json").read_text())
    for p in result["points"]:
        assert set(p) == POINT_FIELDS
        assert p["status"] == "ok", p["error"]
        assert 0 < p["ms_p20"] <= p["ms"] <= p["ms_p80"]
        assert p["gbs"] == pytest.approx(p["bytes"] / p["ms"] / 1e6)
        if p["above_floor"]:  # faster than the copy floor: in cache, and no percentage given
            assert p["pct_of_floor"] is None and p["ms"] < p["floor_ms"]
        else:
            assert p["pct_of_floor"] == pytest.approx(100 * p["floor_ms"] / p["ms"]) and p["pct_of_floor"] <= 100
        assert p["extra_peak_mb"] is None  # the CPU has no allocator statistics
        if p["provider"] == "reference" and p["mode"] == "fwd":
            # The value check against float64 ran, and float32 agrees with it.
            assert p["rel_err"] is not None and p["rel_err"] < 1e-4
        if p["provider"] != "reference":
            assert p["rel_err"] is None  # plain CE / BCE compute another function


def test_figures_and_summary_are_written_and_redrawn_from_json(sweep_dir, tmp_path):
    for family in ("seg", "vocab", "det"):
        png = (sweep_dir / f"{family}_cpu.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (sweep_dir / "summary.md").read_text()
    assert "NOT GPU figures" in summary
    assert "F.cross_entropy (gamma=0)" in summary and "## det" in summary
    assert "machine load" in summary
    plot.main([str(sweep_dir / "results.json"), "--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["det_cpu.png", "seg_cpu.png", "vocab_cpu.png"]


def test_byte_count_is_the_stated_one():
    seg = family_cases("seg", gpu=True)[0]  # (8, 19, 512, 512), int64 target
    logits = 8 * 19 * 512 * 512 * 2
    target = 8 * 512 * 512 * 8
    assert bytes_moved(seg, torch.bfloat16, "fwd") == logits + target  # read logits, read target
    assert bytes_moved(seg, torch.bfloat16, "fwd+bwd") == 2 * logits + target  # ... write grad
    dense = [c for c in family_cases("det", gpu=True) if c.target == "dense"][0]
    assert bytes_moved(dense, torch.float32, "fwd+bwd") == 3 * 100_000 * 80 * 4


def test_table_mode_and_skips():
    args = sweep.parse_args(["--table"])
    assert (args.families, args.dtypes, args.modes) == (["table"], ["bf16"], ["fwd+bwd"])
    assert len(family_cases("table", gpu=True)) == 4
    _, skipped = select(["liger"], "cpu")
    assert skipped and skipped[0][0] == "liger"
    with pytest.raises(SystemExit):
        sweep.parse_args(["--families", "nope"])


def test_main_job_writes_outside_the_tree_and_leaves_it_clean(monkeypatch, tmp_path):
    """The README's main job: without --out, the results go to the user's cache folder and
    the checkout's tracked results stay as they are."""
    import subprocess
    from pathlib import Path

    repo = Path(sweep.__file__).resolve().parent.parent

    def tracked_results_status():
        return subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all", "--", "perf/results"],
            cwd=repo,
            capture_output=True,
            text=True,
        ).stdout

    before = tracked_results_status()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("TRITON_FOCAL_PERF_DIR", raising=False)
    sweep.main(
        [
            "--quick",
            "--device",
            "cpu",
            "--families",
            "seg",
            "--dtypes",
            "fp32",
            "--modes",
            "fwd",
            "--providers",
            "cross_entropy",
        ]
    )
    assert (tmp_path / "triton_focal" / "perf" / "cpu" / "results.json").exists()
    assert tracked_results_status() == before


def test_interleaved_rounds_report_ratios_spread_and_load(tmp_path):
    sweep.main(
        [
            "--quick",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
            "--families",
            "vocab",
            "--dtypes",
            "fp32",
            "--modes",
            "fwd+bwd",
            "--providers",
            "cross_entropy,reference,blog",
            "--rounds",
            "3",
            "--no-plots",
        ]
    )
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["rounds"] == 3 and result["load_at_start"]["cores"] >= 1
    for p in result["points"]:
        assert p["rounds"] == 3 and p["ratio_min"] <= p["ratio"] <= p["ratio_max"]
        assert set(p["load"]) == {"before", "after"}
        if p["provider"] == "cross_entropy":
            assert p["ratio"] == 1.0
        else:
            assert p["rel_err"] is not None and p["rel_err"] < 1e-4  # value-checked in every mode


def test_no_figure_above_a_floor_is_printed():
    """A time below the copy-bandwidth floor (data in cache) shows as 'cache', never as >100%."""
    from perf import summary

    point = dict(
        family="seg",
        series="classes",
        x_name="C",
        x=19,
        shape=[1, 19, 8, 8],
        target="index",
        dtype="fp32",
        mode="fwd",
        provider="reference",
        label="eager reference",
        bytes=1000,
        floor_ms=0.01,
        status="ok",
        error=None,
        ms=0.001,
        ms_p20=0.001,
        ms_p80=0.002,
        gbs=1.0,
        extra_peak_mb=None,
        rel_err=None,
        ratio=None,
        ratio_min=None,
        ratio_max=None,
        rounds=None,
        load=None,
    )
    sweep._set_time(point, 0.001, 0.001, 0.002)
    assert point["above_floor"] and point["pct_of_floor"] is None
    table = "\n".join(summary.family_tables({"points": [point]}, "seg"))
    assert "(cache)" in table and "%)" not in table.split("\n", 4)[-1]


def test_without_matplotlib_the_sweep_writes_json_and_summary_and_says_how_to_plot(tmp_path, monkeypatch, capsys):
    """matplotlib is optional ("[perf]"): checked before anything is measured, the run still
    writes its data and summary, and says how to get the plots."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    sweep.main(
        [
            "--quick",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
            "--families",
            "det",
            "--dtypes",
            "fp32",
            "--modes",
            "fwd",
            "--providers",
            "reference,bce",
        ]
    )
    printed = capsys.readouterr().out
    first = printed.index("matplotlib is not installed")
    assert first < printed.index("[   1/"), "the missing plots were announced only after measuring"
    assert "triton-focal[perf]" in printed and "python -m perf.plot" in printed
    assert (tmp_path / "results.json").exists() and (tmp_path / "summary.md").exists()
    assert not list(tmp_path.glob("*.png"))


def test_cpu_figures_have_spread_load_and_no_empty_panels(sweep_dir, monkeypatch):
    """On a CPU: no memory panel (nothing measured there), an error bar on every curve, the
    load average in the title, a log axis where the implementations are far apart; and the
    summary warns when the load exceeded the cores."""
    import matplotlib.pyplot as plt

    result = json.loads((sweep_dir / "results.json").read_text())
    figures = []
    monkeypatch.setattr(plt, "close", lambda fig: figures.append(fig))
    plot.plot_family(result, "seg", sweep_dir)
    (fig,) = figures
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert not [t for t in texts if "not measured" in t]
    assert not [ax for ax in fig.axes if "memory" in ax.get_title()]
    assert "load average" in fig._suptitle.get_text()
    for ax in fig.axes:
        assert ax.containers, f"no error bars in {ax.get_title()}"  # errorbar containers, one per curve
    wide = dict(
        result,
        points=[dict(p, gbs=p["gbs"] * (1000 if p["provider"] == "cross_entropy" else 1)) for p in result["points"]],
    )
    figures.clear()
    plot.plot_family(wide, "seg", sweep_dir)
    assert any(ax.get_yscale() == "log" for ax in figures[0].axes)

    from perf import summary

    busy = dict(result, load_at_start={"1min": 5.0, "5min": 4.0, "15min": 3.0, "cores": 2})
    assert "Warning: the load average reached 5.0 on 2 cores" in summary.render(busy)
    idle = dict(
        result,
        load_at_start={"1min": 0.1, "5min": 0.1, "15min": 0.1, "cores": 64},
        load_at_end=None,
        points=[dict(p, load=None) for p in result["points"]],
    )
    assert "Warning" not in summary.render(idle)


def test_headline_table_puts_the_model_beside_the_measured_triton_time():
    """The model's case re-timed on the device the sweep ran on (the H200's model for an H200,
    the H100's for a device without one), beside the measured Triton time."""
    from perf.model import retime
    from perf.model.device import DEVICE, H200
    from perf.summary import headline_table

    path = os.path.join(os.path.dirname(__file__), "..", "perf", "results", "model", "model.json")
    with open(path) as f:
        model = next(r for r in json.load(f) if r["case"] == "seg (8,19,512,1024), bf16, loss.backward()")
    point = {
        "family": "table",
        "series": "seg",
        "shape": [8, 19, 512, 1024],
        "target": "index",
        "dtype": "bf16",
        "mode": "fwd+bwd",
        "label": "triton_focal",
        "status": "ok",
        "ms": 0.2,
        "ms_p20": 0.19,
        "ms_p80": 0.21,
        "gbs": 1000.0,
        "pct_of_floor": 50.0,
        "extra_peak_mb": 1.0,
        "floor_ms": 0.117,
    }
    modeled = {((8, 19, 512, 1024), "index", "bf16"): model}
    for name, device in (("NVIDIA H200", H200), ("a GPU without a model", DEVICE)):
        result = {"device": {"name": name}, "points": [dict(point, provider="triton"), dict(point, provider="compile")]}
        rows = headline_table(result, modeled)
        triton_row, compile_row = [line for line in rows.splitlines() if line.startswith("| triton_focal")]
        nominal, _, worst = (t * 1e3 for t in retime.case_range(model, device))
        assert triton_row.endswith(f"| {nominal:.3f} ({worst:.3f}) | {0.2 / nominal:.2f} |")
        assert compile_row.endswith("|  |  |")
        assert device.name in rows
