"""The Hugging Face drop-in on a tiny randomly initialized Llama built from a config (no download).

gamma=0 equals the model's own loss, with and without ``num_items_in_batch``; the fused head
equals the logits path, value and gradients; a few training steps lower the loss.
"""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, hide_broken_torchvision, skip_unless_on_cpu

hide_broken_torchvision()
transformers = pytest.importorskip("transformers")

import triton_focal  # noqa: E402
from triton_focal.integrations.transformers import (  # noqa: E402
    causal_lm_focal_loss,
    enable_fused_focal_head,
    fused_causal_lm_focal_loss,
)

VOCAB = 97


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
    labels[0, :3] = -100  # a prompt that is not scored
    return input_ids, labels


@pytest.mark.parametrize("num_items_in_batch", [None, 23])
def test_gamma_zero_equals_the_models_own_loss(backend, num_items_in_batch):
    skip_unless_on_cpu(backend)
    model = tiny_llama()
    input_ids, labels = batch()
    extra = {} if num_items_in_batch is None else {"num_items_in_batch": torch.tensor(num_items_in_batch)}
    own = model(input_ids=input_ids, labels=labels, **extra).loss
    own_grads = torch.autograd.grad(own, model.lm_head.weight)

    model.loss_function = partial(causal_lm_focal_loss, gamma=0.0, backend=backend)
    ours = model(input_ids=input_ids, labels=labels, **extra).loss
    grads = torch.autograd.grad(ours, model.lm_head.weight)
    assert ours.dtype == torch.float32
    assert_close(ours, own, "loss", rtol=1e-5, atol=1e-6)
    assert_close(grads[0], own_grads[0], "lm_head gradient", rtol=1e-4, atol=1e-6)


def test_compute_loss_func_signature_takes_the_model_output():
    # Trainer calls compute_loss_func(outputs, labels, num_items_in_batch=...).
    model = tiny_llama()
    input_ids, labels = batch()
    outputs = model(input_ids=input_ids)
    loss = partial(causal_lm_focal_loss, gamma=0.0, backend="reference")(outputs, labels, num_items_in_batch=11)
    expected = (
        F.cross_entropy(outputs.logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), reduction="sum") / 11
    )
    assert_close(loss, expected, "loss", rtol=1e-5, atol=1e-6)


def test_focal_settings_reach_the_loss():
    model = tiny_llama()
    input_ids, labels = batch()
    logits = model(input_ids=input_ids).logits.detach()
    settings = dict(gamma=1.0, alpha=0.5, label_smoothing=0.1, z_loss=1e-3, softcap=2.0, backend="reference")
    loss = causal_lm_focal_loss(logits, labels, VOCAB, **settings)
    expected = triton_focal.focal_loss(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), **settings)
    assert_close(loss, expected, "loss")


@pytest.mark.parametrize("num_items_in_batch", [None, 17])
def test_fused_head_equals_the_logits_path(backend, num_items_in_batch):
    skip_unless_on_cpu(backend)
    settings = dict(gamma=1.0, label_smoothing=0.1, z_loss=1e-3, backend=backend)
    model = tiny_llama()
    input_ids, labels = batch()
    params = [model.lm_head.weight, model.model.norm.weight]

    model.loss_function = partial(causal_lm_focal_loss, **settings)
    extra = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
    expected = model(input_ids=input_ids, labels=labels, **extra).loss
    expected_grads = torch.autograd.grad(expected, params)

    fused = fused_causal_lm_focal_loss(
        model, input_ids, labels, num_items_in_batch=num_items_in_batch, chunk_size=5, **settings
    )
    grads = torch.autograd.grad(fused, params)
    assert_close(fused, expected, "loss", rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected_grads):
        assert_close(got, want, "gradient", rtol=1e-4, atol=1e-6)


def test_enable_fused_focal_head_trains_without_logits():
    model = tiny_llama().train()
    enable_fused_focal_head(model, gamma=1.0, backend="reference")
    input_ids, labels = batch(length=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        outputs = model(input_ids=input_ids, labels=labels)
        assert outputs.logits is None
        optimizer.zero_grad()
        outputs.loss.backward()
        optimizer.step()
        losses.append(outputs.loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    with torch.no_grad():  # without labels the model's own forward runs
        assert model(input_ids=input_ids).logits.shape == (2, 16, VOCAB)


def test_deepcopy_of_a_fused_model_uses_its_own_weights():
    import copy

    model = enable_fused_focal_head(tiny_llama(), gamma=1.0, backend="reference")
    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.get_output_embeddings().weight.mul_(3.0)
    input_ids, labels = batch()
    expected = fused_causal_lm_focal_loss(clone, input_ids, labels, gamma=1.0, backend="reference")
    assert_close(clone(input_ids=input_ids, labels=labels).loss, expected, "the copy's loss")
    original = fused_causal_lm_focal_loss(model, input_ids, labels, gamma=1.0, backend="reference")
    assert_close(model(input_ids=input_ids, labels=labels).loss, original, "the original's loss")
    assert (original - expected).abs().item() > 1e-3, "the copy must not run the original's weights"


def test_fused_model_positional_arguments_keep_their_meaning():
    """``model(ids, mask)``: the mask is the attention mask, not labels."""
    model = enable_fused_focal_head(tiny_llama(), gamma=1.0, backend="reference")
    input_ids, labels = batch()
    mask = torch.ones_like(input_ids)
    mask[1, -3:] = 0
    with torch.no_grad():
        out = model(input_ids, mask)
        plain = type(model).forward(model, input_ids=input_ids, attention_mask=mask)
    assert out.loss is None and out.logits is not None
    assert_close(out.logits, plain.logits, "logits of a positional call")
    loss = model(input_ids, mask, labels=labels).loss
    expected = fused_causal_lm_focal_loss(model, input_ids, labels, attention_mask=mask, gamma=1.0, backend="reference")
    assert_close(loss, expected, "loss of a positional call with labels")


def tiny_gemma2(cap=5.0, seed=0):
    torch.manual_seed(seed)
    config = transformers.Gemma2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        final_logit_softcapping=cap,
    )
    return transformers.Gemma2ForCausalLM(config).eval()


def test_a_model_that_caps_its_logits_is_capped_once():
    model = tiny_gemma2()
    input_ids, labels = batch()
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits  # capped by the model
    assert logits.abs().max().item() <= 5.0
    gold = causal_lm_focal_loss(logits, labels, gamma=1.0, backend="reference")
    fused = fused_causal_lm_focal_loss(model, input_ids, labels, gamma=1.0, backend="reference")
    assert_close(fused, gold, "the fused head applies the model's cap once")
    same = fused_causal_lm_focal_loss(model, input_ids, labels, gamma=1.0, softcap=5.0, backend="reference")
    assert_close(same, gold, "the model's own cap, given again, is still one cap")
    with pytest.raises(ValueError, match=r"softcap=2.0.*final_logit_softcapping=5.0.*softcap=None"):
        fused_causal_lm_focal_loss(model, input_ids, labels, gamma=1.0, softcap=2.0, backend="reference")
