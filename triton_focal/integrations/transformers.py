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

RT-DETR (``RTDetrForObjectDetection``, ``RTDetrV2ForObjectDetection``) scores its classes with the
Varifocal Loss, ``RTDetrLoss.loss_labels_vfl``; its criterion also has a sigmoid focal and a BCE label
loss (``loss_labels_focal``, ``loss_labels_bce``). :func:`rt_detr_varifocal_loss_labels`,
:func:`rt_detr_focal_loss_labels` and :func:`rt_detr_bce_loss_labels` are those methods fused (same
signature, same result, no one-hot or dense ``(B, Q, C)`` targets), and
:func:`enable_fused_rt_detr_losses` (or ``with fused_rt_detr_losses(): ...``) installs all three;
:func:`enable_fused_rt_detr_varifocal` installs the Varifocal one only::

    from triton_focal.integrations.transformers import enable_fused_rt_detr_losses

    enable_fused_rt_detr_losses()      # every RTDetrLoss, including the one the model builds per forward
"""

import contextlib
import functools
import inspect
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
    settings = dict(
        gamma=gamma,
        alpha=alpha,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        ignore_index=ignore_index,
        backend=backend,
    )
    return _mean_or_normalized(focal_loss, logits, target, num_items_in_batch, settings)


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
    model = _unwrap_peft(model)
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
    rows, head_weight, head_bias = _head_projection(head, hidden.reshape(-1, hidden.shape[-1]))
    loss = fused_linear_focal_loss(
        rows,
        head_weight,
        target,
        head_bias,
        chunk_size=chunk_size,
        gamma=gamma,
        alpha=alpha,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        ignore_index=ignore_index,
        reduction=reduction,
        backend=backend,
    ).float()
    return loss if num_items_in_batch is None else _normalize(loss, num_items_in_batch)


def _peft_classes():
    """peft's model wrappers and tuner layer, or None without peft (then no model is wrapped)."""
    try:
        from peft import PeftModel
        from peft.tuners.lora import Linear as LoraLinear
        from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
    except ImportError:
        return None
    return (PeftModel, BaseTuner), BaseTunerLayer, LoraLinear


def _unwrap_peft(model):
    """The ``transformers`` model inside a peft ``PeftModel`` (``get_peft_model``) or tuner model."""
    classes = _peft_classes()
    if classes is None:
        return model
    wrappers = classes[0]
    while isinstance(model, wrappers):
        model = model.get_base_model() if hasattr(model, "get_base_model") else model.model
    return model


def _refuse_head_adapter(head, why):
    raise ValueError(
        f"the fused focal head cannot apply the {type(head).__name__} adapter on lm_head ({why}): leave "
        "'lm_head' out of target_modules (modules_to_save=['lm_head'] trains a full copy of the head and "
        "works with the fused head), or compute the loss from the logits (model.loss_function = "
        "partial(causal_lm_focal_loss, ...)) instead of enable_fused_focal_head"
    )


def _head_projection(head, rows):
    """``(rows', weight, bias)`` with ``rows' @ weight.T + bias == head(rows)``: the output embedding's
    own weight, or, for a LoRA adapter on it, the base weight and the adapters' ``B`` side by side
    (``rows'`` carries ``scale * A(dropout(rows))`` in its extra columns), so that the adapters'
    dropout and gradients are the ones the adapted module gives. Other peft adapters on the head
    are refused (``ValueError``), never ignored."""
    classes = _peft_classes()
    if classes is None or not isinstance(head, classes[1]):
        return rows, head.weight, head.bias
    lora_linear = classes[2]
    if not isinstance(head, lora_linear):
        _refuse_head_adapter(head, "only LoRA adapters on lm_head are applied")
    base = head.get_base_layer()
    if head.disable_adapters:
        if head.merged:
            head.unmerge()  # as the adapted module's own forward does
        return rows, base.weight, base.bias
    if head.merged:  # the base weight holds the adapters
        return rows, base.weight, base.bias
    if getattr(head, "fan_in_fan_out", False):
        _refuse_head_adapter(head, "a fan_in_fan_out base layer")
    columns, weights, bias = [rows], [base.weight], base.bias
    for name in head.active_adapters:
        if name not in head.lora_A.keys():
            continue
        if name in getattr(head, "lora_variant", {}) or getattr(head, "use_dora", {}).get(name, False):
            _refuse_head_adapter(head, f"adapter {name!r} is a LoRA variant (DoRA, ...), not plain LoRA")
        lora_a, lora_b, scaling = head.lora_A[name], head.lora_B[name], head.scaling[name]
        x = rows.to(lora_a.weight.dtype)
        columns.append((lora_a(head.lora_dropout[name](x)) * scaling).to(rows.dtype))
        weights.append(lora_b.weight.to(base.weight.dtype))
        if lora_b.bias is not None:  # lora_bias=True
            extra = (lora_b.bias * scaling).to(base.weight.dtype)
            bias = extra if bias is None else bias + extra
    if len(weights) == 1:
        return rows, base.weight, base.bias
    return torch.cat(columns, dim=1), torch.cat(weights, dim=1), bias


