"""Backend choice, in one place.

``"triton"``: the fused kernels (CUDA/ROCm GPUs; CPU tensors only under
``TRITON_INTERPRET=1``). ``"compile"``: ``torch.compile`` of the reference. ``"reference"``:
the eager composition. ``"auto"`` picks the first that can run on the input's device,
unless the ``TRITON_FOCAL_BACKEND`` environment variable names one.
"""

import importlib.util
import os

import torch

BACKENDS = ("triton", "compile", "reference")
ENV_VAR = "TRITON_FOCAL_BACKEND"


def _triton_importable():
    """Whether ``import triton`` would find it. Triton is an optional extra (``[triton]``): a
    CPU-only install has no use for it. An import hook that hides it (or ``sys.modules`` set
    to None) makes ``find_spec`` raise rather than return None."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


def _import_backends():
    """Every backend module, imported with the package so that choosing one is a dict lookup
    that torch.compile can trace (it refuses importlib). The Triton ops need Triton; where it
    is installed but fails to import (a broken or mismatched wheel), the other backends stay."""
    from . import compiled, reference

    modules = {"compile": compiled, "reference": reference}
    if _triton_importable():
        try:
            from . import ops
        except ImportError as err:
            _TRITON_IMPORT_ERROR.append(f"Triton is installed but does not import ({type(err).__name__}: {err})")
        else:
            modules["triton"] = ops
    return modules


_TRITON_IMPORT_ERROR = []


def _why_not(name, device):
    """The reason ``name`` cannot run on ``device`` in this process, or None if it can."""
    if name == "triton":
        # what the package found at import (plain lookups: torch.compile traces this, not importlib)
        if _TRITON_IMPORT_ERROR:
            return _TRITON_IMPORT_ERROR[0]
        if "triton" not in _MODULES:
            return 'Triton is not installed (pip install "triton-focal[triton]"; it ships for Linux only)'
        if device.type == "cuda":
            return None
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
            return None
        return (
            f"Triton kernels run on CUDA/ROCm GPUs, not on {device.type} "
            "(set TRITON_INTERPRET=1 to interpret them on the CPU)"
        )
    if name == "compile":
        if not hasattr(torch, "compile"):
            return "this PyTorch has no torch.compile"
        return None
    return None


def available_backends(device=None):
    """The backends that can run on ``device`` (default: CUDA if present, else CPU) in this process.

    Args:
        device: a ``torch.device``, a device string, or None.

    Returns:
        A list of backend names, fastest first.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    return [name for name in BACKENDS if _why_not(name, device) is None]


def check_name(backend):
    """``backend`` is ``"auto"`` or one of :data:`BACKENDS` (whether it can run is decided per call).

    Raises:
        ValueError: ``backend`` is not a backend's name.
    """
    if backend not in BACKENDS + ("auto",):
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")


def resolve(backend, device):
    """The name of the backend that runs for ``backend`` (a name or ``"auto"``) on ``device``.

    Raises:
        ValueError: ``backend`` is unknown or cannot run on ``device``.
    """
    check_name(backend)
    if backend == "auto":
        backend = os.environ.get(ENV_VAR, "auto") or "auto"
        if backend not in BACKENDS + ("auto",):
            raise ValueError(f"{ENV_VAR}={backend!r} is not a backend; choose one of {BACKENDS}")
    if backend == "auto":
        backend = next(name for name in BACKENDS if _why_not(name, device) is None)
    reason = _why_not(backend, device)
    if reason is not None:
        raise ValueError(f"backend={backend!r} cannot run here: {reason}")
    return backend


def load(name):
    """The module implementing backend ``name``."""
    return _MODULES[name]


_MODULES = _import_backends()
