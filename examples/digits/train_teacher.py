"""Train the example "teacher" CNN on scikit-learn's 8x8 digits and export it to ONNX.

The teacher is a deliberately realistic, unoptimised model for edgec to compile: a small CNN
with BatchNorm layers (kept as ``BatchNormalization`` nodes in the ONNX graph, so edgec's
BN-folding pass has work to do), trained on exactly the train/validation split that
``edgec ... --data digits`` uses (``edgec.data.digits_arrays`` + ``edgec.data.split``).

Outputs, next to ``--out`` (default: ``teacher.onnx`` beside this script):

* ``teacher.onnx`` — opset 17, input ``x`` float32 ``[1, 1, 8, 8]`` (static batch of 1),
  output ``logits`` ``[1, 10]``, no external data.
* ``teacher.json`` — validation accuracy, parameter count, epochs, seed, opset, torch version.

Usage (needs the ``train`` extra: torch, onnx, onnxruntime, scikit-learn)::

    python examples/digits/train_teacher.py [--out PATH] [--epochs N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import random
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from edgec.data import digits_arrays, split

OPSET = 17


def build_model() -> nn.Sequential:
    """Conv-BN-ReLU x3 with two max-pools, then a two-layer classifier head.

    Convolutions have no bias (BatchNorm follows), as in most real CNNs; module names become
    the ONNX initializer names (``conv1.weight``, ``bn1.running_mean``, ...).
    """
    layers: list[tuple[str, nn.Module]] = []
    for i, (cin, cout) in enumerate([(1, 32), (32, 64), (64, 128)], start=1):
        layers += [(f"conv{i}", nn.Conv2d(cin, cout, 3, padding=1, bias=False)),
                   (f"bn{i}", nn.BatchNorm2d(cout)), (f"relu{i}", nn.ReLU())]  # fmt: skip
        if i > 1:
            layers.append((f"pool{i - 1}", nn.MaxPool2d(2)))  # 8x8 -> 4x4 -> 2x2
    layers += [("flatten", nn.Flatten()), ("fc1", nn.Linear(512, 256)), ("relu4", nn.ReLU()),
               ("dropout", nn.Dropout(0.3)), ("fc2", nn.Linear(256, 10))]  # fmt: skip
    return nn.Sequential(OrderedDict(layers))


def shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Randomly shift each image by -1, 0 or +1 pixels in each direction (zero fill)."""
    padded = nn.functional.pad(x, (1, 1, 1, 1))
    dy, dx = torch.randint(0, 3, (2, len(x)), generator=gen)
    return torch.stack([padded[k, :, dy[k] : dy[k] + 8, dx[k] : dx[k] + 8] for k in range(len(x))])


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``x``/``y``."""
    model.eval()
    return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> None:
    """Adam + cosine schedule, batches of 64, random ±1 pixel shifts."""
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for start in range(0, len(order), 64):
            idx = order[start : start + 64]
            loss = nn.functional.cross_entropy(model(shift(xt[idx], gen)), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        if (epoch + 1) % 5 == 0 or epoch == 0:
            print(f"epoch {epoch + 1:3d}  loss {total / len(xt):.4f}")


def export(model: nn.Module, path: Path) -> None:
    """Export with BatchNorm kept (PRESERVE + eval mode skips the exporter's BN fusion)."""
    model.eval()
    with warnings.catch_warnings():  # the legacy (TorchScript) exporter warns it is legacy
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, opset_version=OPSET,
            input_names=["x"], output_names=["logits"], do_constant_folding=False,
            training=torch.onnx.TrainingMode.PRESERVE, external_data=False,
        )  # fmt: skip
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def check_onnx(model: nn.Module, path: Path, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Run the ONNX model sample by sample; return (accuracy, max |onnx - torch|)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model.eval()
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    logits = np.concatenate(
        [session.run(["logits"], {"x": x[i : i + 1]})[0] for i in range(len(x))]
    )
    return float((logits.argmax(1) == y).mean()), float(np.abs(logits - reference).max())


def main() -> None:
    """Train, export, verify against onnxruntime and write the model and its JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("teacher.onnx"))
    parser.add_argument("--epochs", type=int, default=35)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)

    x, y = digits_arrays()
    ds = split("digits", x, y)
    model = build_model()
    params = sum(p.numel() for p in model.parameters())
    print(f"train {len(ds.x_train)}  val {len(ds.x_val)}  params {params:,}")

    train(model, ds.x_train, ds.y_train, args.epochs, args.seed)
    val_acc = accuracy(model, ds.x_val, ds.y_val)
    print(f"torch validation accuracy {val_acc:.4f}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    export(model, args.out)
    ops = sorted({node.op_type for node in onnx.load(str(args.out)).graph.node})
    onnx_acc, diff = check_onnx(model, args.out, ds.x_val, ds.y_val)
    print(f"onnx ops {ops}")
    print(f"onnx validation accuracy {onnx_acc:.4f}  max |onnx - torch| {diff:.2e}")
    if diff >= 1e-4:
        raise SystemExit(f"ONNX output differs from torch by {diff:.2e} (limit 1e-4)")

    meta = {"val_accuracy": round(onnx_acc, 4), "params": params, "epochs": args.epochs,
            "seed": args.seed, "opset": OPSET, "torch": torch.__version__}  # fmt: skip
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(
        f"wrote {args.out} ({args.out.stat().st_size:,} bytes) and {args.out.with_suffix('.json')}"
    )


if __name__ == "__main__":
    main()