def enable_fused_focal_head(model, **settings):
    """Make ``model(..., labels=...)`` compute its loss with :func:`fused_causal_lm_focal_loss`.

    The returned output has the loss and ``logits=None``: the ``(B, S, V)`` logits are
    never made. Without ``labels`` the model's own forward runs (inference, generation).

    Args:
        model: a ``transformers`` causal LM; its ``forward`` is replaced on this instance. A peft
            model (``get_peft_model``) gets it on the causal LM it wraps, which its own forward
            calls; a LoRA adapter on ``lm_head`` is applied (other adapters there are refused).
        **settings: the focal settings of :func:`fused_causal_lm_focal_loss`.

    Returns:
        ``model``.
    """
    target = _unwrap_peft(model)
    target._triton_focal_settings = dict(settings)
    # An object of a module-level class holding the instance, not a closure over it: copy.deepcopy
    # of the model gives the copy a forward of its own (its own weights and settings), and the
    # model pickles whole (torch.save(model)).
    target.forward = _FusedHeadForward(target)
    return model


class _FusedHeadForward:
    """The forward :func:`enable_fused_focal_head` installs on ``model``: picklable and deep-copyable."""

    def __init__(self, model):
        self.model = model

    def __call__(self, *args, **kwargs):
        return _fused_head_forward(self.model, *args, **kwargs)

    @property
    def __signature__(self):
        # the model's own (Trainer's remove_unused_columns reads the forward's signature)
        signature = inspect.signature(type(self.model).forward)
        return signature.replace(parameters=list(signature.parameters.values())[1:])


_LOSS_ARGUMENTS = ("labels", "num_items_in_batch", "shift_labels")


def _fused_head_forward(self, *args, **kwargs):
    """The forward :func:`enable_fused_focal_head` installs. Positional arguments keep the
    meaning they have in the model's own forward (``model(input_ids, attention_mask)``)."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    original_forward = type(self).forward
    if args:
        names = [
            name
            for name, parameter in inspect.signature(original_forward).parameters.items()
            if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
        ][1:]  # without self
        if len(args) > len(names):
            raise TypeError(
                f"{type(self).__name__}.forward takes at most {len(names)} positional arguments, got {len(args)}"
            )
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


def _mean_or_normalized(loss, logits, target, num_items_in_batch, settings):
    """``loss``'s mean, or (``num_items_in_batch`` given) its sum divided by ``num_items_in_batch``."""
    if num_items_in_batch is None:
        return loss(logits, target, reduction="mean", **settings)
    return _normalize(loss(logits, target, reduction="sum", **settings), num_items_in_batch)


def _classification_labels(labels):
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a tensor, got {type(labels).__name__}")
    return labels


def _classification_logits(logits, name="logits"):
    logits = getattr(logits, "logits", logits)
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor or a model output with .logits, got {type(logits).__name__}"
        )
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
    labels = _classification_labels(labels).to(logits.device)
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
        return _mean_or_normalized(focal_loss, rows, target, num_items_in_batch, settings)
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
        return _mean_or_normalized(sigmoid_focal_loss, logits, target, num_items_in_batch, settings)
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
    _classification_labels(labels)
    num_labels = logits.shape[-1]
    rows, target = logits.reshape(-1, num_labels), labels.to(logits.device).reshape(-1)
    if target.numel() != rows.shape[0]:
        raise ValueError(f"labels of shape {tuple(labels.shape)} do not match logits of shape {tuple(logits.shape)}")
    settings = dict(
        gamma=gamma,
        alpha=_on_device(alpha, logits),
        weight=_on_device(weight, logits),
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        backend=backend,
    )
    return _mean_or_normalized(focal_loss, rows, target, num_items_in_batch, settings)


