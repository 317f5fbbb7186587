"""The fused focal head with peft adapters, and a fused model pickled whole.

On a tiny randomly initialized Llama built from a config (no download): a LoRA adapter on
``lm_head`` is applied by the fused head (loss and adapter gradients equal the unfused model's),
``modules_to_save=["lm_head"]`` trains its copy, other adapters on ``lm_head`` are refused,
``enable_fused_focal_head`` takes a peft-wrapped model, and ``torch.save(model)`` round-trips.
"""

import copy
from functools import partial

import pytest
import torch
from helpers import assert_close, hide_broken_torchvision

hide_broken_torchvision()
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft", reason="peft is not installed (pip install peft): the adapter tests need it")

from triton_focal.integrations.transformers import (  # noqa: E402
    causal_lm_focal_loss,
    enable_fused_focal_head,
    fused_causal_lm_focal_loss,
)

VOCAB = 97
SETTINGS = dict(gamma=1.0, label_smoothing=0.1, z_loss=1e-3, backend="reference")


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config).eval()


def batch(seed=0, batch_size=2, length=9):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (batch_size, length), generator=generator)
    labels = input_ids.clone()
    labels[0, :3] = -100
    return input_ids, labels


def lora_model(target_modules, seed=0, **config):
    # init_lora_weights=False: B is not zero, so an ignored adapter changes the loss.
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=target_modules, init_lora_weights=False, **config)
    return peft.get_peft_model(tiny_llama(seed), config)


