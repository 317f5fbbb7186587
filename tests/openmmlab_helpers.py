"""What the mmdetection and mmsegmentation integration tests share: loading the framework's own
focal loss file, building the drop-in from a config, and a few training steps."""

import importlib
import importlib.util
import os
import sys
import types

import pytest
import torch


def load_focal_loss(scope, not_installed, name="focal_loss"):
    """``{scope}/models/losses/{name}.py`` as a module, or (None, why not).

    ``{scope}.models`` imports mmcv's compiled ops; with an mmcv built without them the loss file is
    loaded by itself, with ``mmcv.ops`` (used only on CUDA tensors) stubbed during the load."""
    try:
        return importlib.import_module(f"{scope}.models.losses.{name}"), None
    except ImportError as err:
        why = f"{type(err).__name__}: {err}"
    spec = importlib.util.find_spec(scope)
    if spec is None:
        return None, not_installed
    package = types.ModuleType(f"_{scope}_losses_for_tests")
    package.__path__ = [os.path.join(os.path.dirname(spec.origin), "models", "losses")]
    sys.modules[package.__name__] = package
    stubbed = "mmcv.ops" not in sys.modules
    if stubbed:  # mmcv without compiled ops: its CUDA focal loss is never called on CPU tensors
        sys.modules["mmcv.ops"] = types.SimpleNamespace(sigmoid_focal_loss=None)
    try:
        return importlib.import_module(f"{package.__name__}.{name}"), None
    except Exception as err:  # noqa: BLE001 - the reason is reported in the skip
        return None, f"{scope}.models does not import ({why}) and its {name}.py does not load alone ({err})"
    finally:
        if stubbed:
            del sys.modules["mmcv.ops"]


def build_from_config(tmp_path, scope, file_name, key, loss_dict):
    """Writes a config importing ``triton_focal.integrations.{scope}`` with ``{key} = dict({loss_dict})``
    and builds that loss with ``{scope}.registry.MODELS`` (skips without mmengine or ``scope``)."""
    pytest.importorskip("mmengine")
    registry_module = pytest.importorskip(f"{scope}.registry")
    from mmengine.config import Config

    config = tmp_path / file_name
    config.write_text(
        f"custom_imports = dict(imports=['triton_focal.integrations.{scope}'], allow_failed_imports=False)\n"
        f"{key} = dict({loss_dict})\n"
    )
    cfg = Config.fromfile(str(config))
    registry = registry_module.MODELS
    try:
        importlib.import_module(f"{scope}.models")
    except ImportError:  # mmcv without compiled ops: the registry's lazy import of {scope}.models fails
        registry._imported = True
    return registry.build(cfg[key])


def training_losses(model, step_loss, lr, steps=6):
    """The losses of ``steps`` SGD steps of ``model``; ``step_loss()`` computes one."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = step_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
