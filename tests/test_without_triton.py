"""``import triton_focal`` and ``backend="auto"`` work where Triton is not installed (a
CPU-only install: Triton is the optional ``[triton]`` extra). Triton is hidden from a fresh
interpreter by an import hook, as if it were not installed."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys, warnings

    class HideTriton(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "triton" or name.startswith("triton."):
                raise ModuleNotFoundError(f"No module named {name!r} (hidden)", name=name)
            return None

    sys.meta_path.insert(0, HideTriton())
    import torch
    import triton_focal

    assert "triton" not in sys.modules, "triton was imported"
    assert triton_focal.available_backends("cpu") == ["compile", "reference"], triton_focal.available_backends("cpu")
    try:
        triton_focal.focal_loss(torch.randn(2, 3), torch.tensor([0, 1]), backend="triton")
    except ValueError as err:
        assert "not installed" in str(err) and "triton-focal[triton]" in str(err), err
    else:
        raise AssertionError("backend='triton' ran without Triton")
    warnings.simplefilter("ignore")
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    t = torch.randint(0, 4, (2, 3, 3))
    loss = triton_focal.focal_loss(x, t, gamma=2.0, backend="{backend}")
    loss.backward()
    expected = triton_focal.focal_loss(x.detach(), t, gamma=2.0, backend="reference")
    assert torch.allclose(loss.detach(), expected, rtol=1e-5), (loss, expected)
    assert "triton" not in sys.modules, "triton was imported by a loss"
    print("ok", float(loss))
    """
)


def _run(backend):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRITON_FOCAL_BACKEND")}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT.replace("{backend}", backend)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_import_and_reference_loss_without_triton():
    done = _run("reference")
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]


@pytest.mark.slow
def test_auto_backend_compiles_without_triton():
    done = _run("auto")
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]
