"""The ``torch.compile`` backend: the closed-form losses of ``_compiled_math``, fused by Inductor.

Each loss is a ``torch.autograd.Function`` whose forward is one compiled function with no
autograd graph inside (``retain_graph=True``, ``gradcheck`` and activation checkpointing work
as with any autograd function; a second derivative raises; under ``torch.func`` transforms
the public functions run the reference instead). Where
the logits require grad, that function also writes the gradient for ``grad_output == 1``,
in a pass right after the loss's (the softmax loss from a few numbers per row, the sigmoid
loss from the same intermediates as the loss): the backward of plain ``loss.backward()``
then hands that buffer over and does nothing, and any other ``grad_output`` costs one
multiply. The gradient is allocated in the forward instead of the backward: memory at
the start of the backward, where a training step peaks, is the same.

Compilation, and what it costs:

- One compiled function per *static configuration*: the loss, the reduction, which optional
  terms are present (alpha, weight, label smoothing, z-loss, softcap; scalar or per-class
  gamma and alpha), the dtypes, device and memory layout. The values that vary between calls
  (gamma, alpha, eps, z-loss and softcap coefficients, ignore_index) are passed as 0-dim
  tensors and every size is dynamic, batch size 1 included, so none of them recompiles and
  no function approaches torch's recompile limit.
- The first call of a configuration compiles it (seconds on a CPU) and says so once, with a
  :class:`CompileNotice` warning that names the configuration and how to skip compiling.
  Inductor's on-disk cache makes later processes faster.
- If compilation cannot run (no C++ compiler, Triton missing for a GPU, an Inductor failure),
  that configuration runs the same closed-form math eagerly, with one warning. Any other
  exception (a user error, checkpointing's recomputation signal) propagates unchanged and
  changes nothing for later calls.
"""

import contextlib
import dataclasses
import hashlib
import inspect
import types
import warnings

import torch
import torch._dynamo.exc
import torch._inductor.exc
import torch.fx.experimental._config

from . import _compiled_math as math_
from . import _validation, reference
from ._autograd_state import functorch_active as _functorch_active
from ._autograd_state import graph_is_kept
from ._warnings import user_stacklevel
from .reference import compute_dtype
from .sigmoid_term import SigmoidTerm


class CompileNotice(UserWarning):
    """Emitted once per configuration, when the compile backend starts compiling it."""


SKIP_HINT = "to skip compiling, pass backend='reference' or set TRITON_FOCAL_BACKEND=reference"

# Exceptions that mean "this configuration cannot be compiled here", as opposed to an error
# of the call itself. Inductor wraps compiler failures in BackendCompilerFailed.
_COMPILE_FAILURES = (
    torch._dynamo.exc.BackendCompilerFailed,
    torch._inductor.exc.CppCompileError,
    torch._inductor.exc.InvalidCxxCompiler,
)


@dataclasses.dataclass(frozen=True)
class SoftmaxConfig:
    reduction: str
    rows: bool
    alpha: bool
    weight: bool
    smoothing: bool
    z_loss: bool
    softcap: bool
    poly: bool = False
    element_weight: bool = False
    normalizer: bool = False  # the reduction is then "sum", divided by it


@dataclasses.dataclass(frozen=True)
class SigmoidConfig:
    reduction: str
    alpha: bool
    weight: bool
    index_targets: bool
    term: str = "focal"  # sigmoid_term.KINDS, FL* aside (StarConfig)
    score: bool = False
    poly: bool = False
    iou_weighted: bool = False
    detach_weight: bool = False
    clip: bool = False
    eps: bool = False


@dataclasses.dataclass(frozen=True)
class StarConfig:
    reduction: str
    alpha: bool


