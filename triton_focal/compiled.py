"""The ``torch.compile`` fallback: the reference composition, fused by Inductor.

For hardware without Triton (CPU, MPS) it is much faster than eager, and on GPUs it is
the baseline the fused kernels are measured against. Each reference function is
compiled once with dynamic shapes, so a new batch size does not recompile (a new
``gamma`` or ``reduction`` is a new configuration and does). If compilation cannot run
here (no C++ compiler, an unsupported device), the reference runs instead, with one
warning.
"""

import warnings

import torch

from . import reference

_compiled = {}
_compile_failed = False


def _call(name, *args, **kwargs):
    global _compile_failed
    if not _compile_failed:
        if name not in _compiled:
            _compiled[name] = torch.compile(getattr(reference, name), dynamic=True)
        try:
            return _compiled[name](*args, **kwargs)
        except Exception as err:  # torch._dynamo / Inductor errors have no common base class
            _compile_failed = True
            warnings.warn(
                f"triton_focal: torch.compile cannot run here ({type(err).__name__}: {err}); "
                "using the eager reference instead",
                RuntimeWarning,
                stacklevel=3,
            )
    return getattr(reference, name)(*args, **kwargs)


def softmax_focal_loss(input, target, **kwargs):
    return _call("softmax_focal_loss", input, target, **kwargs)


def sigmoid_focal_loss(input, target, **kwargs):
    return _call("sigmoid_focal_loss", input, target, **kwargs)


def sigmoid_focal_loss_star(input, target, **kwargs):
    return _call("sigmoid_focal_loss_star", input, target, **kwargs)
