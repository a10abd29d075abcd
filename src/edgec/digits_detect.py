"""``--data digits-detect``: a deterministic detection data set made from scikit-learn's digits.

Each frame is a ``64 x 64`` grey canvas (``[N, 1, 64, 64]`` float32 in [0, 1]) with clutter —
sensor noise, a brightness gradient, line segments and filled rectangles — and zero to three
handwritten digits (scikit-learn's bundled 8x8 images, scaled to 12-20 pixels) placed without
overlapping. About half of the frames hold no digit at all, the case a detection cascade is for:
a camera that mostly sees nothing.

Targets are padded arrays, so a split stays two plain arrays: ``boxes`` ``[N, 3, 4]`` (float32,
``x1, y1, x2, y2`` in pixels, the tight box around the digit's ink) and ``classes`` ``[N, 3]``
(int64, the digit, ``-1`` for an unused slot). The frames are split into train and validation
parts exactly as :func:`edgec.data.split` splits unlabelled data (same seed, same share); the
split and the :class:`edgec.data.DetectionDataset` are made in :mod:`edgec.data` (this module
imports nothing from edgec, so the data module can import it).

Everything is drawn from one ``numpy`` generator seeded with :data:`GENERATOR_SEED`: the same
numpy and scikit-learn versions give the same frames, byte for byte.
"""

from __future__ import annotations

import numpy as np

NAME = "digits-detect"
FRAMES = 2400
SIZE = 64
MAX_OBJECTS = 3
NUM_CLASSES = 10
GENERATOR_SEED = 2024
# 0, 1, 2 or 3 digits: about half of the frames are empty.
_COUNT_PROBABILITIES = (0.5, 0.2, 0.17, 0.13)
_INK = 0.15  # a scaled digit pixel above this is ink: the box is tight around it


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a square image to ``size x size`` (pure numpy, deterministic)."""
    n = image.shape[0]
    pos = (np.arange(size) + 0.5) * n / size - 0.5
    pos = np.clip(pos, 0, n - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = pos - lo
    rows = image[lo] * (1 - w)[:, None] + image[hi] * w[:, None]
    return rows[:, lo] * (1 - w)[None, :] + rows[:, hi] * w[None, :]


def _clutter(rng: np.random.Generator) -> np.ndarray:
    """A background: noise, a gradient, a few line segments and filled rectangles."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    angle = rng.uniform(0, 2 * np.pi)
    canvas = rng.uniform(0.0, 0.15) * (np.cos(angle) * xx + np.sin(angle) * yy + 1) / 2
    canvas = canvas + rng.normal(0, 0.04, (SIZE, SIZE))
    for _ in range(rng.integers(1, 5)):  # thin strokes, like a digit's but straight
        x0, y0, x1, y1 = rng.uniform(0, SIZE, 4)
        t = np.linspace(0, 1, 96)
        px = np.clip((x0 + t * (x1 - x0)).astype(int), 0, SIZE - 1)
        py = np.clip((y0 + t * (y1 - y0)).astype(int), 0, SIZE - 1)
        canvas[py, px] = np.maximum(canvas[py, px], rng.uniform(0.3, 0.8))
    for _ in range(rng.integers(0, 3)):  # dim blocks
        x0, y0 = rng.integers(0, SIZE - 6, 2)
        w, h = rng.integers(3, 10, 2)
        canvas[y0 : y0 + h, x0 : x0 + w] += rng.uniform(0.1, 0.35)
    return canvas


def _overlaps(box: np.ndarray, placed: list[np.ndarray], gap: float = 2.0) -> bool:
    return any(
        box[0] < b[2] + gap and b[0] < box[2] + gap and box[1] < b[3] + gap and b[1] < box[3] + gap
        for b in placed
    )


def generate(
    frames: int = FRAMES, seed: int = GENERATOR_SEED
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The frames, boxes and classes (see the module docstring for their shapes)."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    bunch = load_digits()  # as edgec.data.digits_arrays, which this module may not import
    digits, labels = bunch.images.astype(np.float32) / 16.0, bunch.target.astype(np.int64)
    x = np.zeros((frames, 1, SIZE, SIZE), np.float32)
    boxes = np.zeros((frames, MAX_OBJECTS, 4), np.float32)
    classes = np.full((frames, MAX_OBJECTS), -1, np.int64)
    for i in range(frames):
        canvas = _clutter(rng)
        count = rng.choice(len(_COUNT_PROBABILITIES), p=_COUNT_PROBABILITIES)
        placed: list[np.ndarray] = []
        for _ in range(count):
            k = rng.integers(len(digits))
            size = int(rng.integers(12, 21))
            glyph = _resize(digits[k], size) * rng.uniform(0.7, 1.0)
            ink_y, ink_x = np.nonzero(glyph > _INK)
            for _try in range(30):  # rejection sampling; a crowded frame keeps fewer digits
                ox, oy = rng.integers(0, SIZE - size + 1, 2)
                box = np.array(
                    [
                        ox + ink_x.min(),
                        oy + ink_y.min(),
                        ox + ink_x.max() + 1,
                        oy + ink_y.max() + 1,
                    ],
                    np.float32,
                )
                if not _overlaps(box, placed):
                    break
            else:
                continue
            region = canvas[oy : oy + size, ox : ox + size]
            canvas[oy : oy + size, ox : ox + size] = np.maximum(region, glyph)
            boxes[i, len(placed)] = box
            classes[i, len(placed)] = labels[k]
            placed.append(box)
        x[i, 0] = np.clip(canvas, 0.0, 1.0)
    return x, boxes, classes
