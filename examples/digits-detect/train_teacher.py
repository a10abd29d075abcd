"""Train the example detection "teacher" on ``--data digits-detect`` and export it to ONNX.

The teacher is a small single-shot detector: five Conv-BN-ReLU layers down to an 8x8 grid
(stride 8) and a 1x1 head that predicts, per cell, one box and ten class scores — 64
candidates, about 7.3 M MACs. It is exported in edgec's detection contract (docs/detection.md),
*before* non-maximum suppression: ``boxes`` ``[1, 64, 4]`` (xyxy, pixels, decoded in the graph)
and ``scores`` ``[1, 64, 10]`` (per-class probabilities, sigmoid). BatchNorm stays as
``BatchNormalization`` nodes, as in the classification example.

It trains on the training split of ``--data digits-detect`` plus extra frames from the same
generator with another seed (the validation split is never seen), each batch shifted as the
student trainer shifts its views (:func:`edgec.compiler.detection.training.shifted_views`, up to
``--shift`` pixels, boxes moved with the frame), then reports mAP@0.5 on the validation split
after NMS (``iou=0.45, score=0.25``), computed by faster-coco-eval.

Outputs, next to ``--out`` (default: ``teacher.onnx`` beside this script): ``teacher.onnx`` and
``teacher.json`` (mAP, MACs, parameters, epochs, shift, seed, torch version).

Usage (needs the ``train`` and ``detection`` extras)::

    nice -n 10 python examples/digits-detect/train_teacher.py [--out PATH] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import random
import time
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from edgec.compiler.detection.metrics import mean_average_precision
from edgec.compiler.detection.reference import nms_reference
from edgec.compiler.detection.training import SHIFT, shifted_views
from edgec.data import digits_detect_dataset
from edgec.digits_detect import GENERATOR_SEED, NUM_CLASSES, SIZE, generate

OPSET = 17
STRIDE = 8
GRID = SIZE // STRIDE
PRIOR = 16.0  # box side (pixels) a zero size offset means


class Detector(nn.Module):
    """Backbone to an 8x8 grid, a 1x1 head, and the box decoding (exported with the model)."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 32, 64, 64)) -> None:
        super().__init__()
        layers: list[tuple[str, nn.Module]] = []
        cin = 1
        for i, (cout, stride) in enumerate(zip(widths, (2, 2, 1, 2, 1), strict=True), start=1):
            layers += [(f"conv{i}", nn.Conv2d(cin, cout, 3, stride, 1, bias=False)),
                       (f"bn{i}", nn.BatchNorm2d(cout)), (f"relu{i}", nn.ReLU())]  # fmt: skip
            cin = cout
        self.backbone = nn.Sequential(OrderedDict(layers))
        self.head = nn.Conv2d(cin, 4 + NUM_CLASSES, 1)
        with torch.no_grad():  # start every class at a 1% prior: almost every cell is empty
            self.head.bias[4:] = -4.6
        ys, xs = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
        centres = (torch.stack([xs, ys], -1).reshape(1, -1, 2).float() + 0.5) * STRIDE
        self.register_buffer("centres", centres)

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Per-cell head outputs ``[B, 64, 14]``: 4 box offsets, then 10 class logits."""
        out = self.head(self.backbone(x))
        return out.reshape(out.shape[0], 4 + NUM_CLASSES, GRID * GRID).transpose(1, 2)

    def decode(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """xyxy pixel boxes and class probabilities from the head's outputs."""
        centre = self.centres + raw[..., 0:2] * STRIDE
        half = PRIOR * torch.exp(raw[..., 2:4]) / 2
        return torch.cat([centre - half, centre + half], -1), torch.sigmoid(raw[..., 4:])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode(self.raw(x))