class _Compiled:
    """The compiled math of one static configuration (a forward, and a backward or a forward
    that also returns the gradient), and its eager fallback.

    Each compiled function is a fresh copy of the math function (its own code object),
    because Dynamo keeps its cache, and counts recompilations against the limit, per code
    object.
    """

    def __init__(self, key, description, cfg, rows, functions):
        self.description = description
        self.cfg = cfg
        self.rows = rows
        self.eager = functions
        # Planned for the threads of this moment; a call may run on fewer (_threads_for).
        self.planned_threads = max(torch.get_num_threads(), 1)
        options = dict(_INDUCTOR_OPTIONS, **{"cpp.threads": self.planned_threads})
        self.compiled = {
            name: torch.compile(_fresh_copy(fn, key), dynamic=True, options=options) for name, fn in self.eager.items()
        }
        self.failed = False
        # Per function: a training step compiles "forward_and_grad", a validation loop (logits
        # without grad, or torch.no_grad()) "forward", and each is a compilation of its own.
        self.announced = set()

    def __call__(self, which, *args):
        # Inside autograd.Function.forward the inputs still say requires_grad, which Dynamo
        # guards on; the math never differentiates, so it sees detached tensors.
        args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        if self.failed or _functorch_active():
            # Under torch.func transforms Dynamo cannot trace, and a failed attempt would mark
            # the function "skip" for the rest of the process: run the same math eagerly.
            return self.eager[which](*args, cfg=self.cfg)
        first = which not in self.announced
        if first:
            self.announced.add(which)
            warnings.warn(
                f"triton_focal: compiling {self.description}, {_WHAT[which]}, once for this process; {SKIP_HINT}",
                CompileNotice,
                stacklevel=user_stacklevel(),
            )
        if self.rows:
            _mark_rows_static(args)
        _mark_bins_static(args, self.cfg)
        _hint_sizes(args, self.rows)
        try:
            # The first call compiles: on every planned thread, so that nothing of the plan
            # depends on the call's size (a recompilation later is planned by cpp.threads).
            with _sizes_not_specialized(), _threads_for(args, self.planned_threads, first):
                return self.compiled[which](*args, cfg=self.cfg)
        except _COMPILE_FAILURES as err:
            self.failed = True
            warnings.warn(
                f"triton_focal: torch.compile cannot compile {self.description} here ({type(err).__name__}: "
                f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}); running its math eagerly",
                RuntimeWarning,
                stacklevel=user_stacklevel(),
            )
            return self.eager[which](*args, cfg=self.cfg)


_WHAT = {
    "forward_and_grad": "loss and gradient (logits that require grad)",
    "forward": "loss only (logits without grad, or under torch.no_grad())",
    "backward": "its backward",
    "loss_and_expectation": "loss and expectation (their gradient in the backward)",
}


# _traced_by_user: when the user's own torch.compile traces a call (a compiled training step),
# the public functions return the reference composition, which joins the user's graph and
# whose backward AOTAutograd derives; nesting our compiled functions or tracing the custom
# Functions (with their saved per-row numbers) through Dynamo is not supported there.


def _gradient_buffer(x):
    """The buffer the compiled forward writes the gradient into (``copy_`` into an input,
    which Inductor stores straight into it).

    Allocated here, before the compiled function allocates its per-row intermediates, the
    logits-sized block comes from the memory the previous step's gradient just freed; left
    to Inductor, it came after them, the allocator returned and re-mapped that memory every
    call, and its page faults cost a third of the loss on a CPU.
    """
    return torch.empty_like(x)  # x's layout: the compiled function is keyed on it


def _scaled_grad(ctx, grad_loss):
    """``grad_output`` times the gradient the forward computed for ``grad_output == 1``.

    Plain ``loss.backward()`` gets the forward's buffer itself: no pass over it at all. It is
    handed out only where nothing reads it again: a kept graph (``retain_graph=True``,
    gradcheck) would find it accumulated into by then, so it gets a product instead.
    """
    if grad_loss is None:  # the loss was not used (gradients are not materialized as zeros)
        return None
    input, grad = ctx.saved_tensors  # once: checkpointing allows one unpack
    plain = (
        grad_loss.dim() == 0
        and grad_loss.device.type == "cpu"  # reading the value costs no device sync
        and not torch.is_grad_enabled()
        and not graph_is_kept()
        and not _functorch_active()
        and grad_loss.item() == 1
    )
    if not plain:
        with torch.no_grad():
            # reduction="none": one grad_output per loss element, broadcast over the classes
            # of softmax rows ((N, P) against (N, C, P)).
            scale = grad_loss.unsqueeze(1) if grad_loss.dim() == grad.dim() - 1 else grad_loss
            grad = grad * scale.to(grad.dtype)
    return _first_order_only(grad, input)


