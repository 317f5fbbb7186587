"""The softmax kernel's Poly-1, per-element weight and normalizer branches compile for sm_90,
without a GPU, as the launchers launch them, and spill no more than the same launch without
them (the long fp16 rows with a fractional gamma, softcap and z-loss spill already).

As in ``test_kernels_compile.py``: the interpreter accepts code the compiler rejects, so a
process without TRITON_INTERPRET compiles each launch with the stand-in sm_90 driver
(``perf/sass.py``) instead of running it.
"""

import os
import subprocess
import sys

import pytest

_COMPILE_FOR_GPU = r"""
import torch
from perf import sass

sass.install_stand_in_driver()

from triton_focal.kernels.grad_mode import GRAD_BACKWARD, GRAD_IF_POLICY
from triton_focal.ops import denominators, softmax_focal
from triton_focal.ops.softmax_options import SoftmaxOptions

compiled = []


class CompileInsteadOfLaunch:
    def __init__(self, fn):
        self.fn = fn

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            args = [sass.PointerArgument(a.dtype, a.data_ptr()) if isinstance(a, torch.Tensor) else a for a in args]
            kernel = sass.compile_sm90(self.fn, args, kwargs)
            code = sass.read_sass(kernel.asm["cubin"])
            compiled.append((self.fn.__name__, code.registers, code.local_bytes))
        return launch


softmax_focal._softmax_focal_kernel = CompileInsteadOfLaunch(softmax_focal._softmax_focal_kernel)
softmax_focal._softmax_focal_one_read_kernel = CompileInsteadOfLaunch(softmax_focal._softmax_focal_one_read_kernel)
denominators._target_count_kernel = CompileInsteadOfLaunch(denominators._target_count_kernel)

# Channels-first bf16 with a per-image (stride 0) weight and a tensor normalizer; long fp16 rows
# with every option and a number normalizer; float64 rows with a weighted mean.
for shape, dtype, options, modes in [
    ((2, 19, 64), torch.bfloat16, dict(reduction="sum", normalizer="tensor", weight="image"),
     (GRAD_IF_POLICY, GRAD_BACKWARD)),
    ((8, 33000, 1), torch.float16, dict(reduction="sum", normalizer=3.0, weight="row", label_smoothing=0.1, z_loss=1e-4,
                                       softcap=30.0, gamma=0.5), (GRAD_IF_POLICY, GRAD_BACKWARD)),
    ((64, 10, 1), torch.float64, dict(reduction="mean", weight="row", z_loss=1e-3), (GRAD_IF_POLICY,)),
]:
    x = torch.randn(shape).to(dtype)
    n, c, p = shape
    target = torch.randint(0, c, (n, p))
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    kind = options.pop("weight")
    element_weight = torch.rand(n, 1).expand(n, p) if kind == "image" else torch.rand(n, p)
    normalizer = options.pop("normalizer", None)
    normalizer = torch.tensor(4.0) if normalizer == "tensor" else normalizer
    gamma = options.pop("gamma", 2.0)
    options = dict(dict(label_smoothing=0.0, z_loss=0.0, softcap=None), **options)
    with_options = SoftmaxOptions(gamma, 1.0, None, -100, **options, poly_epsilon=0.5, element_weight=element_weight,
                                  normalizer=normalizer)
    plain = SoftmaxOptions(gamma, 1.0, None, -100, **options)
    denoms = softmax_focal.mean_denominators(target, with_options, acc)
    plain_denoms = softmax_focal.mean_denominators(target, plain, acc)
    for mode in modes:
        grad_output = None
        if mode == GRAD_BACKWARD:
            grad_output = torch.ones(())
        spills = []
        for opts, d in [(with_options, denoms), (plain, plain_denoms)]:
            softmax_focal.softmax_focal_launch(
                x, target, opts, denominators=d if d.numel() else None, grad_mode=mode,
                grad=torch.empty_like(x), grad_output=grad_output, stored=torch.zeros(1, dtype=torch.int32),
                skip_if_stored=mode == GRAD_BACKWARD)
            spills.append(compiled[-1][2])
        print(shape, dtype, int(mode), "spilled bytes with the options / without:", *spills)
        assert spills[0] <= spills[1], spills

names = sorted({name for name, _, _ in compiled})
assert names == ["_softmax_focal_kernel", "_softmax_focal_one_read_kernel", "_target_count_kernel"], names
print("compiled", len(compiled))
"""


@pytest.mark.slow
def test_new_branches_compile_for_sm90_without_more_spills():
    pytest.importorskip("triton.backends.nvidia")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE_FOR_GPU], env=env, capture_output=True, text=True, timeout=900, cwd=root
    )
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
    print(done.stdout)
