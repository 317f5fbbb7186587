"""Exact Liger-Kernel releases, one directory per version, for the calibration runners.

Each version is installed once with ``pip install --no-deps --target`` under
``~/.cache/triton_focal/liger/<version>`` (Liger's kernels are pure Triton; torch and triton
are the ones already installed here).  ``import_liger(version)`` puts that directory first on
``sys.path`` and imports ``liger_kernel`` from it; only one version can be imported per
process at a time (Python caches modules by name), so asking for another one re-imports.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

CACHE = Path(os.environ.get("TRITON_FOCAL_LIGER_CACHE", Path.home() / ".cache" / "triton_focal" / "liger"))


def liger_path(version: str) -> str:
    """A directory holding ``liger_kernel==version`` (installed there on first use)."""
    target = CACHE / version
    if not (target / ".installed").exists():
        print(f"installing liger-kernel=={version} into {target}", file=sys.stderr)
        # Installed beside the final directory and renamed into place, so that a half-done
        # install is never taken for a complete one.
        staging = CACHE / f".{version}.{os.getpid()}"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--no-compile",
                "--disable-pip-version-check",
                "--target",
                str(staging),
                f"liger-kernel=={version}",
            ],
            check=True,
        )
        (staging / ".installed").write_text(version + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    return str(target)


def import_liger(version: str):
    """``liger_kernel`` imported from ``liger_path(version)``.

    Asking for another version than the one imported drops every ``liger_kernel`` module
    from ``sys.modules`` (objects built from the old ones keep working) and imports afresh.
    """
    path = os.path.abspath(liger_path(version))
    loaded = sys.modules.get("liger_kernel")
    if loaded is not None:
        where = os.path.dirname(os.path.dirname(os.path.abspath(loaded.__file__)))
        if where == path:
            return loaded
        for name in [n for n in sys.modules if n == "liger_kernel" or n.startswith("liger_kernel.")]:
            del sys.modules[name]
        sys.path[:] = [p for p in sys.path if os.path.abspath(p) != where]
    if path in sys.path:
        sys.path.remove(path)
    sys.path.insert(0, path)
    importlib.invalidate_caches()
    return importlib.import_module("liger_kernel")
