"""Focal loss for Hugging Face ``transformers`` causal language models (``pip install triton-focal[hf]``).

Two ways in, both with the focal settings as keyword arguments bound by ``functools.partial``:

* **Swap the loss** (the model still makes the ``(B, S, V)`` logits)::

      from functools import partial
      from triton_focal.integrations.transformers import causal_lm_focal_loss

      model.loss_function = partial(causal_lm_focal_loss, gamma=1.0)          # model(..., labels=...)
      trainer = Trainer(..., compute_loss_func=partial(causal_lm_focal_loss, gamma=1.0))

  ``causal_lm_focal_loss`` has the signature ``transformers`` calls a causal LM's
  ``loss_function`` with, and also accepts the model's output in place of the logits, which
  is how ``Trainer`` calls ``compute_loss_func``. With ``gamma=0`` it equals the library's
  own cross entropy, ``num_items_in_batch`` (gradient accumulation's normalization) included.

* **Never make the logits**: :func:`enable_fused_focal_head` replaces the model's forward
  (when ``labels`` are given) by the base model, then
  :func:`triton_focal.fused_linear_focal_loss` on the final hidden states and the
  ``lm_head`` weight; the output's ``logits`` is None. ``Trainer`` needs no change.

Classification heads (``...ForSequenceClassification``, ``...ForTokenClassification``) compute
their loss inline, so the way in is ``Trainer``'s ``compute_loss_func``::

    trainer = Trainer(..., compute_loss_func=partial(sequence_classification_focal_loss, gamma=2.0, weight=w))
    trainer = Trainer(..., compute_loss_func=partial(token_classification_focal_loss, gamma=2.0))

With ``gamma=0`` they equal the model's own loss (``CrossEntropyLoss``, ``BCEWithLogitsLoss`` for
multi-label), and ``num_items_in_batch`` divides the sum as ``Trainer`` expects.
"""

import inspect
import types
from typing import Optional, Union

import torch
import torch.nn.functional as F

from ..functional import focal_loss, sigmoid_focal_loss
from ..fused_linear import fused_linear_focal_loss


def _shifted_labels(labels, ignore_index, shift_labels):
    """Targets of each position: the next token (``transformers``' shift, padding with ``ignore_index``)."""
    if shift_labels is not None:
        return shift_labels
    return F.pad(labels, (0, 1), value=ignore_index)[..., 1:]


def _normalize(loss_sum, num_items_in_batch):
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss_sum.device)
    return loss_sum / num_items_in_batch


def causal_lm_focal_loss(
    logits,
    labels,
    vocab_size: Optional[int] = None,
    num_items_in_batch: Optional[Union[int, torch.Tensor]] = None,
    ignore_index: int = -100,
    shift_labels: Optional[torch.Tensor] = None,
    *,
    gamma: float = 1.0,
    alpha: Optional[Union[float, torch.Tensor]] = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: Optional[float] = None,
    backend: str = "auto",
    **kwargs,
) -> torch.Tensor:
    """Token-level focal loss of a causal LM: ``transformers``' ``ForCausalLMLoss`` with focal terms.

    Args:
        logits: ``(B, S, V)`` logits, or a model output with a ``logits`` attribute
            (``Trainer``'s ``compute_loss_func`` passes the output).
        labels: ``(B, S)`` token ids; position ``t`` is scored against ``labels[:, t + 1]``
            (the shift ``transformers`` applies), ``ignore_index`` positions are left out.
        vocab_size: the logits' last size (default: read from ``logits``).
        num_items_in_batch: with gradient accumulation, the number of target tokens in the
            whole accumulated batch: the loss is the sum over this micro-batch divided by it.
            None: the mean over this micro-batch's target tokens.
        ignore_index: label value that is not scored.
        shift_labels: already shifted ``(B, S)`` targets (then ``labels`` is not shifted).
        gamma, alpha, label_smoothing, z_loss, softcap, backend: as in
            :func:`triton_focal.focal_loss`. ``softcap`` caps the logits it is given: a model
            whose config caps its logits (Gemma 2's ``final_logit_softcapping``) hands over
            logits already capped, so leave ``softcap=None`` there (a second cap would give
            ``c * tanh(tanh(x / c))``, not the model's logits).
        **kwargs: whatever else the model passes along; ignored.

    Returns:
        The loss, a float32 0-dim tensor.
    """
    logits = getattr(logits, "logits", logits)
    vocab_size = logits.shape[-1] if vocab_size is None else vocab_size
    # As transformers does: the loss is taken from float32 logits.
    logits = logits.float().reshape(-1, vocab_size)
    target = _shifted_labels(labels, ignore_index, shift_labels).reshape(-1).to(logits.device)
    settings = dict(gamma=gamma, alpha=alpha, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
                    ignore_index=ignore_index, backend=backend)
    if num_items_in_batch is None:
        return focal_loss(logits, target, reduction="mean", **settings)
    return _normalize(focal_loss(logits, target, reduction="sum", **settings), num_items_in_batch)


