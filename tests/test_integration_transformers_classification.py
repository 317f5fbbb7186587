"""Hugging Face sequence and token classification on tiny BERTs built from a config (no download).

gamma=0 equals the model's own loss (``CrossEntropyLoss``; ``BCEWithLogitsLoss`` for multi-label),
value and gradients, class weights and -100 labels included; ``num_items_in_batch`` divides the sum;
``Trainer`` with ``compute_loss_func`` trains a few steps.
"""

from functools import partial

import pytest
import torch
from helpers import EAGER_BACKENDS, assert_close, hide_broken_torchvision

hide_broken_torchvision()
transformers = pytest.importorskip("transformers")

import triton_focal  # noqa: E402
from triton_focal.integrations.transformers import (  # noqa: E402
    sequence_classification_focal_loss,
    token_classification_focal_loss,
)

NUM_LABELS = 5


@pytest.fixture(params=EAGER_BACKENDS)
def backend(request):
    """The eager backends (``helpers.EAGER_BACKENDS``: the core files test the compile one)."""
    return request.param


def tiny_bert(kind, seed=0, **config):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=NUM_LABELS,
        **config,
    )
    cls = {"sequence": transformers.BertForSequenceClassification, "token": transformers.BertForTokenClassification}[
        kind
    ]
    return cls(cfg).eval()


def inputs(seed=0, batch=4, length=7):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 50, (batch, length), generator=g)


def _head_grad(loss, model):
    return torch.autograd.grad(loss, model.classifier.weight)[0]


@pytest.mark.parametrize("num_items_in_batch", [None, 3])
def test_sequence_gamma_zero_equals_the_models_loss(backend, num_items_in_batch):
    model = tiny_bert("sequence")
    ids = inputs()
    labels = torch.tensor([0, 3, 4, 1])
    own = model(input_ids=ids, labels=labels).loss
    if num_items_in_batch is not None:
        own = own * labels.numel() / num_items_in_batch  # the sum over the batch divided by it
    own_grad = _head_grad(own, model)
    outputs = model(input_ids=ids)
    ours = partial(sequence_classification_focal_loss, gamma=0.0, backend=backend)(
        outputs, labels, num_items_in_batch=num_items_in_batch
    )
    assert ours.dtype == torch.float32
    assert_close(ours, own, "loss", rtol=1e-5, atol=1e-6)
    assert_close(_head_grad(ours, model), own_grad, "classifier gradient", rtol=1e-4, atol=1e-6)


def test_sequence_class_weights_alpha_and_smoothing(backend):
    model = tiny_bert("sequence")
    logits = model(input_ids=inputs()).logits.detach()
    labels = torch.tensor([0, 3, 4, -100])
    w = torch.tensor([1.0, 2.0, 0.5, 1.5, 3.0])
    gold = torch.nn.CrossEntropyLoss(weight=w, label_smoothing=0.1)(logits, labels)
    ours = sequence_classification_focal_loss(logits, labels, gamma=0.0, weight=w, label_smoothing=0.1, backend=backend)
    assert_close(ours, gold, "weighted, smoothed cross entropy", rtol=1e-5, atol=1e-6)
    focal = sequence_classification_focal_loss(logits, labels, gamma=2.0, alpha=0.5, weight=w, backend=backend)
    expected = triton_focal.focal_loss(logits, labels, gamma=2.0, alpha=0.5, weight=w, backend="reference")
    assert_close(focal, expected, "focal settings reach the loss", rtol=1e-5, atol=1e-6)


def test_multi_label_gamma_zero_equals_the_models_loss(backend):
    model = tiny_bert("sequence", problem_type="multi_label_classification")
    ids = inputs()
    labels = (torch.rand(4, NUM_LABELS, generator=torch.Generator().manual_seed(1)) > 0.6).float()
    own = model(input_ids=ids, labels=labels).loss
    own_grad = _head_grad(own, model)
    ours = sequence_classification_focal_loss(model(input_ids=ids), labels, gamma=0.0, backend=backend)
    assert_close(ours, own, "loss", rtol=1e-5, atol=1e-6)
    assert_close(_head_grad(ours, model), own_grad, "classifier gradient", rtol=1e-4, atol=1e-6)
    logits = model(input_ids=ids).logits.detach()
    w = torch.tensor([1.0, 2.0, 0.5, 1.5, 3.0])
    summed = sequence_classification_focal_loss(logits, labels, 20, gamma=0.0, weight=w, backend=backend)
    gold = torch.nn.BCEWithLogitsLoss(weight=w, reduction="sum")(logits, labels) / 20
    assert_close(summed, gold, "weighted sum / num_items_in_batch", rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_items_in_batch", [None, 9])
def test_token_gamma_zero_equals_the_models_loss(backend, num_items_in_batch):
    model = tiny_bert("token")
    ids = inputs()
    labels = torch.randint(0, NUM_LABELS, ids.shape, generator=torch.Generator().manual_seed(2))
    labels[:, 0] = -100  # [CLS]
    labels[1, 4:] = -100  # padding / continuation pieces
    own = model(input_ids=ids, labels=labels).loss
    if num_items_in_batch is not None:
        own = own * (labels != -100).sum() / num_items_in_batch
    own_grad = _head_grad(own, model)
    ours = token_classification_focal_loss(model(input_ids=ids), labels, num_items_in_batch, gamma=0.0, backend=backend)
    assert_close(ours, own, "loss", rtol=1e-5, atol=1e-6)
    assert_close(_head_grad(ours, model), own_grad, "classifier gradient", rtol=1e-4, atol=1e-6)


def test_errors_name_the_argument():
    logits = torch.randn(4, 1)
    with pytest.raises(ValueError, match="regression"):
        sequence_classification_focal_loss(logits, torch.tensor([0.0, 1.0, 1.0, 0.0]))
    ok = sequence_classification_focal_loss(
        logits,
        torch.tensor([[0.0], [1.0], [1.0], [0.0]]),
        backend="reference",
        problem_type="multi_label_classification",
    )
    assert ok.dim() == 0
    with pytest.raises(ValueError, match="problem_type must be"):
        sequence_classification_focal_loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), problem_type="ranking")
    with pytest.raises(TypeError, match="logits must be a floating-point tensor"):
        token_classification_focal_loss([[0.1]], torch.tensor([[0]]))
    with pytest.raises(ValueError, match="do not match logits"):
        token_classification_focal_loss(torch.randn(2, 3, 4), torch.zeros(2, 2, dtype=torch.long))


def test_trainer_with_compute_loss_func_trains(tmp_path):
    pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate (pip install accelerate)")
    model = tiny_bert("token").train()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 50, (8, 7), generator=g)
    labels = ids % NUM_LABELS  # learnable: the label is a function of the token
    labels[:, 0] = -100

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {"input_ids": ids[i], "labels": labels[i]}

    calls = []

    def compute_loss_func(outputs, labels, num_items_in_batch=None):
        calls.append(num_items_in_batch)
        return token_classification_focal_loss(outputs, labels, num_items_in_batch, gamma=2.0, backend="reference")

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=12,
        per_device_train_batch_size=8,
        learning_rate=5e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Data(), compute_loss_func=compute_loss_func)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(calls) == 12 and int(calls[0]) == int((labels != -100).sum())
    assert losses[-1] < losses[0], losses
