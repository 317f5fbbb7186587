"""Train a tiny causal language model with cross entropy and with focal loss; compare rare tokens.

The data are generated: token frequencies follow a Zipf law over the vocabulary, and each
token is followed by its own successor (a fixed random permutation) with probability 0.8,
else by a token drawn from the Zipf law. Predicting the successor is learnable for every
token, but the rare ones are seen rarely. Both runs start from the same weights and see the
same batches; at the end the per-token loss (``-log p`` of the right next token, the
cross entropy) on held-out text is printed for frequent and rare target tokens.

The model is a small MLP language model whose loss goes through
``triton_focal.fused_linear_focal_loss`` (the ``(tokens, V)`` logits are never made whole);
``--hf`` trains a tiny randomly initialized Llama from ``transformers`` instead, with
``model.loss_function`` swapped for ``causal_lm_focal_loss`` (or, with ``--fused``, the fused
head through ``enable_fused_focal_head``).

    python examples/finetune_causal_lm.py --loss both --steps 300
"""

import argparse
import copy
import time
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

import triton_focal


def make_language(vocab, seed, exponent=1.1, follow=0.8):
    """Unigram Zipf weights and each token's successor."""
    generator = torch.Generator().manual_seed(seed)
    unigram = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64) ** exponent
    successor = torch.randperm(vocab, generator=generator)
    return unigram / unigram.sum(), successor, follow


def sample(language, batch, length, generator):
    unigram, successor, follow = language
    tokens = torch.empty(batch, length, dtype=torch.long)
    tokens[:, 0] = torch.multinomial(unigram, batch, replacement=True, generator=generator)
    for t in range(1, length):
        jump = torch.multinomial(unigram, batch, replacement=True, generator=generator)
        keep = torch.rand(batch, generator=generator) < follow
        tokens[:, t] = torch.where(keep, successor[tokens[:, t - 1]], jump)
    return tokens


class TinyLM(nn.Module):
    """Embedding, an MLP block, and an output head whose loss is fused. The data are a
    first-order Markov chain, so the previous token is all the context a model needs."""

    def __init__(self, vocab, width):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.block = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
        )
        self.lm_head = nn.Linear(width, vocab, bias=False)

    def hidden(self, tokens):
        x = self.embed(tokens)
        return x + self.block(x)

    def loss(self, tokens, **focal):
        hidden = self.hidden(tokens[:, :-1])
        return triton_focal.fused_linear_focal_loss(
            hidden.reshape(-1, hidden.shape[-1]), self.lm_head.weight, tokens[:, 1:].reshape(-1), **focal
        )

    def logits(self, tokens):
        return self.lm_head(self.hidden(tokens))


class HFModel(nn.Module):
    """A tiny randomly initialized Llama with the loss swapped (or the fused head)."""

    def __init__(self, vocab, width, fused):
        super().__init__()
        import transformers

        config = transformers.LlamaConfig(
            vocab_size=vocab,
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
        )
        self.model = transformers.LlamaForCausalLM(config)
        self.fused = fused

    def configure(self, focal):
        from triton_focal.integrations.transformers import causal_lm_focal_loss, enable_fused_focal_head

        if self.fused:
            enable_fused_focal_head(self.model, **focal)
        else:
            self.model.loss_function = partial(causal_lm_focal_loss, **focal)

    def loss(self, tokens, **_):
        return self.model(input_ids=tokens, labels=tokens).loss

    def logits(self, tokens):
        return self.model(input_ids=tokens).logits


def per_token_loss(model, tokens):
    """``-log p`` of each next token, and the target tokens."""
    with torch.no_grad():
        logits = model.logits(tokens[:, :-1]).float()
    target = tokens[:, 1:].reshape(-1)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target, reduction="none"), target


def train(model, language, focal, args):
    generator = torch.Generator().manual_seed(args.seed + 1)  # the same batches for every run
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    for step in range(args.steps):
        tokens = sample(language, args.batch, args.length, generator)
        loss = model.loss(tokens, **focal)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % max(1, args.steps // 5) == 0:
            print(f"  step {step + 1:4d}  training loss {loss.item():.3f}", flush=True)
    return model


QUICK = dict(steps=40, vocab=128, width=32, batch=8, length=16)


def _with_quick(parser, argv, quick):
    """``--quick``: small sizes for a first run (seconds, not minutes); flags given
    explicitly still win."""
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
    return args


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--loss",
        choices=["ce", "focal", "both"],
        default="both",
        help="train with cross entropy, focal loss, or both from the same initial weights",
    )
    parser.add_argument("--gamma", type=float, default=1.0, help="focal gamma (0.5 to 1 suit language models)")
    parser.add_argument("--z-loss", type=float, default=0.0, help="z-loss coefficient (PaLM)")
    parser.add_argument(
        "--softcap", type=float, default=None, help="logit softcap c of c * tanh(x / c) (Gemma 2); none: off"
    )
    parser.add_argument("--backend", default="auto", help="triton_focal backend")
    parser.add_argument("--vocab", type=int, default=512, help="vocabulary size")
    parser.add_argument("--width", type=int, default=128, help="hidden width")
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    parser.add_argument("--batch", type=int, default=32, help="sequences per step")
    parser.add_argument("--length", type=int, default=48, help="tokens per sequence")
    parser.add_argument("--lr", type=float, default=3e-3, help="learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the weights")
    parser.add_argument("--follow", type=float, default=0.8, help="probability that a token's successor follows it")
    parser.add_argument("--hf", action="store_true", help="a tiny transformers Llama instead of the MLP")
    parser.add_argument("--fused", action="store_true", help="with --hf: the fused head (no logits)")
    parser.add_argument("--quick", action="store_true", help=f"a first run in seconds: {QUICK}")
    args = _with_quick(parser, argv, QUICK)

    torch.manual_seed(args.seed)
    language = make_language(args.vocab, args.seed, follow=args.follow)
    base = HFModel(args.vocab, args.width, args.fused) if args.hf else TinyLM(args.vocab, args.width)
    held_out = sample(language, 64, args.length, torch.Generator().manual_seed(args.seed + 2))
    # Frequent: the 5% most likely tokens; rare: the less likely half of the vocabulary.
    rank = torch.arange(args.vocab)  # Zipf: token id order is frequency order
    frequent, rare = rank < max(1, args.vocab // 20), rank >= args.vocab // 2

    runs = (
        {"ce": 0.0, "focal": args.gamma}
        if args.loss == "both"
        else {args.loss: 0.0 if args.loss == "ce" else args.gamma}
    )
    results = {}
    for name, gamma in runs.items():
        focal = dict(gamma=gamma, z_loss=args.z_loss, softcap=args.softcap, backend=args.backend)
        model = copy.deepcopy(base)
        if args.hf:
            model.configure(focal)
        print(f"{name} (gamma={gamma}):", flush=True)
        start = time.perf_counter()
        train(model, language, focal, args)
        losses, target = per_token_loss(model, held_out)
        results[name] = (
            losses[frequent[target]].mean().item(),
            losses[rare[target]].mean().item(),
            losses.mean().item(),
        )
        print(f"  {time.perf_counter() - start:.1f} s", flush=True)

    print("\nheld-out per-token loss (-log p of the next token):")
    print(f"{'':8s}{'frequent':>10s}{'rare':>10s}{'all':>10s}")
    for name, (freq, rare_loss, overall) in results.items():
        print(f"{name:8s}{freq:10.3f}{rare_loss:10.3f}{overall:10.3f}")
    return results


if __name__ == "__main__":
    main()
