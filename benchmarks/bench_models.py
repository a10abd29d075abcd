"""The four benchmark models: the ``--models-dir`` option and the lookup every script shares.

resnet18, mobilenet_v2, mobilenet_v3_small and efficientnet_b0 (random weights, BatchNorm
statistics recalibrated) are not part of the repository. A benchmark that uses them takes
``--models-dir DIR``, a folder holding ``<name>.onnx`` for each; without it, or where a file
is missing, the script skips those models and says so in one line. The command a script
records in ``benchmarks/RESULTS.md`` names the folder ``DIR``, never the path it was given.
Their inputs are :func:`photo_crops` of scikit-image's bundled photos (real images, no download).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

import numpy as np

BENCHMARK_MODELS = ("resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0")
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