# --- RT-DETR's label losses --------------------------------------------------------------------


def _rt_detr_num_boxes(num_boxes, logits):
    """``num_boxes`` as the normalizer: a number, or a one-element tensor (as a 0-dim one on the logits' device)."""
    if isinstance(num_boxes, torch.Tensor):
        if num_boxes.numel() != 1:
            raise ValueError(f"num_boxes must be a number or a one-element tensor, got shape {tuple(num_boxes.shape)}")
        return num_boxes.reshape(()).to(logits.device)
    return num_boxes


def _rt_detr_logits(self, outputs, missing):
    """``outputs["logits"]``, checked: ``KeyError(missing)`` without it (transformers' message), ``ValueError``
    unless it is ``(batch, queries, self.num_classes)``."""
    if "logits" not in outputs:
        raise KeyError(missing)
    src_logits = outputs["logits"]
    if src_logits.dim() != 3 or src_logits.shape[-1] != self.num_classes:
        raise ValueError(
            f"outputs['logits'] must be (batch, queries, num_classes={self.num_classes}), "
            f"got shape {tuple(src_logits.shape)}"
        )
    return src_logits


def _rt_detr_target_classes(self, src_logits, targets, indices, idx):
    """transformers' ``(B, Q)`` target classes: each matched query's ground-truth class, ``num_classes``
    (background) off the matched queries. ``idx`` is ``self._get_source_permutation_idx(indices)``."""
    target_classes_original = torch.cat([_target["class_labels"][i] for _target, (_, i) in zip(targets, indices)])
    target_classes = torch.full(src_logits.shape[:2], self.num_classes, dtype=torch.int64, device=src_logits.device)
    target_classes[idx] = target_classes_original.to(target_classes.device)
    return target_classes


def rt_detr_varifocal_loss_labels(self, outputs, targets, indices, num_boxes, log=True, *, backend: str = "auto"):
    """``RTDetrLoss.loss_labels_vfl`` (transformers' RT-DETR and RT-DETRv2 label loss), fused.

    The same signature and result, ``{"loss_vfl": loss}``: the matched queries' targets are their
    ground-truth class with the IoU of their (detached) box as the score, every other query is
    background, and the loss is::

        varifocal_loss(logits.flatten(0, 1), classes.flatten(), iou.flatten(), alpha=self.alpha,
                       gamma=self.gamma, detach_weight=True, reduction="sum", normalizer=num_boxes)

    which is transformers' ``BCE(logits, iou * one_hot) * w`` with the detached weight
    ``w = alpha * sigmoid(logits) ** gamma`` off the target class and the IoU on it, then
    ``.mean(1).sum() * num_queries / num_boxes`` (the sum over num_boxes). ``classes`` and ``iou``
    are ``(B, Q)``, built as transformers builds its target classes; neither the one-hot nor the
    dense ``(B, Q, C)`` score and weight tensors are made. The IoU is rounded to the logits' dtype,
    as transformers rounds it; the loss comes back in that dtype.

    Args:
        self: the ``RTDetrLoss`` (or subclass, or any object with ``num_classes``, ``alpha``,
            ``gamma`` and ``_get_source_permutation_idx``).
        outputs: a dict with ``"logits"`` ``(B, Q, num_classes)`` and ``"pred_boxes"`` ``(B, Q, 4)``
            (center format).
        targets: one dict per image with ``"class_labels"`` and ``"boxes"``.
        indices: the matcher's ``(query indices, target indices)`` per image.
        num_boxes: the normalizer, a positive number (or a one-element tensor).
        log: unused, as in transformers.
        backend: triton_focal's backend.

    Raises:
        KeyError: ``outputs`` lacks ``"pred_boxes"`` or ``"logits"`` (as transformers does).
        ValueError: the logits' last size is not ``self.num_classes``, or ``num_boxes`` is not positive.
    """
    from transformers.image_transforms import center_to_corners_format
    from transformers.loss.loss_for_object_detection import box_iou

    from ..losses.quality_focal import varifocal_loss

    if "pred_boxes" not in outputs:
        raise KeyError("No predicted boxes found in outputs")
    src_logits = _rt_detr_logits(self, outputs, "No predicted logits found in outputs")
    idx = self._get_source_permutation_idx(indices)
    src_boxes = outputs["pred_boxes"][idx]
    target_boxes = torch.cat([_target["boxes"][i] for _target, (_, i) in zip(targets, indices)], dim=0)
    ious, _ = box_iou(center_to_corners_format(src_boxes.detach()), center_to_corners_format(target_boxes))
    ious = torch.diag(ious)

    dtype = src_logits.dtype
    target_classes = _rt_detr_target_classes(self, src_logits, targets, indices, idx)
    target_score = torch.zeros(src_logits.shape[:2], dtype=dtype, device=src_logits.device)
    # detached: transformers' target and weight carry no gradient (the boxes are detached above)
    target_score[idx] = ious.detach().to(device=target_score.device, dtype=dtype)

    loss = varifocal_loss(
        src_logits.flatten(0, 1),
        target_classes.flatten(),
        target_score.flatten(),
        alpha=self.alpha,
        gamma=self.gamma,
        detach_weight=True,
        reduction="sum",
        normalizer=_rt_detr_num_boxes(num_boxes, src_logits),
        backend=backend,
    )
    return {"loss_vfl": loss}


