"""perf/calibration: the extractor, and each runner's headline launches against its scaled-down
run (same kernels, constexprs, num_warps and per-program scalars; only the grid shrinks).

Launches are captured the way the cost model does it: InterpretedFunction.run is wrapped;
at the headline size the launch is recorded and not executed, scaled down it also runs.
"""

import contextlib
import csv
import inspect
import io
import json
import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "the calibration runners run under the Triton interpreter (TRITON_INTERPRET=1)", allow_module_level=True
    )

import torch  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from perf.calibration import extract, own, runners  # noqa: E402
from perf.calibration.liger import liger_path  # noqa: E402

POINTS = os.path.join(os.path.dirname(__file__), "..", "perf", "calibration", "points.csv")

# Scalars that count rows (they differ between the sizes by design); every other scalar
# argument sets what one program does and must match.
ROW_COUNTS = {"n_rows", "n_non_ignore", "sum_non_ignore_weight"}


@contextlib.contextmanager
def capture(execute):
    launches = []
    orig = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        sig = inspect.signature(self.fn)
        options = {k: kwargs.pop(k) for k in list(kwargs) if k not in sig.parameters}
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        const, scalars = {}, {}
        for name, value in bound.arguments.items():
            if sig.parameters[name].annotation is tl.constexpr:
                const[name] = value
            elif isinstance(value, (int, float)) and name not in ROW_COUNTS:
                scalars[name] = value
        g = grid(bound.arguments) if callable(grid) else tuple(grid)
        launches.append(
            {
                "kernel": self.fn.__qualname__,
                "grid": g,
                "constexprs": const,
                "scalars": scalars,
                "num_warps": options.get("num_warps"),
            }
        )
        if execute:
            return orig(self, *args, grid=grid, warmup=warmup, **options, **kwargs)

    InterpretedFunction.run = run
    try:
        yield launches
    finally:
        InterpretedFunction.run = orig


def _launches(runner, shape, dtype, phase, headline, version):
    w = runners.workload(runner, shape, dtype, phase, headline, version)
    with capture(execute=not headline) as launches:
        w.prepare()
        n = len(launches)
        w.step()
    return launches[n:], w.elements


def _need_liger(version):
    try:
        liger_path(version)
    except Exception as e:  # no network / no pip: nothing to run these against
        pytest.skip(f"could not install liger-kernel=={version} (needs pip and network): {e}")


def _liger_rows():
    """points.csv's rows of Liger-Kernel's kernels (ours are perf/calibration/own.py's)."""
    with open(POINTS, newline="") as f:
        return [row for row in csv.DictReader(f) if not own.is_own(row)]


def _smallest_points():
    """Each runner's smallest point per phase from points.csv, plus liger_cross_entropy."""
    best = {}
    for r in _liger_rows():
        shape = json.loads(r["shape"])
        key = (r["runner"], r["phase"])
        size = 1
        for v in shape.values():
            size *= v
        if key not in best or size < best[key][0]:
            best[key] = (size, (r["runner"], shape, r["dtype"], r["phase"], r["liger_version"]))
    points = [p for _, p in best.values()]
    points += [
        ("liger_cross_entropy", {"rows": 8192, "V": 32768}, "bf16", phase, "0.8.1") for phase in ("forward", "fwd+bwd")
    ]
    return points


@pytest.mark.parametrize("point", _smallest_points(), ids=lambda p: f"{p[0]}-{p[3]}")
def test_scaled_down_matches_headline(point):
    runner, shape, dtype, phase, version = point
    _need_liger(runners.release_for(runner, version))
    small = runners.scaled_down(runner, shape, version)
    head, head_elems = _launches(runner, shape, dtype, phase, True, version)
    scaled, scaled_elems = _launches(runner, small, dtype, phase, False, version)
    assert head, "the step launches no Triton kernel"
    assert scaled_elems < head_elems <= scaled_elems * 1024
    assert scaled_elems <= 4 << 20
    assert [lh["kernel"] for lh in head] == [ls["kernel"] for ls in scaled]
    for lh, ls in zip(head, scaled):
        assert lh["constexprs"] == ls["constexprs"], lh["kernel"]
        assert lh["num_warps"] == ls["num_warps"], lh["kernel"]
        assert lh["scalars"] == ls["scalars"], lh["kernel"]  # per-program work (e.g. rows per program)
        assert len(lh["grid"]) == len(ls["grid"]) and ls["grid"] <= lh["grid"]