def unfused_loss_and_grads(model, input_ids, labels, seed=None, **extra):
    """The loss from the logits (causal_lm_focal_loss as the model's loss_function) and the
    gradients of the trainable parameters."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner.loss_function = partial(causal_lm_focal_loss, **SETTINGS)
    if seed is not None:
        torch.manual_seed(seed)
    loss = model(input_ids=input_ids, labels=labels, **extra).loss
    params = [p for p in model.parameters() if p.requires_grad]
    return loss, torch.autograd.grad(loss, params)


def fused_loss_and_grads(model, input_ids, labels, seed=None, **extra):
    if seed is not None:
        torch.manual_seed(seed)
    outputs = model(input_ids=input_ids, labels=labels, **extra)
    assert outputs.logits is None, "the fused head makes no logits"
    params = [p for p in model.parameters() if p.requires_grad]
    return outputs.loss, torch.autograd.grad(outputs.loss, params)


def assert_same(fused, unfused):
    (loss, grads), (want, want_grads) = fused, unfused
    assert_close(loss, want, "loss", rtol=1e-5, atol=1e-6)
    assert len(grads) == len(want_grads) > 0
    for got, expected in zip(grads, want_grads):
        assert_close(got, expected, "adapter gradient", rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("num_items_in_batch", [None, 13])
def test_lora_on_lm_head_is_applied(num_items_in_batch):
    model = lora_model(["lm_head", "q_proj", "v_proj"])
    input_ids, labels = batch()
    extra = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
    unfused = unfused_loss_and_grads(model, input_ids, labels, **extra)
    enable_fused_focal_head(model, **SETTINGS)
    fused = fused_loss_and_grads(model, input_ids, labels, **extra)
    assert_same(fused, unfused)
    head = model.get_base_model().lm_head
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lm_head.lora_B" in n for n in names) and any("lm_head.lora_A" in n for n in names)
    # The base weight alone gives another loss: the adapter is not ignored.
    base_only = fused_causal_lm_focal_loss(tiny_llama(), input_ids, labels, **SETTINGS)
    assert (fused[0] - base_only).abs().item() > 1e-3
    assert head.lora_B["default"].weight.requires_grad


def test_lora_dropout_on_lm_head_in_training_matches():
    """With lora_dropout in training, the fused head drops the same entries the adapted module does
    (the same random draws, in the same order)."""
    model = lora_model(["lm_head", "q_proj"], lora_dropout=0.3).train()
    input_ids, labels = batch()
    unfused = unfused_loss_and_grads(model, input_ids, labels, seed=123)
    enable_fused_focal_head(model, **SETTINGS)
    fused = fused_loss_and_grads(model, input_ids, labels, seed=123)
    assert_same(fused, unfused)
    other_draw = fused_loss_and_grads(model, input_ids, labels, seed=7)[0]
    assert (other_draw - fused[0]).abs().item() > 1e-5, "dropout is active"


def test_lm_head_adapter_disabled_and_merged():
    model = lora_model(["lm_head"])
    input_ids, labels = batch()
    enable_fused_focal_head(model, **SETTINGS)
    base_only = fused_causal_lm_focal_loss(tiny_llama(), input_ids, labels, **SETTINGS)
    adapted = model(input_ids=input_ids, labels=labels).loss
    with model.disable_adapter():
        assert_close(model(input_ids=input_ids, labels=labels).loss, base_only, "adapter disabled")
    model.merge_adapter()
    assert_close(model(input_ids=input_ids, labels=labels).loss, adapted, "adapter merged", rtol=1e-5, atol=1e-6)
    with model.disable_adapter():
        assert_close(
            model(input_ids=input_ids, labels=labels).loss, base_only, "merged, then disabled", rtol=1e-5, atol=1e-6
        )


def test_modules_to_save_lm_head_trains_its_copy():
    model = lora_model(["q_proj"], modules_to_save=["lm_head"])
    input_ids, labels = batch()
    with torch.no_grad():  # the trainable copy differs from the original head
        model.get_base_model().lm_head.modules_to_save["default"].weight.mul_(1.5)
    unfused = unfused_loss_and_grads(model, input_ids, labels)
    enable_fused_focal_head(model, **SETTINGS)
    fused = fused_loss_and_grads(model, input_ids, labels)
    assert_same(fused, unfused)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lm_head.modules_to_save" in n for n in names)


def test_other_adapters_on_lm_head_are_refused():
    config = peft.IA3Config(target_modules=["lm_head", "down_proj"], feedforward_modules=["down_proj"])
    model = peft.get_peft_model(tiny_llama(), config)
    enable_fused_focal_head(model, **SETTINGS)
    input_ids, labels = batch()
    with pytest.raises(ValueError, match=r"lm_head.*modules_to_save=\['lm_head'\]"):
        model(input_ids=input_ids, labels=labels)
    with torch.no_grad():  # without labels the model's own forward still runs
        assert model(input_ids=input_ids).logits.shape == (2, 9, VOCAB)


@pytest.mark.parametrize("order", ["peft first", "fused head first"])
def test_enable_on_a_peft_model(order):
    input_ids, labels = batch()
    unfused = unfused_loss_and_grads(lora_model(["q_proj", "v_proj"]), input_ids, labels)
    if order == "peft first":
        model = lora_model(["q_proj", "v_proj"])
        assert enable_fused_focal_head(model, **SETTINGS) is model
    else:
        torch.manual_seed(0)
        config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        model = peft.get_peft_model(enable_fused_focal_head(tiny_llama(), **SETTINGS), config)
    fused = fused_loss_and_grads(model, input_ids, labels)
    assert_same(fused, unfused)
    direct = fused_causal_lm_focal_loss(model, input_ids, labels, **SETTINGS)
    assert_close(direct, unfused[0], "the peft model given directly", rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert model(input_ids=input_ids).logits.shape == (2, 9, VOCAB)


def _round_trip(model, path):
    torch.save(model, path)
    return torch.load(path, weights_only=False)


def test_torch_save_of_a_fused_model_round_trips(tmp_path):
    model = enable_fused_focal_head(tiny_llama(), **SETTINGS)
    input_ids, labels = batch()
    loaded = _round_trip(model, tmp_path / "model.pt")
    want = model(input_ids=input_ids, labels=labels).loss
    got = loaded(input_ids=input_ids, labels=labels)
    assert got.logits is None
    assert_close(got.loss, want, "loss after loading")
    assert loaded._triton_focal_settings == SETTINGS
    with torch.no_grad():  # the loaded model's forward runs the loaded model's weights
        loaded.lm_head.weight.mul_(3.0)
    changed = loaded(input_ids=input_ids, labels=labels).loss
    assert_close(changed, fused_causal_lm_focal_loss(loaded, input_ids, labels, **SETTINGS), "the loaded model's loss")
    assert (changed - want).abs().item() > 1e-3
    assert_close(model(input_ids=input_ids, labels=labels).loss, want, "the original is untouched")
    clone = copy.deepcopy(loaded)
    assert clone.forward.model is clone


def test_torch_save_of_a_fused_peft_model_round_trips(tmp_path):
    model = enable_fused_focal_head(lora_model(["lm_head", "q_proj"]), **SETTINGS)
    input_ids, labels = batch()
    loaded = _round_trip(model, tmp_path / "peft_model.pt")
    want = fused_loss_and_grads(model, input_ids, labels)
    assert_same(fused_loss_and_grads(loaded, input_ids, labels), want)
