"""Every kernel compiles for a real GPU target, without a GPU, exactly as the launchers launch it.

The interpreter accepts code the compiler rejects (a global that is not a constexpr object,
a method on a Python float, a dtype mismatch in a loop-carried value), so CI runs the
launchers on small CPU tensors in a process without TRITON_INTERPRET, with a stand-in sm_90
driver (``perf/sass.py``): each launch is compiled by the JIT's own ``warmup`` instead of being
run. The flag combinations cover every constexpr branch of both kernels.
"""

import os
import subprocess
import sys

import pytest

_COMPILE_FOR_GPU = r"""
import torch
from perf import sass

sass.install_stand_in_driver()

from triton_focal.kernels.grad_mode import GRAD_ALWAYS, GRAD_BACKWARD, GRAD_IF_POLICY, GRAD_NONE
from triton_focal.ops import denominators, distribution_focal, inplace_grad, sigmoid_focal, softmax_focal, vocab_shard
from triton_focal.ops.softmax_options import SoftmaxOptions
from triton_focal.sigmoid_term import SigmoidTerm

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
sigmoid_focal._sigmoid_focal_kernel = CompileInsteadOfLaunch(sigmoid_focal._sigmoid_focal_kernel)
inplace_grad._scale_grad_by_scalar_kernel = CompileInsteadOfLaunch(inplace_grad._scale_grad_by_scalar_kernel)
denominators._target_count_kernel = CompileInsteadOfLaunch(denominators._target_count_kernel)
distribution_focal._distribution_focal_kernel = CompileInsteadOfLaunch(distribution_focal._distribution_focal_kernel)
for name in ("_shard_stats_kernel", "_shard_smoothing_kernel", "_shard_grad_kernel"):
    setattr(vocab_shard, name, CompileInsteadOfLaunch(getattr(vocab_shard, name)))

# Softmax: channels-first (few classes: the one-read kernel, with every option it takes; many
# classes or label smoothing: the class-step kernel) and rows (short and long), every option,
# every gradient mode, float64.
for shape, dtype, options, modes in [
    ((2, 19, 64), torch.bfloat16, dict(reduction="mean"), (GRAD_IF_POLICY, GRAD_BACKWARD)),
    ((2, 32, 64), torch.float16, dict(reduction="none", z_loss=1e-4, gamma="class", alpha="class", weight=True),
     (GRAD_ALWAYS, GRAD_BACKWARD)),
    ((2, 5, 64), torch.float32, dict(reduction="sum", gamma=0.5), (GRAD_NONE, GRAD_ALWAYS)),
    ((2, 150, 64), torch.bfloat16, dict(reduction="mean"), (GRAD_IF_POLICY, GRAD_BACKWARD)),
    ((8, 33000, 1), torch.float16, dict(reduction="none", label_smoothing=0.1, z_loss=1e-4, softcap=30.0,
                                       gamma="class", alpha="class", weight=True), (GRAD_ALWAYS, GRAD_BACKWARD)),
    ((64, 10, 1), torch.float32, dict(reduction="sum", gamma=0.5), (GRAD_NONE,)),
    # a few short rows: a tile with fewer elements than threads unless the launcher grows it
    ((5, 7, 1), torch.float32, dict(reduction="mean", label_smoothing=0.1, weight=True),
     (GRAD_IF_POLICY, GRAD_BACKWARD)),
    ((2, 7, 16), torch.float64, dict(reduction="mean", label_smoothing=0.2, z_loss=1e-3), (GRAD_IF_POLICY,)),
]:
    x = torch.randn(shape).to(dtype)
    target = torch.randint(0, shape[1], (shape[0], shape[2]))
    c = shape[1]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    gamma = torch.rand(c, dtype=acc) if options.pop("gamma", 2.0) == "class" else 2.0
    alpha = torch.rand(c, dtype=acc) if options.pop("alpha", None) == "class" else 1.0
    weight = torch.rand(c, dtype=acc) if options.pop("weight", False) else None
    options = dict(dict(label_smoothing=0.0, z_loss=0.0, softcap=None), **options)
    options = SoftmaxOptions(gamma, alpha, weight, -100, **options)
    denominators = softmax_focal.mean_denominators(target, options, acc)
    for mode in modes:
        grad = torch.empty_like(x) if mode != GRAD_NONE else None
        grad_output = None
        if mode == GRAD_BACKWARD:
            grad_output = torch.ones(()) if options.reduction != "none" else torch.ones(shape[0], shape[2])
        softmax_focal.softmax_focal_launch(
            x, target, options, denominators=denominators, grad_mode=mode, grad=grad,
            grad_output=grad_output, stored=torch.zeros(1, dtype=torch.int32), skip_if_stored=mode == GRAD_BACKWARD)

# Sigmoid: class indices with every option, dense targets with per-class gamma, FL*, float64, and
# the focal family (QFL and VFL with class indices and scores, ASL, Poly-1).
for shape, dtype, index, score, term, options, modes in [
    ((64, 80, 1), torch.bfloat16, True, False, SigmoidTerm("focal", alpha=0.25, gamma=2.0),
     dict(weight=True, reduce=True), (GRAD_IF_POLICY, GRAD_BACKWARD)),
    ((2, 5, 64), torch.float16, False, False, SigmoidTerm("focal", alpha=-1.0, gamma=0.0),
     dict(class_gamma=True, reduce=False), (GRAD_ALWAYS, GRAD_BACKWARD)),
    ((16, 7, 1), torch.float32, False, False, SigmoidTerm("star", alpha=0.25, gamma=1.5), dict(reduce=True),
     (GRAD_NONE,)),
    ((16, 7, 1), torch.float64, True, False, SigmoidTerm("focal", alpha=0.25, gamma=0.5, poly_epsilon=1.0),
     dict(reduce=True), (GRAD_IF_POLICY,)),
    # float64 with soft targets: the clamp of an infinite logit (Triton 3.6 cannot lower its float32 form)
    ((16, 7, 1), torch.float64, False, False, SigmoidTerm("focal", alpha=0.25, gamma=2.0), dict(reduce=True),
     (GRAD_IF_POLICY,)),
    ((16, 7, 1), torch.float64, True, True, SigmoidTerm("quality", gamma=2.0), dict(reduce=True), (GRAD_IF_POLICY,)),
    ((64, 80, 1), torch.bfloat16, True, True, SigmoidTerm("quality", gamma=2.0), dict(reduce=True),
     (GRAD_IF_POLICY, GRAD_BACKWARD)),
    ((64, 80, 1), torch.bfloat16, True, True, SigmoidTerm("varifocal", alpha=0.75, gamma=2.0), dict(reduce=True),
     (GRAD_IF_POLICY, GRAD_BACKWARD)),
    ((64, 80, 1), torch.float32, False, False, SigmoidTerm("varifocal", alpha=0.75, gamma=1.5, detach_weight=True),
     dict(reduce=False), (GRAD_ALWAYS,)),
    ((64, 100, 1), torch.bfloat16, False, False,
     SigmoidTerm("asymmetric", gamma=0.0, gamma_neg=4.0, clip=0.05, eps=1e-8), dict(reduce=True),
     (GRAD_IF_POLICY, GRAD_BACKWARD)),
]:
    x = torch.randn(shape).to(dtype)
    target = torch.randint(0, shape[1] + 1, (shape[0], shape[2])) if index else torch.rand(shape).to(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    weight = torch.rand(shape[0], 1, 1).expand(shape) if options.pop("weight", False) else None
    class_gamma = torch.rand(shape[1], dtype=acc) if options.pop("class_gamma", False) else None
    score = torch.rand(shape[0], shape[2]) if score else None
    for mode in modes:
        grad = torch.empty_like(x) if mode != GRAD_NONE else None
        grad_output = None
        if mode == GRAD_BACKWARD:
            grad_output = torch.ones(()) if options["reduce"] else torch.ones(shape)
        sigmoid_focal.sigmoid_focal_launch(
            x, target, score=score, weight=weight, class_gamma=class_gamma, term=term, ignore_index=-100,
            denominator=torch.ones(()), grad_mode=mode, grad=grad, grad_output=grad_output,
            stored=torch.zeros(1, dtype=torch.int32), skip_if_stored=mode == GRAD_BACKWARD, **options)

# Distribution focal loss: YOLOv8's 16 bins (mask, per-anchor weight, sum over a normalizer tensor),
# GFL's 17 (weight per row, expectation, mean), float64; every gradient mode, both cotangents.
for shape, dtype, options, modes in [
    ((64, 16), torch.bfloat16, dict(mask=True, weight=4, reduce=True, denominator=torch.ones(())),
     (GRAD_IF_POLICY, GRAD_BACKWARD)),
    ((64, 17), torch.float16, dict(weight=1, reduce=False, denominator=None, with_expectation=True),
     (GRAD_NONE, GRAD_BACKWARD)),
    ((64, 16), torch.float32, dict(weight=32, reduce=True, denominator=64.0), (GRAD_ALWAYS,)),
    ((16, 16), torch.float64, dict(mask=True, reduce=True, denominator=torch.ones(())), (GRAD_IF_POLICY,)),
]:
    x = torch.randn(shape).to(dtype)
    target = torch.rand(shape[0]) * (shape[1] - 1)
    mask = torch.rand(shape[0]) > 0.5 if options.pop("mask", False) else None
    group = options.pop("weight", 0)
    weight = torch.rand(shape[0] // group, 1).expand(-1, group) if group else None
    expect = options.pop("with_expectation", False)
    for mode in modes:
        grad = torch.empty_like(x) if mode != GRAD_NONE else None
        backward = mode == GRAD_BACKWARD
        grad_output = (torch.ones(()) if options["reduce"] else torch.ones(shape[0])) if backward else None
        distribution_focal.distribution_focal_launch(
            x, target, mask=mask, weight=weight, with_expectation=expect and not backward, grad_mode=mode, grad=grad,
            grad_output=grad_output, grad_expectation=torch.ones(shape[0]) if backward and expect else None,
            stored=torch.zeros(1, dtype=torch.int32), skip_if_stored=backward and not expect, **options)

# The in-place rescale of an inplace_grad gradient.
for dtype in (torch.bfloat16, torch.float64):
    inplace_grad._scale_stored_grad_op._init_fn(torch.randn(4, 3, 5).to(dtype), torch.tensor(2.0))

# The vocabulary-parallel steps: every option, float32 and float64.
for dtype, gamma, weighted, softcap in [(torch.float32, 2.0, False, None), (torch.float64, "class", True, 30.0)]:
    x = torch.randn(4, 1000, dtype=dtype)
    rows = torch.zeros(4, dtype=dtype)
    target = torch.tensor([0, -1, 5, 999])
    gamma = torch.rand(1000, dtype=dtype) if gamma == "class" else gamma
    weight = torch.rand(1000, dtype=dtype) if weighted else None
    vocab_shard.shard_softmax_stats(x, target, softcap)
    vocab_shard.shard_smoothing_sums(x, rows, softcap, gamma, weight)
    for smooth in (None, rows):
        vocab_shard.shard_focal_grad(x, rows, rows, rows, smooth, target, softcap, gamma, weight)

names = {name for name, _, _ in compiled}
assert names == {"_softmax_focal_kernel", "_softmax_focal_one_read_kernel", "_sigmoid_focal_kernel",
                 "_scale_grad_by_scalar_kernel",
                 "_target_count_kernel", "_shard_stats_kernel", "_shard_smoothing_kernel", "_shard_grad_kernel",
                 "_distribution_focal_kernel"}, names
no_spills = ("_distribution_focal_kernel", "_softmax_focal_one_read_kernel")
spilled = {(name, local) for name, _, local in compiled if name in no_spills and local}
assert not spilled, spilled
print("compiled", len(compiled))
"""


def test_kernels_compile_for_a_gpu_target():
    pytest.importorskip("triton.backends.nvidia")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE_FOR_GPU], env=env, capture_output=True, text=True, timeout=900, cwd=root
    )
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
