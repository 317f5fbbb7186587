"""torchvision RetinaNet: the classification head's loss from class indices (``triton-focal[torchvision]``).

``RetinaNetClassificationHead.compute_loss`` builds a one-hot ``(A, C)`` target per image, drops the
anchors between the matcher's thresholds with a boolean gather (a copy of the logits), and divides
each image's sum by ``max(1, num_foreground)`` (a host sync per image). :func:`retinanet_classification_loss`
gives the same value and gradient in one fused call on the whole batch: each anchor's class index
(its matched box's label, ``C`` for background, ignored between the thresholds), and each image's
``1 / (max(1, num_foreground) * num_images)`` as a per-anchor weight, all on the device.

Three ways in::

    from triton_focal.integrations.torchvision import use_fused_classification_loss
    model = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, num_classes=91)
    use_fused_classification_loss(model)                   # model.head.classification_head, in place

    # or a head built as such (the class is made on first use: torchvision imports lazily)
    from triton_focal.integrations.torchvision import TritonFocalRetinaNetClassificationHead

    # or the function, with compute_loss's arguments
    loss = retinanet_classification_loss(targets, head_outputs, matched_idxs)
"""

from typing import Dict, List

import torch

from ..functional import sigmoid_focal_loss

# torchvision's det_utils.Matcher constants.
BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def anchor_labels(
    targets: List[Dict[str, torch.Tensor]], matched_idxs: List[torch.Tensor], num_classes: int
) -> torch.Tensor:
    """``(N, A)`` class indices: the matched box's label, ``num_classes`` (background) for anchors
    below the low threshold, ``BETWEEN_THRESHOLDS`` (-2) for ignored anchors."""
    if len(targets) != len(matched_idxs):
        raise ValueError(f"targets has {len(targets)} images but matched_idxs has {len(matched_idxs)}")
    rows = []
    for i, (target, matched) in enumerate(zip(targets, matched_idxs)):
        if not isinstance(target, dict) or "labels" not in target:
            raise ValueError(f"targets[{i}] must be a dict with 'labels'")
        labels = target["labels"]
        if labels.is_floating_point():
            raise TypeError(f"targets[{i}]['labels'] must hold integer class indices, got {labels.dtype}")
        background = torch.full_like(matched, num_classes)
        if labels.numel():
            gathered = labels.to(matched.device)[matched.clamp(min=0)]
            row = torch.where(matched >= 0, gathered.to(matched.dtype), background)
        else:
            row = background
        rows.append(torch.where(matched == BETWEEN_THRESHOLDS, torch.full_like(matched, BETWEEN_THRESHOLDS), row))
    return torch.stack(rows)


def retinanet_classification_loss(
    targets: List[Dict[str, torch.Tensor]],
    head_outputs: Dict[str, torch.Tensor],
    matched_idxs: List[torch.Tensor],
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    backend: str = "auto",
) -> torch.Tensor:
    """``RetinaNetClassificationHead.compute_loss(targets, head_outputs, matched_idxs)``, fused.

    Args:
        targets: one dict per image with ``"labels"`` ``(boxes,)`` (class indices in ``[0, C)``).
        head_outputs: ``{"cls_logits": (N, A, C)}``.
        matched_idxs: one ``(A,)`` tensor per image: the matched box, -1 below the low threshold
            (background), -2 between the thresholds (ignored).
        alpha, gamma: ``torchvision.ops.sigmoid_focal_loss``'s (0.25, 2), which RetinaNet uses.
        backend: triton_focal's backend.

    Returns:
        The loss, the mean over images of each image's sum over its valid anchors divided by
        ``max(1, its foreground anchors)``.
    """
    cls_logits = head_outputs["cls_logits"]
    if not isinstance(cls_logits, torch.Tensor) or cls_logits.dim() != 3:
        raise ValueError("head_outputs['cls_logits'] must be an (N, anchors, classes) tensor")
    n, a, c = cls_logits.shape
    if len(targets) != n:
        raise ValueError(f"targets has {len(targets)} images but cls_logits has {n}")
    labels = anchor_labels(targets, matched_idxs, c)
    if labels.shape != (n, a):
        raise ValueError(f"matched_idxs must hold one ({a},) tensor per image, got {tuple(labels.shape)} in all")
    num_foreground = (torch.stack(list(matched_idxs)) >= 0).sum(dim=1).clamp(min=1)
    weight = (1.0 / (num_foreground.to(cls_logits.dtype) * n)).repeat_interleave(a).unsqueeze(1)  # (N * A, 1)
    return sigmoid_focal_loss(
        cls_logits.reshape(n * a, c),
        labels.reshape(-1),
        alpha=alpha,
        gamma=gamma,
        weight=weight,
        reduction="sum",
        ignore_index=BETWEEN_THRESHOLDS,
        backend=backend,
    )


def _compute_loss(self, targets, head_outputs, matched_idxs):
    settings = getattr(self, "triton_focal_settings", {})
    return retinanet_classification_loss(targets, head_outputs, matched_idxs, **settings)


def _head_class():
    from torchvision.models.detection.retinanet import RetinaNetClassificationHead

    cls = type(
        "TritonFocalRetinaNetClassificationHead",
        (RetinaNetClassificationHead,),
        {
            "__module__": __name__,
            "__doc__": "A ``RetinaNetClassificationHead`` whose ``compute_loss`` is the fused one.",
            "compute_loss": _compute_loss,
        },
    )
    globals()[cls.__name__] = cls
    return cls


def __getattr__(name):
    if name == "TritonFocalRetinaNetClassificationHead":
        return _head_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def use_fused_classification_loss(model, *, alpha: float = 0.25, gamma: float = 2.0, backend: str = "auto"):
    """Make a torchvision ``RetinaNet`` (or its ``RetinaNetClassificationHead``) compute the
    classification loss with :func:`retinanet_classification_loss`, in place. Weights, ``state_dict``
    and the forward are unchanged. Returns ``model``."""
    from torchvision.models.detection.retinanet import RetinaNetClassificationHead

    head = getattr(getattr(model, "head", None), "classification_head", model)
    if not isinstance(head, RetinaNetClassificationHead):
        raise TypeError(
            f"model must be a torchvision RetinaNet or RetinaNetClassificationHead, got {type(model).__name__}"
        )
    cls = globals().get("TritonFocalRetinaNetClassificationHead") or _head_class()
    head.__class__ = cls
    head.triton_focal_settings = dict(alpha=alpha, gamma=gamma, backend=backend)
    return model