def fused_causal_lm_focal_loss(
    model,
    input_ids: Optional[torch.Tensor] = None,
    labels: Optional[torch.Tensor] = None,
    *,
    num_items_in_batch: Optional[Union[int, torch.Tensor]] = None,
    ignore_index: int = -100,
    shift_labels: Optional[torch.Tensor] = None,
    gamma: float = 1.0,
    alpha: Optional[Union[float, torch.Tensor]] = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: Optional[float] = None,
    backend: str = "auto",
    chunk_size: Optional[int] = None,
    **model_kwargs,
) -> torch.Tensor:
    """The loss :func:`causal_lm_focal_loss` gives on ``model``'s logits, without making them.

    Runs ``model``'s base model (``model.base_model``) and applies
    :func:`triton_focal.fused_linear_focal_loss` to its last hidden states and
    ``model.get_output_embeddings()`` (weight and bias). A model that softcaps its final
    logits (``config.final_logit_softcapping``, Gemma 2) gets that cap, once; a different
    ``softcap`` for such a model is refused (``ValueError``).

    Args:
        model: a ``transformers`` causal LM (``...ForCausalLM``).
        input_ids, labels, num_items_in_batch, ignore_index, shift_labels: as for the model's
            forward and :func:`causal_lm_focal_loss`.
        gamma, alpha, label_smoothing, z_loss, softcap, backend, chunk_size: the focal
            settings and the rows per chunk of :func:`triton_focal.fused_linear_focal_loss`.
        **model_kwargs: passed to the base model (``attention_mask``, ``position_ids``, ...).

    Returns:
        The loss, a float32 0-dim tensor.
    """
    if labels is None and shift_labels is None:
        raise ValueError("labels (or shift_labels) are needed to compute the loss")
    head = model.get_output_embeddings()
    model_cap = getattr(model.config, "final_logit_softcapping", None)
    if softcap is not None and model_cap is not None and float(softcap) != float(model_cap):
        raise ValueError(
            f"softcap={softcap} but the model caps its logits itself (config.final_logit_softcapping="
            f"{model_cap}), and applies only one cap; leave softcap=None to train with the model's cap"
        )
    if softcap is None:
        softcap = model_cap
    outputs = model.base_model(input_ids=input_ids, **model_kwargs)
    hidden = outputs[0] if isinstance(outputs, tuple) else outputs.last_hidden_state
    target = _shifted_labels(labels, ignore_index, shift_labels).reshape(-1).to(hidden.device)
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss = fused_linear_focal_loss(
        hidden.reshape(-1, hidden.shape[-1]), head.weight, target, head.bias, chunk_size=chunk_size, gamma=gamma,
        alpha=alpha, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, ignore_index=ignore_index,
        reduction=reduction, backend=backend,
    ).float()
    return loss if num_items_in_batch is None else _normalize(loss, num_items_in_batch)


def enable_fused_focal_head(model, **settings):
    """Make ``model(..., labels=...)`` compute its loss with :func:`fused_causal_lm_focal_loss`.

    The returned output has the loss and ``logits=None``: the ``(B, S, V)`` logits are
    never made. Without ``labels`` the model's own forward runs (inference, generation).

    Args:
        model: a ``transformers`` causal LM; its ``forward`` is replaced on this instance.
        **settings: the focal settings of :func:`fused_causal_lm_focal_loss`.

    Returns:
        ``model``.
    """
    model._triton_focal_settings = dict(settings)
    # A method bound to this instance, not a closure over it: copy.deepcopy of the model binds
    # the copy's forward to the copy (its own weights and settings).
    model.forward = types.MethodType(_fused_head_forward, model)
    return model


