"""RetinaNet-style anchor classification with ``triton_focal.sigmoid_focal_loss``.

A detector's classification head scores every anchor against C classes with independent
sigmoids. Most anchors are background, a few are matched to an object (positives) and the
ones whose overlap is ambiguous are ignored. RetinaNet sums the focal loss over all anchors
and divides by the number of positives. With class-index targets (``C`` = background,
``-1`` = ignore) no one-hot tensor is built::

    loss = triton_focal.sigmoid_focal_loss(
        logits, labels, alpha=0.25, gamma=2.0, reduction="sum",
        ignore_index=-1, normalizer=num_positives,
    )

The anchors here are synthetic feature vectors: a positive of class c lies near a class
prototype, background is noise, and ignored anchors are half-way between. Run::

    python examples/train_detection.py                  # CPU, a few seconds
"""

import argparse
import math
import os
import time

import torch
import torch.nn as nn

IGNORE_INDEX = -1


def make_anchors(num_images, anchors_per_image, num_classes, features, seed, positive_fraction=0.02):
    """Synthetic anchor features and labels.

    Returns:
        ``(features, labels)``: float32 ``(B, A, D)`` and int64 ``(B, A)`` holding a class in
        ``[0, C)`` for positives, ``C`` for background and ``IGNORE_INDEX`` for ignored anchors.
    """
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(num_classes, features, generator=generator)
    shape = (num_images, anchors_per_image)
    draw = torch.rand(shape, generator=generator)
    classes = torch.randint(0, num_classes, shape, generator=generator)
    labels = torch.full(shape, num_classes, dtype=torch.long)
    positive = draw < positive_fraction
    ignored = (draw >= positive_fraction) & (draw < 2 * positive_fraction)
    labels[positive] = classes[positive]
    labels[ignored] = IGNORE_INDEX

    # Object evidence: full strength for positives, half for the ambiguous ones, none otherwise.
    strength = positive.float() + 0.5 * ignored.float()
    x = torch.randn(*shape, features, generator=generator)
    x += 1.5 * strength.unsqueeze(-1) * prototypes[classes]
    return x, labels


class ClassificationHead(nn.Module):
    """(B, A, D) anchor features -> (B, C, A) logits, the class dimension second."""

    def __init__(self, features, num_classes, hidden=64, prior=0.01):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.cls = nn.Linear(hidden, num_classes)
        # RetinaNet's prior: every anchor starts at p = 0.01 so the background does not swamp
        # the first steps.
        nn.init.constant_(self.cls.bias, -math.log((1 - prior) / prior))

    def forward(self, x):
        # transpose is a view: the loss reads the (B, C, A) logits through their strides.
        return self.cls(self.body(x)).transpose(1, 2)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--num-classes", type=int, default=8, help="object classes (class-index C is background)")
    parser.add_argument("--num-images", type=int, default=64, help="synthetic images")
    parser.add_argument("--anchors", type=int, default=1024, help="anchors per image")
    parser.add_argument("--features", type=int, default=16, help="features per anchor")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--gamma", type=float, default=2.0, help="focal gamma")
    parser.add_argument("--alpha", type=float, default=0.25, help="weight of positives")
    parser.add_argument(
        "--backend", default="auto", choices=["auto", "triton", "compile", "reference"], help="triton_focal backend"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the weights")
    parser.add_argument("--quick", action="store_true", help=f"a first run in seconds: {QUICK}")
    return _with_quick(parser, argv, QUICK)


QUICK = dict(epochs=4, num_images=16, anchors=256, batch_size=4)


def _with_quick(parser, argv, quick):
    """``--quick``: small sizes for a first run (seconds, not minutes); flags given
    explicitly still win."""
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.backend == "triton" and torch.device(args.device).type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton_focal's kernels load
    import triton_focal

    features, labels = make_anchors(args.num_images, args.anchors, args.num_classes, args.features, args.seed)
    positives = (labels >= 0) & (labels < args.num_classes)
    print(
        f"anchors: {labels.numel()}  positives {100 * positives.double().mean():.2f}%  "
        f"ignored {100 * (labels == IGNORE_INDEX).double().mean():.2f}%"
    )

    torch.manual_seed(args.seed)
    model = ClassificationHead(args.features, args.num_classes).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    order_generator = torch.Generator().manual_seed(args.seed)
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        total, steps = 0.0, 0
        order = torch.randperm(args.num_images, generator=order_generator)
        for first in range(0, args.num_images, args.batch_size):
            index = order[first : first + args.batch_size]
            x, y = features[index].to(args.device), labels[index].to(args.device)
            logits = model(x)  # (B, C, A)
            # The number of positive anchors, kept on the device (no host sync); at least 1.
            num_positives = ((y >= 0) & (y < args.num_classes)).sum().clamp_min(1).float()
            loss = triton_focal.sigmoid_focal_loss(
                logits,
                y,
                alpha=args.alpha,
                gamma=args.gamma,
                reduction="sum",
                ignore_index=IGNORE_INDEX,
                normalizer=num_positives,
                backend=args.backend,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach().float()
            steps += 1
        print(
            f"epoch {epoch:3d}/{args.epochs}  loss {float(total) / steps:.4f}  time {time.perf_counter() - start:.2f}s"
        )

    with torch.no_grad():
        scores = model(features.to(args.device)).sigmoid().cpu()  # (B, C, A)
        best_score, best_class = scores.max(dim=1)
        detected = best_score > 0.5
        hits = (detected & positives & (best_class == labels)).sum()
        recall = float(hits) / max(int(positives.sum()), 1)
        precision = float(hits) / max(int((detected & (labels != IGNORE_INDEX)).sum()), 1)
    print(f"train-set precision {precision:.3f}  recall {recall:.3f} (score > 0.5)")


if __name__ == "__main__":
    main()
