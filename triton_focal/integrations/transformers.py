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
"""

import inspect
import types
from typing import Optional, Union

import torch
import torch.nn.functional as F

from ..functional import focal_loss
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