def rt_detr_focal_loss_labels(self, outputs, targets, indices, num_boxes, log=True, *, backend: str = "auto"):
    """``RTDetrLoss.loss_labels_focal`` (transformers' RT-DETR sigmoid focal label loss), fused.

    The same signature and result, ``{"loss_focal": loss}``: the one-vs-all sigmoid focal loss of
    every query against its one-hot class (all zeros for background), then
    ``.mean(1).sum() * num_queries / num_boxes``, that is the sum over num_boxes::

        sigmoid_focal_loss(logits.flatten(0, 1), classes.flatten(), alpha=self.alpha, gamma=self.gamma,
                           reduction="sum", normalizer=num_boxes)

    with ``alpha_t = alpha`` on the target class and ``1 - alpha`` elsewhere (torchvision's
    convention, and that of transformers' ``sigmoid_focal_loss``). ``classes`` is ``(B, Q)``, built
    as transformers builds its target classes (``num_classes``, background, off the matched
    queries); no one-hot is made. The loss comes back in the logits' dtype.

    transformers' own method does not run (5.25, the version tested): it hands its int64 one-hot
    to transformers' DETR ``sigmoid_focal_loss(inputs, targets, num_boxes, alpha, gamma)``, whose BCE
    refuses an integer target (``RuntimeError``); with a float target, that function would read
    ``(self.alpha, self.gamma)`` as ``num_boxes`` and ``alpha`` and return a reduced scalar, which
    the ``.mean(1)`` after it rejects (``IndexError``). This function computes what the call was
    written for (the original RT-DETR's): ``torchvision.ops.sigmoid_focal_loss(logits, one_hot,
    self.alpha, self.gamma, reduction="none")`` on the one-hot in the logits' dtype, then
    transformers' reduction.

    Args:
        self: the ``RTDetrLoss`` (or subclass, or any object with ``num_classes``, ``alpha``,
            ``gamma`` and ``_get_source_permutation_idx``).
        outputs: a dict with ``"logits"`` ``(B, Q, num_classes)``.
        targets: one dict per image with ``"class_labels"``.
        indices: the matcher's ``(query indices, target indices)`` per image.
        num_boxes: the normalizer, a positive number (or a one-element tensor).
        log: unused, as in transformers.
        backend: triton_focal's backend.

    Raises:
        KeyError: ``outputs`` lacks ``"logits"`` (as transformers does).
        ValueError: the logits are not ``(batch, queries, self.num_classes)``, or ``num_boxes`` is not
            positive (or a tensor of more than one element).
    """
    src_logits = _rt_detr_logits(self, outputs, "No logits found in outputs")
    idx = self._get_source_permutation_idx(indices)
    target_classes = _rt_detr_target_classes(self, src_logits, targets, indices, idx)
    loss = sigmoid_focal_loss(
        src_logits.flatten(0, 1),
        target_classes.flatten(),
        alpha=self.alpha,
        gamma=self.gamma,
        reduction="sum",
        normalizer=_rt_detr_num_boxes(num_boxes, src_logits),
        backend=backend,
    )
    return {"loss_focal": loss}


