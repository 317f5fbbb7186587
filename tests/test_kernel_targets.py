"""Every kernel launch the package makes builds for CUDA sm_80, sm_90, sm_100 and ROCm gfx942,
with no 32-bit integer product in a pointer offset; and for sm_90 with Triton 3.6 too, where
one is provided (``tests/compile_with_triton.py`` does the work, in a process without
TRITON_INTERPRET).

Triton 3.6 (what CUDA images ship with torch 2.11) comes from ``TRITON_FOCAL_TRITON_PATH`` or
``.cache/triton-3.6`` in the repository, made with
``pip install --no-deps --target .cache/triton-3.6 triton==3.6.0``; without either the test
skips.
"""

import os
import subprocess
import sys

import compile_with_triton
import pytest
from compile_with_triton import DEFAULT_TARGETS, ROOT, TRITON_PATH_VAR, Ttir

SCRIPT = os.path.join(ROOT, "tests", "compile_with_triton.py")
TRITON_36 = os.environ.get(TRITON_PATH_VAR) or os.path.join(ROOT, ".cache", "triton-3.6")


def _compile(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", TRITON_PATH_VAR)}
    done = subprocess.run(
        [sys.executable, SCRIPT, *args], env=env, capture_output=True, text=True, timeout=1800, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow  # about 45 s a target on two cores with a cold Triton cache, 10 s in all warm
def test_every_launch_builds_for_every_target():
    pytest.importorskip("triton.backends.nvidia")
    pytest.importorskip("triton.backends.amd")
    out = _compile("--targets", DEFAULT_TARGETS)
    assert "launches failed" in out and "OK" in out, out


def test_every_launch_builds_with_triton_3_6():
    if not os.path.isdir(os.path.join(TRITON_36, "triton")):
        pytest.skip(f"no Triton 3.6 at {TRITON_36} (set {TRITON_PATH_VAR})")
    out = _compile("--triton-path", TRITON_36, "--targets", "cuda:90")
    assert "triton 3.6" in out, out


_TTIR = """
module {
  tt.func public @k(%x_ptr: !tt.ptr<f32> loc("k.py":1:0), %C: i32 loc("k.py":1:0), %stride: i32 loc("k.py":1:0)) {
    %c0_i32 = arith.constant 0 : i32 loc(#loc1)
    %c8_i32 = arith.constant 8 : i32 loc(#loc1)
    %r = tt.make_range {end = 8 : i32, start = 0 : i32} : tensor<8xi32> loc(#loc1)
    %small = arith.muli %r, %r : tensor<8xi32> loc(#loc2)
    %3 = scf.for %c0 = %c0_i32 to %C step %c8_i32 iter_args(%acc = %small) -> (tensor<8xi32>)  : i32 {
      %s = tt.splat %c0 : i32 -> tensor<8xi32> loc(#loc3)
      %cls = arith.addi %s, %r : tensor<8xi32> loc(#loc3)
      %st = tt.splat %stride : i32 -> tensor<8xi32> loc(#loc4)
      %off = arith.muli %cls, %st : tensor<8xi32> loc(#loc4)
      %o2 = arith.addi %off, %acc : tensor<8xi32> loc(#loc4)
      scf.yield %o2 : tensor<8xi32> loc(#loc4)
    } loc(#loc3)
    %p = tt.splat %x_ptr : !tt.ptr<f32> -> tensor<8x!tt.ptr<f32>> loc(#loc5)
    %q = tt.addptr %p, %3 : tensor<8x!tt.ptr<f32>>, tensor<8xi32> loc(#loc5)
    tt.return loc(#loc5)
  } loc(#loc)
} loc(#loc)
#loc = loc("k.py":1:0)
#loc1 = loc("k.py":2:0)
#loc2 = loc("k.py":3:0)
#loc3 = loc("k.py":4:0)
#loc4 = loc("k.py":5:0)
#loc5 = loc("k.py":6:0)
"""


def test_the_offset_check_follows_loops_and_spares_bounded_products():
    """A runtime index times a runtime stride reaches the pointer through a loop's result: found;
    a product of compile-time ranges cannot overflow: not reported."""
    found = Ttir(_TTIR).narrow_products_in_offsets()
    assert [loc for loc, _ in found] == ["k.py:5"], found
    assert "%off = arith.muli" in found[0][1]
    assert compile_with_triton.parse_target("hip:gfx942") == ("hip", "gfx942", 64)
