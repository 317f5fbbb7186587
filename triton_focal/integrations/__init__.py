"""Adapters to training frameworks, each importing its framework lazily and each an optional extra.

``transformers`` (``[hf]``): causal LM, sequence and token classification losses, RT-DETR's
label losses (Varifocal, focal, BCE); ``mmdet`` (``[mmdet]``) and ``mmseg`` (``[mmseg]``): ``TritonFocalLoss`` in
their ``MODELS`` registries, and in mmdet's ``TritonQualityFocalLoss``, ``TritonVarifocalLoss``,
``TritonDistributionFocalLoss``; ``ultralytics`` (``[ultralytics]``): the fused classification loss of
``v8DetectionLoss`` and its box loss's DFL, and RT-DETR's Varifocal Loss;
``detectron2`` (``[detectron2]``): fvcore's ``sigmoid_focal_loss`` and a class-index RetinaNet
loss; ``torchvision`` (``[torchvision]``): RetinaNet's classification head loss. See
``docs/integrations.md``.
"""
