"""Train a compact U-Net on a class-imbalanced synthetic segmentation task, CE vs focal loss.

The dataset is generated deterministically from ``--seed``: textured background covering
about 93% of the pixels and four object classes that are rare to very rare (about 4%, 1%,
0.3% and 0.1% of the pixels). A one-pixel ring around every object is labelled 255 and
ignored, as in Pascal VOC. The only change between the two runs is the criterion::

    criterion = nn.CrossEntropyLoss(ignore_index=255)
    criterion = triton_focal.FocalLoss(gamma=2.0, ignore_index=255)

Examples::

    python examples/train_segmentation.py --loss both              # CPU, about 2 minutes
    python examples/train_segmentation.py --loss focal --device cuda --amp --image-size 128 \\
        --train-size 2048 --epochs 20

Per epoch it prints the mean training loss, the held-out mean IoU and the time; at the end the
per-class IoU on the held-out split, and with ``--loss both`` the rare-class IoU of each loss.
"""

import argparse
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE_INDEX = 255
CLASS_NAMES = ("background", "blob", "bar", "spot", "speck")
# Classes under 1% of the pixels: the ones a plain cross entropy tends to give up on.
RARE_CLASSES = (3, 4)
# Mean RGB offset of each object class over the background; deliberately faint next to
# the pixel noise, so that the rare classes are learnable but not trivial.
CLASS_COLOURS = torch.tensor(
    [
        [0.0, 0.0, 0.0],
        [0.9, -0.3, 0.0],  # blob
        [-0.3, 0.9, 0.0],  # bar
        [0.0, -0.3, 0.9],  # spot
        [0.6, 0.6, -0.6],  # speck
    ]
)


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def _paint_objects(mask, size, generator):
    """Draw the objects of one image into ``mask`` (S, S) int64, in place.

    Object sizes scale with the image so that the class frequencies do not depend on it.
    """

    def randint(low, high):
        return int(torch.randint(low, high + 1, (1,), generator=generator))

    def chance(p):
        return float(torch.rand((), generator=generator)) < p

    scale = size / 48
    rows = torch.arange(size).view(-1, 1)
    cols = torch.arange(size).view(1, -1)
    # blob: a disc, about 4% of the pixels.
    if chance(0.8):
        radius = max(2, round(randint(4, 6) * scale))
        r, c = randint(radius, size - radius - 1), randint(radius, size - radius - 1)
        mask[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = 1
    # bar: a thin rectangle, horizontal or vertical, about 1%.
    if chance(0.7):
        length, width = max(4, round(randint(8, 14) * scale)), max(1, round(2 * scale))
        if chance(0.5):
            length, width = width, length
        r, c = randint(1, size - length - 2), randint(1, size - width - 2)
        mask[r : r + length, c : c + width] = 2
    # spot: a small square, about 0.3%.
    if chance(0.8):
        side = max(2, round(3 * scale))
        r, c = randint(1, size - side - 2), randint(1, size - side - 2)
        mask[r : r + side, c : c + side] = 3
    # speck: a tiny square, about 0.1%.
    if chance(0.6):
        side = max(1, round(2 * scale))
        r, c = randint(1, size - side - 2), randint(1, size - side - 2)
        mask[r : r + side, c : c + side] = 4


def make_dataset(num_images, image_size, seed, noise=0.45):
    """A deterministic synthetic segmentation dataset.

    Args:
        num_images: number of images B.
        image_size: side S of the square images.
        seed: everything is drawn from a generator seeded with it.
        noise: standard deviation of the per-pixel Gaussian noise.

    Returns:
        ``(images, masks)``: float32 ``(B, 3, S, S)`` and int64 ``(B, S, S)`` with values in
        ``[0, 5)`` or ``IGNORE_INDEX`` on the one-pixel ring around each object.
    """
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(num_images, image_size, image_size, dtype=torch.long)
    for mask in masks:
        _paint_objects(mask, image_size, generator)

    # Background: a smooth random field (clutter the network must learn to ignore) plus noise.
    coarse = torch.randn(num_images, 3, max(2, image_size // 8), max(2, image_size // 8), generator=generator)
    clutter = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = 0.5 * clutter + noise * torch.randn(num_images, 3, image_size, image_size, generator=generator)
    images += CLASS_COLOURS[masks].permute(0, 3, 1, 2)

    objects = (masks > 0).float().unsqueeze(1)
    ring = (F.max_pool2d(objects, 3, stride=1, padding=1) > 0) & (objects == 0)
    masks[ring.squeeze(1)] = IGNORE_INDEX
    return images, masks


def class_frequencies(masks, num_classes=len(CLASS_NAMES)):
    """Fraction of all pixels (ignored ones included in the total) held by each class."""
    counts = torch.bincount(masks[masks != IGNORE_INDEX].flatten(), minlength=num_classes)
    return counts.double() / masks.numel()


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


def _conv_block(in_channels, out_channels):
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """A two-level U-Net: (B, in_channels, H, W) -> logits (B, num_classes, H, W); H, W % 4 == 0."""

    def __init__(self, in_channels=3, num_classes=len(CLASS_NAMES), width=16):
        super().__init__()
        self.enc1 = _conv_block(in_channels, width)
        self.enc2 = _conv_block(width, 2 * width)
        self.bottleneck = _conv_block(2 * width, 4 * width)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
        self.dec2 = _conv_block(4 * width, 2 * width)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec1 = _conv_block(2 * width, width)
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        b = self.bottleneck(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)


# --------------------------------------------------------------------------------------
# Loss, metrics, training
# --------------------------------------------------------------------------------------


def parse_alpha(text):
    """``None``, one float, or a comma-separated per-class list (a ``(C,)`` tensor)."""
    if text is None or text == "":
        return None
    values = [float(v) for v in text.split(",")]
    return values[0] if len(values) == 1 else torch.tensor(values)


def make_criterion(loss, gamma=2.0, alpha=None, backend="auto"):
    """The criterion; focal loss is a one-line swap for cross entropy."""
    if loss == "ce":
        return nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    if loss == "focal":
        import triton_focal  # imported late: the Triton interpreter switch must be set first

        return triton_focal.FocalLoss(gamma=gamma, alpha=alpha, ignore_index=IGNORE_INDEX, backend=backend)
    raise ValueError(f"loss must be 'ce' or 'focal', got {loss!r}")


def confusion_matrix(pred, target, num_classes=len(CLASS_NAMES)):
    """(num_classes, num_classes) counts, rows = true class, over the non-ignored pixels."""
    valid = target != IGNORE_INDEX
    index = target[valid] * num_classes + pred[valid]
    return torch.bincount(index, minlength=num_classes**2).view(num_classes, num_classes)


def iou_per_class(confusion):
    """IoU = TP / (TP + FP + FN) per class, from a confusion matrix."""
    confusion = confusion.double()
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    return tp / union.clamp_min(1)


@torch.no_grad()
def evaluate(model, images, masks, device, batch_size=32, amp=False):
    """Per-class IoU (float64, (num_classes,)) of the model on a held-out split."""
    model.eval()
    confusion = torch.zeros(len(CLASS_NAMES), len(CLASS_NAMES), dtype=torch.long)
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device)
        with _autocast(device, amp):
            logits = model(x)
        confusion += confusion_matrix(logits.argmax(1).cpu(), masks[start : start + batch_size])
    model.train()
    return iou_per_class(confusion)


def _autocast(device, enabled):
    device_type = torch.device(device).type
    dtype = torch.bfloat16 if device_type == "cpu" else torch.float16
    return torch.autocast(device_type, dtype=dtype, enabled=enabled)


def train(
    loss="focal",
    gamma=2.0,
    alpha=None,
    backend="auto",
    epochs=20,
    image_size=48,
    train_size=512,
    val_size=96,
    batch_size=16,
    lr=3e-3,
    width=16,
    amp=False,
    compile=False,
    device="cpu",
    seed=0,
    data=None,
    log=print,
):
    """Train one model and evaluate it on the held-out split after every epoch.

    Args:
        loss: ``"ce"`` or ``"focal"``.
        data: optional ``(train_images, train_masks, val_images, val_masks)``; generated from
            ``seed`` when omitted (validation images come from ``seed + 1``).
        log: called with one line of text per epoch (``None``: silent).
        The other arguments are the command-line flags of the same name.

    Returns:
        A dict with ``history`` (per epoch: ``loss``, ``miou``, ``rare_iou``, ``time``) and the
        final ``iou`` (list of per-class IoU), ``miou`` and ``rare_iou``.
    """
    log = log or (lambda line: None)
    if data is None:
        data = make_dataset(train_size, image_size, seed) + make_dataset(val_size, image_size, seed + 1)
    train_images, train_masks, val_images, val_masks = data

    torch.manual_seed(seed)  # same initial weights and batch order for every loss
    model = UNet(width=width).to(device)
    criterion = make_criterion(loss, gamma, alpha, backend).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    device_type = torch.device(device).type
    scaler = torch.amp.GradScaler(device_type, enabled=amp and device_type == "cuda")
    step = torch.compile(model) if compile else model
    order_generator = torch.Generator().manual_seed(seed)

    history = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        total, batches = 0.0, 0
        order = torch.randperm(len(train_images), generator=order_generator)
        # Drop the last partial batch: one shape per run, so --compile compiles once.
        for first in range(0, len(order) - batch_size + 1, batch_size):
            index = order[first : first + batch_size]
            x, y = train_images[index].to(device), train_masks[index].to(device)
            with _autocast(device, amp):
                logits = step(x)
            batch_loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(batch_loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total += batch_loss.detach().float()
            batches += 1
        iou = evaluate(model, val_images, val_masks, device, amp=amp)
        seconds = time.perf_counter() - start
        record = dict(
            loss=float(total) / max(batches, 1),
            miou=float(iou.mean()),
            rare_iou=float(iou[list(RARE_CLASSES)].mean()),
            time=seconds,
        )
        history.append(record)
        log(
            f"[{loss}] epoch {epoch:3d}/{epochs}  loss {record['loss']:.4f}  val mIoU {record['miou']:.3f}  "
            f"rare IoU {record['rare_iou']:.3f}  time {seconds:.1f}s"
        )
    return dict(
        history=history, iou=iou.tolist(), miou=float(iou.mean()), rare_iou=float(iou[list(RARE_CLASSES)].mean())
    )


def format_iou(loss, result):
    per_class = "  ".join(f"{name}={value:.3f}" for name, value in zip(CLASS_NAMES, result["iou"]))
    return (
        f"per-class IoU [{loss}]: {per_class}\n"
        f"mIoU [{loss}]: {result['miou']:.3f}  rare-class IoU [{loss}]: {result['rare_iou']:.3f}"
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--loss",
        choices=["ce", "focal", "both"],
        default="both",
        help="train with cross entropy, focal loss, or both from the same initial weights and batches",
    )
    parser.add_argument("--gamma", type=float, default=2.0, help="focal gamma")
    parser.add_argument("--alpha", default=None, help="none, a float, or a comma-separated per-class list")
    parser.add_argument(
        "--backend", default="auto", choices=["auto", "triton", "compile", "reference"], help="triton_focal backend"
    )
    parser.add_argument("--amp", action="store_true", help="autocast (bfloat16 on CPU, float16 on CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs")
    parser.add_argument("--image-size", type=int, default=48, help="side of the square images, a multiple of 4")
    parser.add_argument("--train-size", type=int, default=512, help="number of training images")
    parser.add_argument("--val-size", type=int, default=96, help="number of held-out images")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--width", type=int, default=16, help="channels of the first U-Net level")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the weights and the batch order")
    parser.add_argument("--quick", action="store_true", help=f"a first run in seconds: {QUICK}")
    args = _with_quick(parser, argv, QUICK)
    if args.image_size % 4:
        parser.error("--image-size must be a multiple of 4")
    if args.batch_size > args.train_size:
        parser.error("--batch-size must not exceed --train-size")
    return args


QUICK = dict(epochs=3, image_size=16, train_size=48, val_size=16, batch_size=8, width=4, lr=0.02)


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
        # Triton kernels run on CPU tensors only through the (slow) interpreter.
        os.environ.setdefault("TRITON_INTERPRET", "1")

    data = make_dataset(args.train_size, args.image_size, args.seed) + make_dataset(
        args.val_size, args.image_size, args.seed + 1
    )
    frequencies = class_frequencies(data[1])
    print("train pixels per class: " + "  ".join(f"{n}={100 * f:.2f}%" for n, f in zip(CLASS_NAMES, frequencies)))
    print(f"ignored (255): {100 * float((data[1] == IGNORE_INDEX).double().mean()):.2f}%")

    losses = ["ce", "focal"] if args.loss == "both" else [args.loss]
    results = {}
    for loss in losses:
        results[loss] = train(
            loss=loss,
            gamma=args.gamma,
            alpha=parse_alpha(args.alpha),
            backend=args.backend,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            width=args.width,
            amp=args.amp,
            compile=args.compile,
            device=args.device,
            seed=args.seed,
            data=data,
        )
        print(format_iou(loss, results[loss]))
    if len(results) == 2:
        rare = ", ".join(CLASS_NAMES[c] for c in RARE_CLASSES)
        print(
            f"comparison (seed {args.seed}, gamma {args.gamma:g}): rare-class IoU ({rare})  "
            f"ce {results['ce']['rare_iou']:.3f}  focal {results['focal']['rare_iou']:.3f}; "
            f"mIoU  ce {results['ce']['miou']:.3f}  focal {results['focal']['miou']:.3f}"
        )
    return results


if __name__ == "__main__":
    main()