def test_persistent_grid_uses_h100_sm_count():
    _need_liger("0.8.1")
    shape = {"S": 4096, "B": 1, "H": 4096}
    head, _ = _launches("liger_megatron_rms_norm", shape, "bf16", "fwd+bwd", True, "0.8.0")
    small = runners.scaled_down("liger_megatron_rms_norm", shape, "0.8.0")
    scaled, _ = _launches("liger_megatron_rms_norm", small, "bf16", "fwd+bwd", False, "0.8.0")
    assert head[-1]["grid"] == (runners.H100_SMS,)
    assert head[-1]["scalars"]["rows_per_program"] == 32
    assert scaled[-1]["grid"] == (small["sms"],)


def test_points_csv_is_what_extract_writes():
    with open(POINTS, newline="") as f:
        assert next(csv.reader(f)) == extract.COLUMNS
    rows = _liger_rows()
    assert len(rows) == 72
    assert {r["device"] for r in rows} == {extract.DEVICE}
    assert {r["phase"] for r in rows} <= {"forward", "backward", "fwd+bwd"}
    assert {r["runner"] for r in rows} <= set(runners.RUNNERS)
    for r in rows:
        assert r["phase"] in runners.PHASES[r["runner"]]
        assert float(r["measured_p20_ms"]) <= float(r["measured_ms"]) <= float(r["measured_p80_ms"])


def test_extract_on_a_tiny_csv():
    header = (
        "kernel_name,kernel_provider,kernel_operation_mode,metric_name,metric_unit,x_name,x_label,"
        "x_value,y_value_50,y_value_20,y_value_80,extra_benchmark_config_str,gpu_name,timestamp,liger_version"
    )
    h100, a100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"
    ln = '"{""M"": 4096, ""dtype"": ""torch.float32"", ""eps"": 1e-06}"'
    ce = '"{""S"": 2048, ""B"": 4, ""TP"": 1}"'
    ce2 = '"{""S"": 2048, ""B"": 4, ""TP"": 2}"'
    lines = [
        header,
        f"layer_norm,liger,full,speed,ms,N,hidden size,1024,0.2,0.1,0.3,{ln},{h100},2025-07-17 18:18:21,0.6.0",
        f"layer_norm,liger,full,speed,ms,N,hidden size,1024,0.25,0.1,0.3,{ln},{h100},2025-07-16 18:18:21,0.6.0",
        f"layer_norm,huggingface,full,speed,ms,N,hidden size,1024,0.9,0.8,1.0,{ln},{h100},2025-07-17 18:18:21,0.6.0",
        f"layer_norm,liger,full,memory,MB,N,hidden size,1024,80,80,80,{ln},{h100},2025-07-17 18:18:21,0.6.0",
        f"layer_norm,liger,forward,speed,ms,N,hidden size,1024,0.02,0.01,0.03,{ln},{a100},2025-07-17 18:18:21,0.6.0",
        "megatron_cross_entropy,liger,backward,speed,ms,V,vocab size,4096,0.35,0.34,0.36,"
        f"{ce},{h100},2026-06-15 22:13:03,0.8.0",
        "megatron_cross_entropy,liger,backward,speed,ms,V,vocab size,4096,0.2,0.1,0.3,"
        f"{ce2},{h100},2026-06-15 22:13:03,0.8.0",
        f"tvd,liger,forward,speed,ms,V,vocab size,4096,0.2,0.1,0.3,{ce},{h100},2026-06-15 22:13:03,0.8.0",
    ]
    points = extract.extract(csv.DictReader(io.StringIO("\n".join(lines) + "\n")), "abc123")
    out = io.StringIO()
    extract.write(points, out)
    got = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [(r["family"], r["phase"], r["measured_ms"]) for r in got] == [
        ("megatron_cross_entropy", "backward", "0.35"),
        ("layer_norm", "fwd+bwd", "0.2"),  # the later of the two runs
    ]
    assert json.loads(got[0]["shape"]) == {"S": 2048, "B": 4, "V": 4096} and got[0]["dtype"] == "bf16"
    assert json.loads(got[1]["shape"]) == {"M": 4096, "N": 1024} and got[1]["dtype"] == "fp32"
    assert {r["source_commit"] for r in got} == {"abc123"}
    # The rows' label 0.6.0 is the tree of the new kernel, first released as 0.6.1.
    assert got[1]["runner"] == "liger_layer_norm" and got[1]["liger_version"] == "0.6.1"
    assert got[0]["liger_version"] == "0.8.1"


def test_runners_refuse_unknown_phase():
    with pytest.raises(ValueError):
        runners.workload("liger_cross_entropy", {"rows": 2, "V": 8}, "fp32", "backward", True, "0.8.1")
    assert torch.get_default_dtype() == torch.float32