def _first_order_only(grad, input):
    """The gradient, unchanged; under ``create_graph=True`` one that raises if differentiated.

    The backward is closed-form math without a graph of its own, so a second derivative
    through it would silently be 0 (a Hessian-vector product missing the loss's part). The
    raising node takes ``input`` as an input too, so that differentiating with respect to it
    reaches the node (``once_differentiable`` guards only when ``grad_output`` requires grad).
    """
    if not torch.is_grad_enabled() or not input.requires_grad:
        return grad
    error = torch._C._functions.DelayedError(
        b"triton_focal: the compile backend has no second derivative; use backend='reference' "
        b"for double backward (create_graph=True)",
        2,
    )
    return error(grad.detach(), input)[0]


def _fresh_copy(fn, key):
    """``fn`` with a code object of its own, named after the configuration (a digest that is
    the same in every process, so that the names in Inductor's caches and logs are too)."""
    digest = hashlib.sha1(repr(key).encode()).hexdigest()[:10]
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{digest}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def _mark_rows_static(args):
    """Rows ``(N, C, 1)``: the trailing 1 is static, so that Inductor sees the classes at
    stride 1 and vectorizes over them. As a dynamic size it makes the class stride a symbol
    and the generated loops scalar (4x slower on a (512, 32000) vocabulary)."""
    for arg in args:
        if isinstance(arg, torch.Tensor) and arg.dim() >= 2 and arg.shape[-1] == 1:
            torch._dynamo.mark_static(arg, arg.dim() - 1)


def _mark_bins_static(args, cfg):
    """A configuration that fixes a row length (the distribution loss's ``bins``): dimension 1 of
    the ``(R, bins)`` arguments is static, so that Inductor unrolls and vectorizes the short row
    loops. As a dynamic size it left them scalar: forward + backward of (2, 8400, 4, 16) float32
    took 21.5 ms against 2.7 ms static (2 busy CPU cores, best of 12)."""
    bins = getattr(cfg, "bins", None)
    if bins is None:
        return
    for arg in args:
        if isinstance(arg, torch.Tensor) and arg.dim() == 2 and arg.shape[1] == bins:
            torch._dynamo.mark_static(arg, 1)


# How Inductor splits the loops across CPU threads. Its code for dynamic sizes is right for
# every size, but it plans the threading from the sizes of the call that compiles (its
# "hints"), and its on-disk cache reuses that plan in later processes: a function first
# compiled on a small input ran single-threaded on every large one (2x slower on 2 cores),
# and one first compiled with a batch of 4 split only the batch loop, leaving a batch of one
# on one thread. So: no minimum amount of work per thread (``_INDUCTOR_OPTIONS``), and the
# batch is planned as a size that makes Inductor split the batch and pixel loops together
# (``collapse(2)``), which suits every batch.
#
# A plan for large inputs is a parallel region for every loop, and a parallel region costs
# little on an idle machine but a scheduler time slice on a busy one, where a thread waits
# at each barrier for a sibling that is not running: fwd+bwd of a (1, 19, 32, 32) loss took
# 94 ms on 2 busy cores against 1.2 ms on one thread. So each call runs on as many threads
# as its size gives ``_MIN_ELEMENTS_PER_THREAD`` logits each (``_threads_for``): the code
# reads the thread count at run time (``cpp.dynamic_threads``: a plain ``omp parallel``
# and per-thread buffers sized then), so fewer threads than planned is always safe.
_INDUCTOR_OPTIONS = {"cpp.min_chunk_size": 1, "cpp.dynamic_threads": True}
_PLANNED_ROWS = 4096  # rows: many, split across threads
# About a millisecond of loss and gradient per thread on a CPU core: below it a second thread
# saves less than a busy machine's barrier costs (perf/cpu_threads.py measures both sides).
_MIN_ELEMENTS_PER_THREAD = 1 << 18
# Older torch versions have no size hints (mark_dynamic's hint_override): there the plan
# comes from the first call, still threaded (min_chunk_size).
_SIZE_HINTS = "hint_override" in inspect.signature(torch._dynamo.mark_dynamic).parameters


