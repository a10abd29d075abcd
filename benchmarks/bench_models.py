"""The four benchmark models: the ``--models-dir`` option and the lookup every script shares.

resnet18, mobilenet_v2, mobilenet_v3_small and efficientnet_b0 (random weights, BatchNorm
statistics recalibrated) are not part of the repository. A benchmark that uses them takes
``--models-dir DIR``, a folder holding ``<name>.onnx`` for each; without it, or where a file
is missing, the script skips those models and says so in one line. The command a script
records in ``benchmarks/RESULTS.md`` names the folder ``DIR``, never the path it was given.
Their inputs are :func:`photo_crops` of scikit-image's bundled photos (real images, no download).

Two small *trained* models on the harder digits of ``distill.py`` (upsampled to 32x32, random
affine views, pixel noise; two views per digit, the stratified split of ``edgec.data.split``)
are built here, seeded, for benchmarks that need trained weights (the benchmark models' random
weights give near-tied logits): :func:`train_hard_models` trains ``hard-teacher``
(``distill.Teacher``: four conv-BN-ReLU layers) and ``mobilenet-digits``
(:func:`mobilenet_digits`: a MobileNetV2-style net of inverted residual blocks with depthwise
convolutions), each from labels with edgec's own training loop, and exports them to ONNX.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

import numpy as np

BENCHMARK_MODELS = ("resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0")
HARD_MODELS = ("hard-teacher", "mobilenet-digits")
OPTION = "--models-dir"


def _folder(value: str) -> Path:
    path = Path(value)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(
            f"'{value}' is not a folder; pass the folder that holds the benchmark models "
            "(resnet18.onnx, mobilenet_v2.onnx, ...)"
        )
    return path


def add_models_dir(parser: argparse.ArgumentParser) -> None:
    """Add ``--models-dir DIR`` to ``parser`` (a missing folder is a usage error, exit 2)."""
    parser.add_argument(
        OPTION,
        type=_folder,
        metavar="DIR",
        help="folder holding the benchmark models as <name>.onnx ("
        + ", ".join(BENCHMARK_MODELS)
        + "); without it they are skipped",
    )


def find_models(models_dir: Path | None, names: Iterable[str]) -> dict[str, Path]:
    """The files of ``names`` in ``models_dir``; one printed line names those skipped.

    Args:
        models_dir: The ``--models-dir`` folder, or ``None`` when it was not given.
        names: Model names, each looked up as ``<name>.onnx``.

    Returns:
        ``{name: path}`` for every name whose file exists, in the order of ``names``.
    """
    names = list(dict.fromkeys(names))
    found = {}
    if models_dir is not None:
        found = {n: models_dir / f"{n}.onnx" for n in names if (models_dir / f"{n}.onnx").is_file()}
    skipped = [n for n in names if n not in found]
    if skipped:
        why = f"no {OPTION} given" if models_dir is None else f"not in {models_dir}"
        print(f"skipped {', '.join(skipped)}: {why}", flush=True)
    return found


def recorded_command(script: str, argv: list[str], models_dir: Path | None) -> str:
    """``python benchmarks/<script> <argv>`` with the ``--models-dir`` folder written ``DIR``.

    What a script records must not name a path outside the repository, so every word that is
    the folder (after ``--models-dir``, an abbreviation of it, or ``=``) becomes ``DIR``.
    """
    words = []
    for word in argv:
        flag, equals, value = word.partition("=")
        if models_dir is not None and equals and flag.startswith("--"):
            word = f"{flag}=DIR" if Path(value) == models_dir else word
        elif models_dir is not None and Path(word) == models_dir:
            word = "DIR"
        words.append(word)
    return " ".join([f"python benchmarks/{script}", *words])


def photo_crops(sources: list[np.ndarray], count: int, seed: int) -> np.ndarray:
    """Random square crops of ``sources`` (HxWx3 uint8 photos), resized to 224x224, randomly
    mirrored, ImageNet-normalised, NCHW float32: the same ``seed`` gives the same crops."""
    from skimage.transform import resize

    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((count, 3, 224, 224), np.float32)
    for i in range(count):
        image = sources[rng.integers(len(sources))]
        h, w = image.shape[:2]
        side = int(min(h, w) * rng.uniform(0.3, 1.0))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = resize(image[y : y + side, x : x + side], (224, 224), preserve_range=True) / 255.0
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = ((crop - mean) / std).transpose(2, 0, 1)
    return out


def hard_digits_data(copies: int = 2, seed: int = 0):
    """The harder digits of ``distill.py`` as an ``edgec.data.Dataset`` (stratified split)."""
    from distill import hard_digits

    from edgec.data import split

    x, y = hard_digits(copies, seed)
    return split("hard-digits", x, y)


def mobilenet_digits():
    """A MobileNetV2-style CNN for 1x32x32 inputs (~0.6 M MACs): a 3x3 stride-2 stem, five inverted
    residual blocks (1x1 expand x4, 3x3 depthwise, 1x1 linear projection; a residual Add where
    the shape allows), a 1x1 conv to 96 channels, global pooling and a Linear. BatchNorm after
    every conv, ReLU (not ReLU6, so cross-layer equalization applies) after all but the
    projections."""
    from torch import nn

    def conv(cin, cout, kernel, stride=1, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)]
        return layers + [nn.BatchNorm2d(cout)] + ([nn.ReLU()] if act else [])

    class Block(nn.Module):
        def __init__(self, cin, cout, stride, expand=4):
            super().__init__()
            mid = cin * expand
            self.residual = stride == 1 and cin == cout
            self.body = nn.Sequential(
                *conv(cin, mid, 1),
                *conv(mid, mid, 3, stride, groups=mid),
                *conv(mid, cout, 1, act=False),
            )

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    class MobileNetDigits(nn.Module):
        def __init__(self):
            super().__init__()
            shape = [(16, 16, 1), (16, 24, 2), (24, 24, 1), (24, 32, 2), (32, 48, 2)]
            self.features = nn.Sequential(
                *conv(1, 16, 3, 2),
                *[Block(cin, cout, stride) for cin, cout, stride in shape],
                *conv(48, 96, 1),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            )
            self.fc = nn.Linear(96, 10)

        def forward(self, x):
            return self.fc(self.features(x))

    return MobileNetDigits()


def train_hard_models(
    work: Path, epochs: int = 15, seed: int = 0
) -> tuple[dict[str, Path], object]:
    """Train ``hard-teacher`` and ``mobilenet-digits`` on :func:`hard_digits_data` (seeded, from
    labels, edgec's ``train_student`` with early stopping on a holdout); export each to
    ``work/<name>.onnx``. Returns the paths and the dataset."""
    from distill import Teacher, accuracy, export_teacher

    from edgec.compiler.students.distill import DistillSettings, deterministic, train_student

    data = hard_digits_data()
    paths = {}
    for name, build in (("hard-teacher", Teacher), ("mobilenet-digits", mobilenet_digits)):
        with deterministic(seed):
            model = build()
        settings = DistillSettings(epochs=epochs, lr=2e-3, seed=seed)
        report = train_student(model, data.x_train, None, data.y_train, settings)
        paths[name] = export_teacher(model, work / f"{name}.onnx")
        print(
            f"trained {name}: {100 * accuracy(model, data):.2f}% validation accuracy "
            f"({report.epochs_run} epochs, {report.seconds:.0f} s)",
            flush=True,
        )
    return paths, data
