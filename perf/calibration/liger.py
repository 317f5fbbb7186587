"""Exact Liger-Kernel releases, one directory per version, for the calibration runners.

Each version is installed once with ``pip install --no-deps --target`` under
``~/.cache/triton_focal/liger/<version>`` (Liger's kernels are pure Triton; torch and triton
are the ones already installed here).  ``import_liger(version)`` puts that directory first on
``sys.path`` and imports ``liger_kernel`` from it; only one version can be imported per
process (Python caches modules by name), so asking for a second one raises.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

CACHE = Path(os.environ.get("TRITON_FOCAL_LIGER_CACHE", Path.home() / ".cache" / "triton_focal" / "liger"))


def liger_path(version: str) -> str:
    """A directory holding ``liger_kernel==version`` (installed there on first use)."""
    target = CACHE / version
    marker = target / ".installed"
    if not marker.exists():
        print(f"installing liger-kernel=={version} into {target}", file=sys.stderr)
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
             "--target", str(target), f"liger-kernel=={version}"],
            check=True,
        )
        marker.write_text(version + "\n")
    return str(target)


def import_liger(version: str):
    """``liger_kernel`` imported from ``liger_path(version)``; the same version for the whole process."""
    path = liger_path(version)
    loaded = sys.modules.get("liger_kernel")
    if loaded is not None:
        where = os.path.dirname(os.path.dirname(os.path.abspath(loaded.__file__)))
        if where != os.path.abspath(path):
            raise RuntimeError(
                f"liger_kernel is already imported from {where}; one version per process "
                f"(asked for {version})"
            )
        return loaded
    sys.path.insert(0, path)
    return importlib.import_module("liger_kernel")