# Below this many logits a CPU call runs the eager reference instead: a compiled call costs
# a fixed few tenths of a millisecond (guards, wrappers) that the reference's few small ops
# do not, and below torch's grain size (32768) every eager op runs on the calling thread, so
# no parallel region either. Measured on 2 cores: (1, 19, 32, 32) fwd+bwd 0.94 ms reference,
# 1.27 ms compiled (perf/cpu_threads.py). The tests set it to 0 (tests/conftest.py) so that
# their small inputs exercise the compiled functions.
EAGER_BELOW = 1 << 15


def _tiny(input):
    return input.device.type == "cpu" and input.numel() < EAGER_BELOW


def call_threads(numel, threads):
    """The threads a CPU call over ``numel`` logits runs on, of ``threads`` available."""
    return max(1, min(threads, numel // _MIN_ELEMENTS_PER_THREAD))


@contextlib.contextmanager
def _threads_for(args, planned, compiling):
    """Run the call on :func:`call_threads` threads (``torch.set_num_threads``, restored after;
    it sets OpenMP's count, which the compiled code reads). Never more than the plan, and the
    full plan when the call may compile (``compiling``) or runs off the CPU."""
    x = next((a for a in args if isinstance(a, torch.Tensor)), None)
    current = torch.get_num_threads()
    if compiling or x is None or x.device.type != "cpu" or current <= 1:
        yield
        return
    numel = max(a.numel() for a in args if isinstance(a, torch.Tensor))
    threads = call_threads(numel, min(current, planned))
    if threads == current:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(current)


def _planned_batch(rows):
    """The batch size to plan for. Rows: many. Positions: fewer images than twice the
    threads and not as many as the threads, so that Inductor splits the batch and pixel
    loops together."""
    if rows:
        return _PLANNED_ROWS
    threads = torch._inductor.config.cpp.threads
    threads = threads if threads >= 1 else torch.get_num_threads()
    return max(2 * threads - 1, 3)


def _hint_sizes(args, rows):
    """Plan the batch dimension of the batch-shaped arguments as :func:`_planned_batch`
    (``mark_dynamic(hint_override=...)``). The hints change no result, but Dynamo evaluates
    the guards it installs on them, and the guards on the batch that these functions produce
    compare it with 1: so only a batch of 2 or more gets a hint (a batch of one, planned as
    itself, already gets the split). Checked with 2 and 16 threads over batches 1 to 40,
    rows and positions, both losses."""
    x = next((a for a in args if isinstance(a, torch.Tensor) and a.dim() == 3), None)
    if not _SIZE_HINTS or x is None or x.device.type != "cpu" or x.shape[0] < 2:
        return  # (the plan is of CPU threads)
    batch, hint = x.shape[0], _planned_batch(rows)
    for arg in args:
        if isinstance(arg, torch.Tensor) and arg.dim() >= 2 and arg.shape[0] == batch:
            torch._dynamo.mark_dynamic(arg, 0, hint_override=hint)


def _sizes_not_specialized():
    """Dynamo specializes a dynamic size on being 0 or 1 (a new version for a batch of one);
    the size-oblivious mode compiles one version for every size. Marking sizes unbacked would
    too, but Inductor's CPU code for unbacked sizes measured 3x slower here."""
    config = torch.fx.experimental._config
    if hasattr(config, "backed_size_oblivious"):
        return config.patch(backed_size_oblivious=True)
    return contextlib.nullcontext()


_REGISTRY = {}


def _compiled_for(key, describe, cfg, input, **functions):
    """The registry's entry for ``key``, created (not yet compiled) on first use;
    ``describe()`` names the configuration in the notices, ``functions`` are its math."""
    entry = _REGISTRY.get(key)
    if entry is None:
        entry = _REGISTRY[key] = _Compiled(key, describe(), cfg, _rows(input) == "rows", functions)
    return entry


def _layout(t):
    """Which dimensions are broadcast (stride 0) and the order of the strides: the memory
    layout Inductor specializes on (channels-first and channels-last compile separately)."""
    if t is None:
        return None
    strides = t.stride()
    return tuple(sorted(range(t.dim()), key=lambda d: (-strides[d], d))), tuple(s == 0 for s in strides)


def _rows(input):
    """``"rows"`` for ``(N, C, 1)`` logits (vocabularies, detection heads), else ``"positions"``."""
    return "rows" if input.shape[2] == 1 else "positions"


def _scalar(value, x):
    """A number as a 0-dim tensor in ``x``'s computation dtype (a tensor keeps its shape)."""
    return torch.as_tensor(value, dtype=compute_dtype(x.dtype), device=x.device)


def _describe(kind, cfg, x, extra):
    parts = [kind, f"reduction={cfg.reduction!r}", str(x.dtype).replace("torch.", "")]
    parts += [name for name, on in dataclasses.asdict(cfg).items() if on is True and name != "rows"]
    parts += [p for p in extra if p]
    parts += ["rows" if x.shape[-1] == 1 else "channels-first" if x.stride(1) != 1 else "channels-last"]
    parts += [x.device.type]
    return "(" + ", ".join(parts) + ")"


# --- softmax ---------------------------------------------------------------------------------


class _SoftmaxFocal(torch.autograd.Function):
    """The forward computes the gradient too (for ``grad_output == 1``); the backward scales it."""

    @staticmethod
    def forward(x, target, gamma, alpha, weight, eps, ignore_index, z_loss, softcap, fn, options=()):
        grad = _gradient_buffer(x)
        loss, out_of_range, target_class = fn(
            "forward_and_grad", x, target, gamma, alpha, weight, eps, ignore_index, z_loss, softcap, grad, *options
        )
        return loss, out_of_range, grad, target_class

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, out_of_range, grad, target_class = output
        ctx.save_for_backward(inputs[0], grad)
        ctx.mark_non_differentiable(out_of_range, grad, target_class)
        ctx.set_materialize_grads(False)  # no logits-sized zeros for the gradient output's gradient

    @staticmethod
    def backward(ctx, grad_loss, *_):
        return (_scaled_grad(ctx, grad_loss),) + (None,) * 10


def softmax_focal_loss(
    input,
    target,
    *,
    gamma,
    alpha,
    weight,
    ignore_index,
    reduction,
    label_smoothing,
    z_loss=0.0,
    softcap=None,
    poly_epsilon=0.0,
    element_weight=None,
    normalizer=None,
):
    """Softmax focal loss of ``(N, C, P)`` logits against ``(N, P)`` class indices (the
    reference's arguments and result, closed-form gradient)."""
    # Inside the user's torch.compile (see _traced_by_user), or nothing to score (C = 0: logsumexp
    # over nothing, which Dynamo refuses; a zero-size batch or spatial dimension, which the
    # size-oblivious compilation cannot trace): the reference composition.
    if torch.compiler.is_compiling() or input.numel() == 0 or target.numel() == 0 or _tiny(input):
        _check_class_indices(target, input.shape[1], ignore_index)
        return reference.softmax_focal_loss(
            input,
            target,
            gamma=gamma,
            alpha=alpha,
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
            poly_epsilon=poly_epsilon,
            element_weight=element_weight,
            normalizer=normalizer,
        )
    divided = normalizer is not None and reduction != "none"
    # A normalizer that requires grad divides outside, where autograd differentiates it.
    outside = divided and isinstance(normalizer, torch.Tensor) and normalizer.requires_grad
    cfg = SoftmaxConfig(
        reduction="sum" if divided else reduction,
        rows=_rows(input) == "rows",
        alpha=alpha is not None,
        weight=weight is not None,
        smoothing=label_smoothing > 0,
        z_loss=z_loss > 0,
        softcap=softcap is not None,
        poly=poly_epsilon != 0,
        element_weight=element_weight is not None,
        normalizer=divided and not outside,
    )
    gamma_t = _scalar(gamma, input)
    alpha_t = _scalar(alpha, input) if alpha is not None else None
    weight_t = _scalar(weight, input) if weight is not None else None
    extra = (
        "per-class gamma" if gamma_t.dim() else "",
        "per-class alpha" if alpha_t is not None and alpha_t.dim() else "",
    )
    key = (
        "softmax",
        cfg,
        input.dtype,
        target.dtype,
        input.device.type,
        gamma_t.dim(),
        extra,
        _layout(input),
        _rows(input),
    )
    if cfg.poly or cfg.element_weight or cfg.normalizer:  # the keys of calls without them stay as they were
        key += (None if element_weight is None else element_weight.dtype, _layout(element_weight))
    describe = lambda: _describe("softmax focal loss", cfg, input, extra)  # noqa: E731
    fn = _compiled_for(
        key, describe, cfg, input, forward=math_.softmax_forward, forward_and_grad=math_.softmax_forward_and_grad
    )
    args = (
        gamma_t,
        alpha_t,
        weight_t,
        _scalar(label_smoothing, input),
        torch.as_tensor(ignore_index, dtype=target.dtype, device=target.device),
        _scalar(z_loss, input),
        _scalar(softcap if softcap is not None else 1.0, input),
    )
    options = ()
    if cfg.poly or cfg.element_weight or cfg.normalizer:
        options = (
            _scalar(poly_epsilon, input),
            element_weight,
            _scalar(normalizer, input) if cfg.normalizer else None,
        )
    if input.requires_grad and torch.is_grad_enabled():
        loss, out_of_range, *_ = _SoftmaxFocal.apply(input, target, *args, fn, options)
    else:
        loss, out_of_range, _ = fn("forward", input, target, *args, *options)
    if out_of_range.device.type == "cpu" and out_of_range.item():
        _check_class_indices(target, input.shape[1], ignore_index)
    if outside:
        loss = (loss.to(compute_dtype(input.dtype)) / normalizer).to(input.dtype)
    return loss


def _check_class_indices(target, num_classes, ignore_index):
    """The public API's error for an out-of-range class index (CPU targets: this backend's
    forward counts them on its pass over the targets, and the public API leaves them to it)."""
    _validation.check_class_indices(target, num_classes, ignore_index, validate=False)


# --- sigmoid ---------------------------------------------------------------------------------


class _SigmoidFocal(torch.autograd.Function):
    """The forward computes the gradient too (for ``grad_output == 1``); the backward scales it."""

    @staticmethod
    def forward(x, target, score, weight, ignore_index, numbers, fn):
        grad = _gradient_buffer(x)
        return fn("forward_and_grad", x, target, score, weight, ignore_index, numbers, grad)[0], grad

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, grad = output
        ctx.save_for_backward(inputs[0], grad)
        ctx.mark_non_differentiable(grad)
        ctx.set_materialize_grads(False)  # no logits-sized zeros for the gradient output's gradient

    @staticmethod
    def backward(ctx, grad_loss, _grad_grad):
        return (_scaled_grad(ctx, grad_loss),) + (None,) * 6


def sigmoid_loss(input, target, score=None, *, term, weight, ignore_index, reduction, normalizer):
    """A one-vs-all sigmoid loss of ``(N, C, P)`` logits against dense ``(N, C, P)`` or
    class-index ``(N, P)`` targets (the reference's arguments and result)."""
    if term.kind == "star":
        return sigmoid_focal_loss_star(input, target, alpha=term.alpha, gamma=term.gamma, reduction=reduction)
    # Inside the user's torch.compile (see _traced_by_user), or an empty input (nothing to
    # compile for): the reference composition.
    if torch.compiler.is_compiling() or input.numel() == 0 or _tiny(input):
        return reference.sigmoid_loss(
            input,
            target,
            score,
            term=term,
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            normalizer=normalizer,
        )
    cfg = SigmoidConfig(
        reduction="sum" if normalizer is not None and reduction != "none" else reduction,
        alpha=term.has_alpha,
        weight=weight is not None,
        index_targets=not target.is_floating_point(),
        term=term.kind,
        score=score is not None,
        poly=term.poly_epsilon != 0,
        iou_weighted=term.iou_weighting,
        detach_weight=term.weight_detached,
        clip=term.clip > 0,
        eps=term.eps > 0,
    )
    numbers = {
        "gamma": _scalar(term.gamma, input),
        "alpha": _scalar(term.alpha, input),
        "poly_epsilon": _scalar(term.poly_epsilon, input),
        "gamma_neg": _scalar(term.gamma_neg, input),
        "clip": _scalar(term.clip, input),
        "log_eps": _scalar(term.log_eps if term.eps > 0 else 0.0, input),
    }
    per_class_gamma = numbers["gamma"].dim() > 0
    extra = ("per-class gamma" if per_class_gamma else "", "normalizer" if normalizer is not None else "")
    key = (
        "sigmoid",
        cfg,
        input.dtype,
        target.dtype,
        input.device.type,
        per_class_gamma,
        _layout(input),
        _layout(weight),
        _layout(score),
        _rows(input),
    )
    name = {"focal": "sigmoid focal loss", "quality": "quality focal loss", "varifocal": "varifocal loss"}
    describe = lambda: _describe(name.get(term.kind, "asymmetric loss"), cfg, input, extra)  # noqa: E731
    fn = _compiled_for(
        key, describe, cfg, input, forward=math_.sigmoid_forward, forward_and_grad=math_.sigmoid_forward_and_grad
    )
    ignore = torch.as_tensor(ignore_index, dtype=target.dtype, device=target.device) if cfg.index_targets else None
    args = (score, weight, ignore, numbers)
    if input.requires_grad and torch.is_grad_enabled():
        loss = _SigmoidFocal.apply(input, target, *args, fn)[0]
    else:
        loss = fn("forward", input, target, *args)[0]
    if normalizer is not None and reduction != "none":
        loss = (loss.to(compute_dtype(input.dtype)) / normalizer).to(input.dtype)
    return loss


def sigmoid_focal_loss(input, target, *, alpha, gamma, weight, ignore_index, reduction, normalizer):
    """One-vs-all sigmoid focal loss (:func:`sigmoid_loss` of the focal term)."""
    return sigmoid_loss(
        input,
        target,
        term=SigmoidTerm("focal", alpha=alpha, gamma=gamma),
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        normalizer=normalizer,
    )


# --- FL* -------------------------------------------------------------------------------------


class _SigmoidFocalStar(torch.autograd.Function):
    @staticmethod
    def forward(x, target, gamma, alpha, fn):
        return fn("forward", x, target, gamma, alpha)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, target, gamma, alpha, fn = inputs
        ctx.save_for_backward(x, target, gamma, alpha)
        ctx.fn = fn

    @staticmethod
    def backward(ctx, grad_loss):
        saved = ctx.saved_tensors  # once: checkpointing allows one unpack
        with torch.no_grad():
            grad = ctx.fn("backward", grad_loss, *saved)
        return _first_order_only(grad, saved[0]), None, None, None, None


def sigmoid_focal_loss_star(input, target, *, alpha, gamma, reduction):
    """FL* of logits against dense targets of the same shape (the reference's arguments)."""
    if torch.compiler.is_compiling() or input.numel() == 0 or _tiny(input):  # see sigmoid_focal_loss
        return reference.sigmoid_focal_loss_star(input, target, alpha=alpha, gamma=gamma, reduction=reduction)
    cfg = StarConfig(reduction=reduction, alpha=alpha >= 0)
    x, t = input.reshape(1, 1, -1), target.reshape(1, 1, -1)
    key = ("star", cfg, input.dtype, target.dtype, input.device.type, _layout(x), _layout(t), "positions")
    describe = lambda: _describe("sigmoid focal loss star", cfg, x, ())  # noqa: E731
    fn = _compiled_for(key, describe, cfg, x, forward=math_.star_forward, backward=math_.star_backward)
    args = (_scalar(gamma, input), _scalar(alpha, input))
    if input.requires_grad and torch.is_grad_enabled():
        loss = _SigmoidFocalStar.apply(x, t, *args, fn)
    else:
        loss = fn("forward", x, t, *args)
    return loss.reshape(input.shape) if reduction == "none" else loss


# --- distribution focal loss -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DistributionConfig:
    reduction: str
    bins: int  # static: one compilation per row length (16 and 17 in practice)
    mask: bool
    weight: bool
    expectation: bool


class _DistributionFocal(torch.autograd.Function):
    """The forward computes the gradient too (for ``grad_output == 1``); the backward scales it."""

    @staticmethod
    def forward(x, target, mask, weight, fn):
        grad = _gradient_buffer(x)
        return fn("forward_and_grad", x, target, mask, weight, grad)[0], grad

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, grad = output
        ctx.save_for_backward(inputs[0], grad)
        ctx.mark_non_differentiable(grad)
        ctx.set_materialize_grads(False)  # no logits-sized zeros for the gradient output's gradient

    @staticmethod
    def backward(ctx, grad_loss, _grad_grad):
        return (_scaled_grad(ctx, grad_loss),) + (None,) * 4


class _DistributionFocalWithExpectation(torch.autograd.Function):
    """Loss and expectation; the backward recomputes the gradient against both cotangents (the
    expectation's, a decoder's, is rarely absent, so a stored gradient would need a read more)."""

    @staticmethod
    def forward(x, target, mask, weight, fn):
        return fn("loss_and_expectation", x, target, mask, weight)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, target, mask, weight, fn = inputs
        ctx.save_for_backward(x, target, mask, weight)
        ctx.fn = fn
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad_loss, grad_expectation):
        x, target, mask, weight = ctx.saved_tensors  # once: checkpointing allows one unpack
        if grad_loss is None and grad_expectation is None:
            return (None,) * 5
        with torch.no_grad():
            if grad_loss is None:
                grad_loss = x.new_zeros(() if ctx.fn.cfg.reduction != "none" else x.shape[:1])
            if grad_expectation is None:
                grad_expectation = x.new_zeros(x.shape[:1])
            grad = ctx.fn("backward", grad_loss, grad_expectation, x, target, mask, weight)
        return (_first_order_only(grad, x),) + (None,) * 4


def distribution_focal_loss(input, target, *, mask, weight, reduction, normalizer, return_expectation=False):
    """Distribution Focal Loss of ``(R, n)`` bin logits against ``(R,)`` positions (the
    reference's arguments and result, closed-form gradient)."""
    # Inside the user's torch.compile (see _traced_by_user), or nothing to compile for: the
    # reference composition.
    if torch.compiler.is_compiling() or input.numel() == 0 or _tiny(input):
        return reference.distribution_focal_loss(
            input,
            target,
            mask=mask,
            weight=weight,
            reduction=reduction,
            normalizer=normalizer,
            return_expectation=return_expectation,
        )
    cfg = DistributionConfig(
        reduction="sum" if normalizer is not None and reduction != "none" else reduction,
        bins=input.shape[1],
        mask=mask is not None,
        weight=weight is not None,
        expectation=return_expectation,
    )
    key = (
        "distribution",
        cfg,
        input.dtype,
        target.dtype,
        input.device.type,
        _layout(input),
        _layout(target),
        _layout(weight),
    )
    describe = lambda: _describe("distribution focal loss", cfg, input.unsqueeze(-1), (f"{cfg.bins} bins",))  # noqa: E731
    fn = _compiled_for(
        key,
        describe,
        cfg,
        input.unsqueeze(-1),  # (R, n, 1): rows, for the threading plan
        forward=math_.dfl_forward,
        forward_and_grad=math_.dfl_forward_and_grad,
        loss_and_expectation=math_.dfl_forward,  # with grad: a compilation (and notice) of its own
        backward=math_.dfl_backward,
    )
    needs_grad = input.requires_grad and torch.is_grad_enabled()
    if return_expectation and needs_grad:
        loss, expectation = _DistributionFocalWithExpectation.apply(input, target, mask, weight, fn)
    elif needs_grad:
        loss, expectation = _DistributionFocal.apply(input, target, mask, weight, fn)[0], None
    else:
        loss, expectation = fn("forward", input, target, mask, weight)
    if normalizer is not None and reduction != "none":
        loss = (loss.to(compute_dtype(input.dtype)) / normalizer).to(input.dtype)
    return (loss, expectation) if return_expectation else loss