_LOSS_ARGUMENTS = ("labels", "num_items_in_batch", "shift_labels")


def _fused_head_forward(self, *args, **kwargs):
    """The forward :func:`enable_fused_focal_head` installs. Positional arguments keep the
    meaning they have in the model's own forward (``model(input_ids, attention_mask)``)."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    original_forward = type(self).forward
    if args:
        names = [
            name for name, parameter in inspect.signature(original_forward).parameters.items()
            if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
        ][1:]  # without self
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__}.forward takes at most {len(names)} positional arguments, got {len(args)}")
        for name, value in zip(names, args):
            if name in kwargs:
                raise TypeError(f"{type(self).__name__}.forward got multiple values for argument {name!r}")
            kwargs[name] = value
    if kwargs.get("labels") is None and kwargs.get("shift_labels") is None:
        kwargs.pop("labels", None)
        kwargs.pop("shift_labels", None)
        return original_forward(self, **kwargs)
    loss_arguments = {name: kwargs.pop(name, None) for name in _LOSS_ARGUMENTS}
    input_ids = kwargs.pop("input_ids", None)
    kwargs.pop("logits_to_keep", None)
    loss = fused_causal_lm_focal_loss(self, input_ids, **loss_arguments, **self._triton_focal_settings, **kwargs)
    return CausalLMOutputWithPast(loss=loss, logits=None)


def _on_device(value, logits):
    """A class-weight / alpha tensor moved to the logits' device (a criterion is often built on the CPU)."""
    return value.to(logits.device) if isinstance(value, torch.Tensor) else value


def _classification_logits(logits, name="logits"):
    logits = getattr(logits, "logits", logits)
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor or a model output with .logits, got {type(logits).__name__}")
    return logits.float()  # transformers takes classification losses on float32 logits too


def sequence_classification_focal_loss(
    logits,
    labels: torch.Tensor,
    num_items_in_batch: Optional[Union[int, torch.Tensor]] = None,
    *,
    gamma: float = 2.0,
    alpha: Optional[Union[float, torch.Tensor]] = None,
    weight: Optional[torch.Tensor] = None,
    label_smoothing: float = 0.0,
    problem_type: Optional[str] = None,
    backend: str = "auto",
    **kwargs,
) -> torch.Tensor:
    """Focal loss of a ``...ForSequenceClassification`` head, as ``Trainer``'s ``compute_loss_func``.

    ``problem_type`` follows ``config.problem_type``: None infers it as ``transformers`` does
    (integer labels: ``"single_label_classification"``, float labels:
    ``"multi_label_classification"``; one label column is regression, which has no focal loss).

    * single label: :func:`triton_focal.focal_loss` of ``(B, num_labels)`` logits and ``(B,)``
      labels; ``weight`` and ``label_smoothing`` are ``CrossEntropyLoss``'s, ``alpha`` a number or
      per-class factor, ``-100`` labels are ignored.
    * multi label: :func:`triton_focal.sigmoid_focal_loss` of ``(B, num_labels)`` logits and float
      ``(B, num_labels)`` targets; ``weight`` is ``BCEWithLogitsLoss``'s per-class weight, ``alpha``
      the weight of positives (None: no weighting), the mean over all elements.

    With ``num_items_in_batch`` (``Trainer`` counts the labels that are not -100) the loss is the
    sum divided by it; without, the mean. ``gamma=0`` (and no ``alpha``) gives the model's own loss.

    Args:
        logits: ``(B, num_labels)`` logits or the model's output.
        labels: ``(B,)`` class indices or ``(B, num_labels)`` multi-label targets.
        num_items_in_batch: the accumulated batch's label count (``Trainer`` passes it).
        gamma, alpha, weight, label_smoothing, backend: the focal settings (see above).
        problem_type: ``"single_label_classification"`` or ``"multi_label_classification"``.
        **kwargs: ignored (what a caller passes along).
    """
    logits = _classification_logits(logits)
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a tensor, got {type(labels).__name__}")
    labels = labels.to(logits.device)
    num_labels = logits.shape[-1]
    if problem_type is None:
        if num_labels == 1:
            raise ValueError(
                "one label column is regression in transformers (MSELoss), which has no focal loss; pass "
                "problem_type='multi_label_classification' for a binary sigmoid head"
            )
        problem_type = "multi_label_classification" if labels.is_floating_point() else "single_label_classification"
    alpha, weight = _on_device(alpha, logits), _on_device(weight, logits)
    if problem_type == "single_label_classification":
        settings = dict(gamma=gamma, alpha=alpha, weight=weight, label_smoothing=label_smoothing, backend=backend)
        rows, target = logits.reshape(-1, num_labels), labels.reshape(-1)
        if num_items_in_batch is None:
            return focal_loss(rows, target, reduction="mean", **settings)
        return _normalize(focal_loss(rows, target, reduction="sum", **settings), num_items_in_batch)
    if problem_type == "multi_label_classification":
        if label_smoothing:
            raise ValueError("label_smoothing applies to single-label classification only")
        if alpha is not None and not isinstance(alpha, (int, float)):
            raise TypeError(
                "alpha for multi-label classification must be a number (the weight of positives), "
                f"got {type(alpha).__name__}"
            )
        if weight is not None:
            if not isinstance(weight, torch.Tensor):
                raise TypeError(f"weight must be a tensor, got {type(weight).__name__}")
            weight = weight.to(device=logits.device, dtype=logits.dtype)
        target = labels.to(logits.dtype).reshape(logits.shape)
        settings = dict(gamma=gamma, alpha=-1.0 if alpha is None else alpha, weight=weight, backend=backend)
        if num_items_in_batch is None:
            return sigmoid_focal_loss(logits, target, reduction="mean", **settings)
        return _normalize(sigmoid_focal_loss(logits, target, reduction="sum", **settings), num_items_in_batch)
    raise ValueError(
        f"problem_type must be 'single_label_classification' or 'multi_label_classification', got {problem_type!r}"
    )