def targets(boxes: np.ndarray, classes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per cell: the class (-1: background) and the box of the digit whose centre lies in it.

    A digit whose centre lies outside the frame (moved out by a shift) is left out.
    """
    cls = torch.full((len(boxes), GRID * GRID), -1, dtype=torch.long)
    box = torch.zeros(len(boxes), GRID * GRID, 4)
    for n, m in zip(*np.nonzero(classes >= 0), strict=True):
        cx, cy = (boxes[n, m, 0:2] + boxes[n, m, 2:4]) / 2
        if not (0 <= cx < SIZE and 0 <= cy < SIZE):
            continue
        cell = int(cy // STRIDE) * GRID + int(cx // STRIDE)
        cls[n, cell] = int(classes[n, m])
        box[n, cell] = torch.from_numpy(np.clip(boxes[n, m], 0, SIZE))
    return cls, box


def shifted_batch(
    x: torch.Tensor, boxes: np.ndarray, shift: int, gen: torch.Generator
) -> tuple[torch.Tensor, np.ndarray]:
    """The student trainer's shifted views of ``x`` (same shifts, same edge filling) and the
    boxes moved with them.

    Each frame travels with two ramp channels holding its pixels' x and y coordinates; after
    :func:`shifted_views` the ramps' value at the centre pixel (never in the filled border)
    says where that pixel came from, hence the frame's offset.
    """
    if shift <= 0:
        return x, boxes
    n = len(x)
    ramp = torch.arange(SIZE, dtype=x.dtype)
    xs = ramp.view(1, 1, 1, SIZE).expand(n, 1, SIZE, SIZE)
    ys = ramp.view(1, 1, SIZE, 1).expand(n, 1, SIZE, SIZE)
    views = shifted_views(torch.cat([x, xs, ys], 1), shift, gen)
    mid = SIZE // 2
    dx = mid - views[:, 1, mid, mid].numpy()
    dy = mid - views[:, 2, mid, mid].numpy()
    moved = boxes + np.stack([dx, dy, dx, dy], 1)[:, None, :].astype(boxes.dtype)
    return views[:, :1].contiguous(), moved


def loss_fn(model: Detector, x: torch.Tensor, cls: torch.Tensor, box: torch.Tensor):
    """Binary cross-entropy on the class scores, L1 (in strides) on the assigned cells' boxes.

    Plain cross-entropy, not a focal loss: a focal loss leaves the scores of true detections
    low (about 0.4 on this data), right above the NMS score cut, so a distilled student that
    scores a little lower loses them, and no frame is ever "sure" for the cascade.
    """
    raw = model.raw(x)
    pred_box, _ = model.decode(raw)
    logits = raw[..., 4:]
    onehot = torch.zeros_like(logits)
    pos = cls >= 0
    onehot[pos] = nn.functional.one_hot(cls[pos], NUM_CLASSES).float()
    ce = nn.functional.binary_cross_entropy_with_logits(logits, onehot, reduction="sum")
    n_pos = max(int(pos.sum()), 1)
    l1 = (pred_box[pos] - box[pos]).abs().sum() / STRIDE
    return (ce + l1) / n_pos


def train(
    model: Detector, x: np.ndarray, boxes: np.ndarray, classes: np.ndarray, epochs: int,
    seed: int, shift: int,
) -> None:  # fmt: skip
    """AdamW + one-cycle schedule, batches of 64, each frame shifted by up to ``shift`` px."""
    gen = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(x)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(xt) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for start in range(0, len(order), 64):
            idx = order[start : start + 64]
            views, moved = shifted_batch(xt[idx], boxes[idx.numpy()], shift, gen)
            cls, box = targets(moved, classes[idx.numpy()])
            loss = loss_fn(model, views, cls, box)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(
            f"epoch {epoch + 1:3d}  loss {total / len(xt):.4f}  {time.perf_counter() - t0:.0f} s",
            flush=True,
        )


def export(model: Detector, path: Path) -> None:
    """Export with BatchNorm kept (PRESERVE + eval mode skips the exporter's BN fusion)."""
    model.eval()
    with warnings.catch_warnings():  # the legacy (TorchScript) exporter warns it is legacy
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (torch.zeros(1, 1, SIZE, SIZE),), str(path), dynamo=False,
            opset_version=OPSET, input_names=["x"], output_names=["boxes", "scores"],
            do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE,
            external_data=False,
        )  # fmt: skip
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def evaluate_onnx(model: Detector, path: Path, x: np.ndarray, ds) -> tuple[float, float]:
    """mAP@0.5 of the ONNX model after NMS, and max |onnx - torch| over its outputs."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores = [], []
    for i in range(len(x)):
        b, s = session.run(["boxes", "scores"], {"x": x[i : i + 1]})
        boxes.append(b[0])
        scores.append(s[0])
    boxes, scores = np.stack(boxes), np.stack(scores)
    with torch.no_grad():
        tb, ts = model(torch.from_numpy(x))
    diff = max(float(np.abs(boxes - tb.numpy()).max()), float(np.abs(scores - ts.numpy()).max()))
    detections = [nms_reference(b, s, iou=0.45, score=0.25, max_detections=100)
                  for b, s in zip(boxes, scores, strict=True)]  # fmt: skip
    return mean_average_precision(detections, ds.boxes_val, ds.classes_val), diff


def macs(model: Detector) -> int:
    """Multiply-accumulates of one frame (convolutions only; the decoding is negligible)."""
    total, hooks = 0, []

    def count(module, _inputs, output):
        nonlocal total
        k = module.weight[0].numel()
        total += k * output.numel()

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(count))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 1, SIZE, SIZE))
    for hook in hooks:
        hook.remove()
    return total


def main() -> None:
    """Train, export, check against onnxruntime and write the model and its JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("teacher.onnx"))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--extra-frames", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shift", type=int, default=SHIFT, help="largest shift of a view (px)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)

    ds = digits_detect_dataset()
    ex, eb, ec = generate(args.extra_frames, seed=GENERATOR_SEED + 1)
    x = np.concatenate([ds.x_train, ex])
    boxes, classes = np.concatenate([ds.boxes_train, eb]), np.concatenate([ds.classes_train, ec])
    model = Detector()
    params = sum(p.numel() for p in model.parameters())
    print(f"train {len(x)}  val {len(ds.x_val)}  params {params:,}  MACs {macs(model):,}")
    train(model, x, boxes, classes, args.epochs, args.seed, args.shift)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    export(model, args.out)
    ap, diff = evaluate_onnx(model, args.out, ds.x_val, ds)
    ops = sorted({node.op_type for node in onnx.load(str(args.out)).graph.node})
    print(f"onnx ops {ops}")
    print(f"onnx validation mAP@0.5 {ap:.4f}  max |onnx - torch| {diff:.2e}")
    if diff >= 1e-3:
        raise SystemExit(f"ONNX output differs from torch by {diff:.2e} (limit 1e-3)")
    meta = {"val_map50": round(ap, 4), "macs": macs(model), "params": params,
            "epochs": args.epochs, "extra_frames": args.extra_frames, "seed": args.seed,
            "shift": args.shift, "opset": OPSET, "torch": torch.__version__}  # fmt: skip
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
