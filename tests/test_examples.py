"""The examples and the notebook run end to end and print real, parseable results.

Each runs at tiny sizes (a few seconds): these tests check that the training story works
with the public API on every eager backend, not the accuracy it reaches at full size.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
NOTEBOOK = ROOT / "notebooks" / "segmentation_swap_in.ipynb"


def run_example(script, *flags):
    """Run an example script from a fresh interpreter with the checkout importable; its stdout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def parse_floats(pattern, text):
    return [float(v) for v in re.findall(pattern, text)]


# The Triton backend runs through the interpreter on the CPU: the same tiny run checks that
# the kernels train a network, not only that they match the reference on one batch. The
# CE-vs-focal comparison mode needs only one backend.
@pytest.mark.parametrize("backend, mode", [("reference", "both"), ("triton", "focal")])
def test_train_segmentation(backend, mode):
    out = run_example(
        "train_segmentation.py",
        "--loss", mode, "--backend", backend, "--epochs", "3", "--image-size", "16",
        "--train-size", "48", "--val-size", "8", "--batch-size", "8", "--width", "4", "--lr", "0.02",
    )  # fmt: skip
    for loss in ("ce", "focal") if mode == "both" else (mode,):
        losses = parse_floats(rf"\[{loss}\] epoch +\d+/3 +loss ([0-9.]+)", out)
        assert len(losses) == 3, out
        assert losses[-1] < losses[0], f"{loss} loss did not decrease: {losses}"
        iou = dict(re.findall(r"(\w+)=([0-9.]+)", re.search(rf"per-class IoU \[{loss}\]: (.*)", out).group(1)))
        assert set(iou) == {"background", "blob", "bar", "spot", "speck"}, out
        assert all(0.0 <= float(v) <= 1.0 for v in iou.values()), iou
        # Three tiny epochs at a high learning rate already separate the dominant background.
        assert float(iou["background"]) > 0.5, iou
        (miou,) = parse_floats(rf"mIoU \[{loss}\]: ([0-9.]+)", out)
        assert miou == pytest.approx(sum(float(v) for v in iou.values()) / 5, abs=2e-3)
    if mode == "both":
        assert re.search(r"rare-class IoU \(spot, speck\) +ce [0-9.]+ +focal [0-9.]+", out), out


def test_train_segmentation_flags_are_checked():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "train_segmentation.py"), "--image-size", "30"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "multiple of 4" in done.stderr


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_train_detection_loss_goes_down(backend):
    out = run_example(
        "train_detection.py",
        "--backend", backend, "--epochs", "4", "--num-images", "8", "--anchors", "256", "--batch-size", "4",
    )  # fmt: skip
    losses = parse_floats(r"epoch +\d+/4 +loss ([0-9.]+)", out)
    assert len(losses) == 4, out
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses
    (precision,) = parse_floats(r"precision ([0-9.]+)", out)
    (recall,) = parse_floats(r"recall ([0-9.]+)", out)
    assert 0.0 <= precision <= 1.0 and 0.0 <= recall <= 1.0


@pytest.mark.slow
def test_notebook_executes_in_quick_mode(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    # The kernel inherits this process's environment (TRITON_INTERPRET included).
    monkeypatch.setenv("TRITON_FOCAL_NOTEBOOK_QUICK", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError, with the traceback, if a cell fails

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    text = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert "quick=True" in text
    assert len(images) == 3, "expected the data, the training curves and the IoU bar chart"
    summary = dict(re.findall(r"(cross entropy|focal loss \(gamma = 2\)): mIoU ([0-9.]+)", text))
    assert set(summary) == {"cross entropy", "focal loss (gamma = 2)"}, text
    assert all(0.0 <= float(v) <= 1.0 for v in summary.values())
    # The one-line swap cell: gamma = 0 is cross entropy.
    ce, focal0 = parse_floats(r"(?:cross entropy|focal loss, gamma = 0) +([0-9.]+)\n", text)[:2]
    assert focal0 == pytest.approx(ce, rel=1e-5)


def _load_example(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name, parse",
    [
        ("train_segmentation", lambda m, argv: m.parse_args(argv)),
        ("train_detection", lambda m, argv: m.parse_args(argv)),
    ],
)
def test_quick_mode_sets_small_sizes_and_explicit_flags_win(name, parse):
    module = _load_example(name)
    quick = parse(module, ["--quick"])
    for key, value in module.QUICK.items():
        assert getattr(quick, key) == value
    assert parse(module, ["--quick", "--epochs", "5"]).epochs == 5
    full = parse(module, [])
    assert full.epochs > module.QUICK["epochs"]


def test_causal_lm_quick_mode_prints_the_comparison():
    out = run_example("finetune_causal_lm.py", "--quick", "--backend", "reference")
    assert "held-out per-token loss" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()[:1] in (["ce"], ["focal"])}
    assert set(rows) == {"ce", "focal"} and all(len(v) == 3 for v in rows.values())
    assert out.count("training loss") == 2 * 5  # 40 quick steps, printed every 8