def rt_detr_bce_loss_labels(self, outputs, targets, indices, num_boxes, log=True, *, backend: str = "auto"):
    """``RTDetrLoss.loss_labels_bce`` (transformers' RT-DETR BCE label loss), fused.

    The same signature and result, ``{"loss_bce": loss}``: transformers'
    ``BCE(logits, one_hot * 1.0).mean(1).sum() * num_queries / num_boxes`` (the sum over num_boxes)
    is the focal loss without focusing or alpha weighting::

        sigmoid_focal_loss(logits.flatten(0, 1), classes.flatten(), alpha=-1.0, gamma=0.0,
                           reduction="sum", normalizer=num_boxes)

    ``classes`` is ``(B, Q)``, built as transformers builds its target classes (``num_classes``,
    background, off the matched queries); no one-hot is made. transformers' target
    ``one_hot * 1.0`` is float32, so its loss is float32 for bfloat16 and float16 logits: so is
    this one (it is taken from the logits cast to float32; float64 logits stay float64), and the
    gradient comes back in the logits' dtype. transformers' mixed-dtype BCE rounds part of its
    arithmetic to the logits' dtype, this one computes every term in float32: for bfloat16 logits
    they agree to a few bfloat16 ulps, this one being the closer to the float64 loss.

    Args:
        self: the ``RTDetrLoss`` (or subclass, or any object with ``num_classes`` and
            ``_get_source_permutation_idx``).
        outputs: a dict with ``"logits"`` ``(B, Q, num_classes)``.
        targets: one dict per image with ``"class_labels"``.
        indices: the matcher's ``(query indices, target indices)`` per image.
        num_boxes: the normalizer, a positive number (or a one-element tensor).
        log: unused, as in transformers.
        backend: triton_focal's backend.

    Raises:
        KeyError: ``outputs`` lacks ``"logits"`` (transformers' method raises ``KeyError`` too).
        ValueError: the logits are not ``(batch, queries, self.num_classes)``, or ``num_boxes`` is not
            positive (or a tensor of more than one element).
    """
    src_logits = _rt_detr_logits(self, outputs, "No logits found in outputs")
    idx = self._get_source_permutation_idx(indices)
    target_classes = _rt_detr_target_classes(self, src_logits, targets, indices, idx)
    logits = src_logits.to(torch.promote_types(src_logits.dtype, torch.float32))
    loss = sigmoid_focal_loss(
        logits.flatten(0, 1),
        target_classes.flatten(),
        alpha=-1.0,  # no alpha weighting (None is refused)
        gamma=0.0,
        reduction="sum",
        normalizer=_rt_detr_num_boxes(num_boxes, logits),
        backend=backend,
    )
    return {"loss_bce": loss}


# get_loss's name -> (RTDetrLoss's method, its fused stand-in)
_RT_DETR_LOSSES = {
    "vfl": ("loss_labels_vfl", rt_detr_varifocal_loss_labels),
    "bce": ("loss_labels_bce", rt_detr_bce_loss_labels),
    "focal": ("loss_labels_focal", rt_detr_focal_loss_labels),
}
RT_DETR_LABEL_LOSSES = tuple(_RT_DETR_LOSSES)
# (class, method name) -> transformers' method, while the fused one is installed
_RT_DETR_ORIGINAL = {}


def _rt_detr_loss_class():
    from transformers.loss.loss_rt_detr import RTDetrLoss

    return RTDetrLoss


def _rt_detr_methods(losses):
    """The method names of ``losses`` (``get_loss``'s names: a name or a sequence of them)."""
    names = (losses,) if isinstance(losses, str) else tuple(losses)
    unknown = [name for name in names if name not in _RT_DETR_LOSSES]
    if unknown or not names:
        raise ValueError(f"losses must name some of {RT_DETR_LABEL_LOSSES}, got {losses!r}")
    return [_RT_DETR_LOSSES[name][0] for name in dict.fromkeys(names)]


