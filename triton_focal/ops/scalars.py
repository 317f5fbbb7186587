"""Python floats as kernel arguments.

Triton passes a float argument as float32. Float64 logits (gradcheck) need gamma, alpha
and the smoothing unrounded, so every float is passed as two float32 halves whose sum
holds about 48 of its bits; ``join_float`` in ``kernels/focal_math.py`` adds them back in
the kernel's arithmetic dtype. No device copy is made, so nothing waits on the host.
"""

import ctypes


def split_float(value):
    """``(hi, lo)``: ``hi`` is ``value`` rounded to float32, ``lo`` the remainder."""
    hi = ctypes.c_float(value).value
    return hi, float(value) - hi
