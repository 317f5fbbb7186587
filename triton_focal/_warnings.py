"""Warnings attributed to the user's line, not to this package's internals."""

import os
import sys

import torch

# Frames to step over: this package, and torch's layers between the user and it
# (``nn.Module.__call__``, ``autograd.Function.apply``, the autograd engine).
_INTERNAL_DIRS = tuple(
    os.path.dirname(os.path.abspath(module.__file__)) + os.sep for module in (sys.modules[__package__], torch)
)


def user_stacklevel():
    """The ``stacklevel`` that makes a ``warnings.warn`` in the caller point at the first frame
    outside this package and torch: the user's call (``stacklevel=5`` named whichever internal
    function happened to be five frames up, usually ``functional.py``)."""
    frame = sys._getframe(1)  # the function that calls warnings.warn: stacklevel 1
    level = 1
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(_INTERNAL_DIRS):
        frame = frame.f_back
        level += 1
    return level
