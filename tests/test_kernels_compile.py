"""Every kernel compiles for a real GPU target, without a GPU.

The interpreter accepts code the compiler rejects (a global that is not a constexpr object,
a method on a Python float, a dtype mismatch in a loop-carried value), so CI compiles a few
flag combinations of each kernel for sm_90 to machine code, in a process without
TRITON_INTERPRET.
"""

import os
import subprocess
import sys

import pytest

_COMPILE_FOR_GPU = r'''
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from triton_focal.kernels.scale_grad import _scale_grad_by_scalar_kernel
from triton_focal.kernels.sigmoid_focal import _sigmoid_focal_fwd_kernel
from triton_focal.kernels.softmax_focal import _softmax_focal_fwd_kernel


def build(fn, pointers, ints, floats, consts):
    """Compile fn for sm_90; pointers set to None are absent (constexpr None)."""
    sig = {**pointers, **{k: "i64" for k in ints}, **{k: "fp32" for k in floats}}
    consts = {**consts, **{k: None for k, v in pointers.items() if v is None}}
    sig.update({k: "constexpr" for k in consts})
    triton.compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})


# Softmax: the single-block tile (segmentation), the class-block loop (vocabulary) with
# every option, and float64.
SOFTMAX_INTS = ("stride_x_n stride_x_c stride_x_p stride_t_n stride_t_p stride_l_n stride_l_p "
                "stride_g_n stride_g_c stride_g_p C P num_p_blocks ignore_index").split()
SOFTMAX_FLAGS = "SINGLE_BLOCK HAS_CLASS_GAMMA HAS_CLASS_ALPHA HAS_WEIGHT HAS_SMOOTHING COMPUTE_GRAD PER_ELEMENT MEAN".split()
for on, dtype, blocks in [
    ({"SINGLE_BLOCK", "COMPUTE_GRAD", "MEAN"}, "bf16", (32, 256)),
    ({"HAS_CLASS_GAMMA", "HAS_CLASS_ALPHA", "HAS_WEIGHT", "HAS_SMOOTHING", "COMPUTE_GRAD", "PER_ELEMENT"}, "fp16", (1, 4096)),
    ({"SINGLE_BLOCK", "HAS_SMOOTHING", "COMPUTE_GRAD"}, "fp64", (16, 64)),
]:
    acc = "fp64" if dtype == "fp64" else "fp32"
    pointers = {
        "x_ptr": "*" + dtype, "target_ptr": "*i64",
        "gamma_ptr": "*" + acc if "HAS_CLASS_GAMMA" in on else None,
        "alpha_ptr": "*" + acc if "HAS_CLASS_ALPHA" in on else None,
        "weight_ptr": "*" + acc if "HAS_WEIGHT" in on else None,
        "denom_ptr": "*" + acc if "MEAN" in on else None,
        "loss_ptr": "*" + dtype if "PER_ELEMENT" in on else "*" + acc,
        "grad_ptr": "*" + dtype,
    }
    consts = {"BLOCK_P": blocks[0], "BLOCK_C": blocks[1], "ACC": tl.float64 if dtype == "fp64" else tl.float32,
              **{f: f in on for f in SOFTMAX_FLAGS}}
    build(_softmax_focal_fwd_kernel, pointers, SOFTMAX_INTS, "gamma_hi gamma_lo alpha_hi alpha_lo smoothing_hi smoothing_lo".split(), consts)
# Sigmoid: class-index targets with every option, dense with per-class gamma, FL* in float64.
SIGMOID_INTS = ("stride_x_n stride_x_c stride_x_p stride_t_n stride_t_c stride_t_p stride_w_n stride_w_c stride_w_p "
                "stride_o_n stride_o_c stride_o_p num_rows num_classes P ignore_index").split()
SIGMOID_FLAGS = "INDEX_TARGET HAS_WEIGHT HAS_ALPHA HAS_CLASS_GAMMA STAR REDUCE HAS_DENOM COMPUTE_GRAD FP64".split()
for on, dtype in [({"INDEX_TARGET", "HAS_WEIGHT", "HAS_ALPHA", "REDUCE", "HAS_DENOM", "COMPUTE_GRAD"}, "bf16"),
                  ({"HAS_CLASS_GAMMA", "COMPUTE_GRAD"}, "fp16"),
                  ({"STAR", "HAS_ALPHA", "REDUCE", "COMPUTE_GRAD", "FP64"}, "fp64")]:
    pointers = {"x_ptr": "*" + dtype, "target_ptr": "*i64" if "INDEX_TARGET" in on else "*fp32",
                "weight_ptr": "*fp32" if "HAS_WEIGHT" in on else None,
                "gamma_ptr": "*fp32" if "HAS_CLASS_GAMMA" in on else None,
                "denom_ptr": "*fp32" if "HAS_DENOM" in on else None,
                "loss_ptr": "*fp32" if "REDUCE" in on else "*" + dtype, "dx_ptr": "*" + dtype}
    consts = {"BLOCK_R": 32, "BLOCK_C": 128, **{f: f in on for f in SIGMOID_FLAGS}}
    build(_sigmoid_focal_fwd_kernel, pointers, SIGMOID_INTS, ["alpha_hi", "alpha_lo", "gamma_hi", "gamma_lo"], consts)

# The shared backward.
for dtype, acc in [("bf16", tl.float32), ("fp64", tl.float64)]:
    build(_scale_grad_by_scalar_kernel, {"grad_ptr": "*" + dtype, "grad_output_ptr": "*" + dtype}, ["numel"], [],
          {"BLOCK": 2048, "ACC": acc})
print("compiled")
'''


def test_kernels_compile_for_a_gpu_target():
    pytest.importorskip("triton.backends.nvidia")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", _COMPILE_FOR_GPU], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