def token_classification_focal_loss(
    logits,
    labels: torch.Tensor,
    num_items_in_batch: Optional[Union[int, torch.Tensor]] = None,
    *,
    gamma: float = 2.0,
    alpha: Optional[Union[float, torch.Tensor]] = None,
    weight: Optional[torch.Tensor] = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    backend: str = "auto",
    **kwargs,
) -> torch.Tensor:
    """Focal loss of a ``...ForTokenClassification`` head, as ``Trainer``'s ``compute_loss_func``.

    :func:`triton_focal.focal_loss` of the ``(B, S, num_labels)`` logits viewed as rows against
    ``(B, S)`` labels; ``ignore_index`` (-100: padding, and the sub-word pieces a tokenizer's
    alignment leaves unlabelled) positions are not scored. The mean over the scored tokens (weighted
    by ``weight`` as ``CrossEntropyLoss`` does), or the sum divided by ``num_items_in_batch``.
    ``gamma=0`` gives the model's own ``CrossEntropyLoss``.

    Args:
        logits: ``(B, S, num_labels)`` logits or the model's output.
        labels: ``(B, S)`` label ids.
        num_items_in_batch: the accumulated batch's scored-token count (``Trainer`` passes it).
        gamma, alpha, weight, ignore_index, label_smoothing, backend: as in :func:`triton_focal.focal_loss`.
        **kwargs: ignored.
    """
    logits = _classification_logits(logits)
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a tensor, got {type(labels).__name__}")
    num_labels = logits.shape[-1]
    rows, target = logits.reshape(-1, num_labels), labels.to(logits.device).reshape(-1)
    if target.numel() != rows.shape[0]:
        raise ValueError(f"labels of shape {tuple(labels.shape)} do not match logits of shape {tuple(logits.shape)}")
    settings = dict(gamma=gamma, alpha=_on_device(alpha, logits), weight=_on_device(weight, logits),
                    ignore_index=ignore_index, label_smoothing=label_smoothing, backend=backend)
    if num_items_in_batch is None:
        return focal_loss(rows, target, reduction="mean", **settings)
    return _normalize(focal_loss(rows, target, reduction="sum", **settings), num_items_in_batch)