def enable_fused_rt_detr_losses(backend: str = "auto", losses=RT_DETR_LABEL_LOSSES):
    """Make every ``RTDetrLoss`` compute its label losses with the fused methods.

    Replaces, on the class, ``RTDetrLoss.loss_labels_vfl`` by :func:`rt_detr_varifocal_loss_labels`,
    ``loss_labels_bce`` by :func:`rt_detr_bce_loss_labels` and ``loss_labels_focal`` by
    :func:`rt_detr_focal_loss_labels` (those of ``losses``). ``RTDetrLoss.get_loss`` looks the
    methods up on the instance each call, so existing criteria and the ones
    ``RTDetrForObjectDetection`` / ``RTDetrV2ForObjectDetection`` build per forward use them.
    ``DFineLoss`` and ``Deimv2Loss`` inherit the methods and get them too. Calling it again changes
    the backend; :func:`disable_fused_rt_detr_losses` restores transformers' methods. See
    :func:`fused_rt_detr_losses` for a scoped patch.

    Args:
        backend: triton_focal's backend for the fused methods.
        losses: ``get_loss``'s names of the losses to replace: ``"vfl"``, ``"bce"``, ``"focal"``
            (a name or a sequence; default all three).

    Raises:
        ValueError: ``backend`` is unknown, or ``losses`` names something else.
    """
    from .. import backends

    backends.check_name(backend)
    methods = _rt_detr_methods(losses)
    cls = _rt_detr_loss_class()
    for name, function in _RT_DETR_LOSSES.values():
        if name in methods:
            _RT_DETR_ORIGINAL.setdefault((cls, name), cls.__dict__[name])
            setattr(cls, name, functools.partialmethod(function, backend=backend))


def disable_fused_rt_detr_losses(losses=RT_DETR_LABEL_LOSSES):
    """Give ``RTDetrLoss`` back transformers' own label-loss methods (those of ``losses``, default
    all three; nothing to do for one it has).

    Raises:
        ValueError: ``losses`` names something other than ``"vfl"``, ``"bce"``, ``"focal"``.
    """
    cls = _rt_detr_loss_class()
    for name in _rt_detr_methods(losses):
        original = _RT_DETR_ORIGINAL.pop((cls, name), None)
        if original is not None:
            setattr(cls, name, original)


@contextlib.contextmanager
def fused_rt_detr_losses(backend: str = "auto", losses=RT_DETR_LABEL_LOSSES):
    """:func:`enable_fused_rt_detr_losses` inside a ``with`` block; on leaving it ``RTDetrLoss``
    has the methods it had on entering (transformers' own, or an earlier patch)."""
    methods = _rt_detr_methods(losses)
    cls = _rt_detr_loss_class()
    before = {name: cls.__dict__[name] for name in methods}
    patched_before = {name for name in methods if (cls, name) in _RT_DETR_ORIGINAL}
    enable_fused_rt_detr_losses(backend, losses)
    try:
        yield
    finally:
        for name, method in before.items():
            setattr(cls, name, method)
            if name not in patched_before:
                _RT_DETR_ORIGINAL.pop((cls, name), None)


def enable_fused_rt_detr_varifocal(backend: str = "auto"):
    """Make every ``RTDetrLoss`` compute its ``"vfl"`` loss with :func:`rt_detr_varifocal_loss_labels`:
    :func:`enable_fused_rt_detr_losses` for ``loss_labels_vfl`` alone.

    Replaces ``RTDetrLoss.loss_labels_vfl`` on the class: ``RTDetrLoss.get_loss`` looks the method
    up on the instance each call, so existing criteria and the ones ``RTDetrForObjectDetection`` /
    ``RTDetrV2ForObjectDetection`` build per forward use it. ``DFineLoss`` (and ``Deimv2Loss``, whose
    default losses do not include ``"vfl"``) inherit the method and get it too: it computes what
    theirs computes. Calling it again changes the backend; :func:`disable_fused_rt_detr_varifocal`
    restores transformers' method. See :func:`fused_rt_detr_varifocal` for a scoped patch.

    Raises:
        ValueError: ``backend`` is unknown.
    """
    enable_fused_rt_detr_losses(backend, losses=("vfl",))


def disable_fused_rt_detr_varifocal():
    """Give ``RTDetrLoss`` back transformers' own ``loss_labels_vfl`` (nothing to do if it has it)."""
    disable_fused_rt_detr_losses(losses=("vfl",))


def fused_rt_detr_varifocal(backend: str = "auto"):
    """:func:`enable_fused_rt_detr_varifocal` inside a ``with`` block; on leaving it ``RTDetrLoss``
    has the method it had on entering (transformers' own, or an earlier patch)."""
    return fused_rt_detr_losses(backend, losses=("vfl",))
