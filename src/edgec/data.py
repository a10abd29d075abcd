"""Data sources for calibration, distillation and accuracy: ``--data``.

A data source yields model inputs ``x`` (float32, the model's input shape with the batch
dimension first) and optional integer labels ``y``, split deterministically into train and
validation parts. Sources:

* ``digits`` — scikit-learn's bundled 8x8 handwritten digits (1,797 real images, no download),
  shaped ``[N, 1, 8, 8]`` with pixel values / 16, exactly what the example teacher takes.
* ``digits-detect`` — a generated detection set (:mod:`edgec.digits_detect`): 2,400 cluttered
  64x64 frames with zero to three digits each, as a :class:`DetectionDataset` (boxes and classes).
* ``path/to/file.npz`` — an array ``x`` and optional ``y``.

Bad data (missing file, wrong shape, NaNs, too few samples, labels out of range) raises
:class:`~edgec.errors.BadInputError` before any work starts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgec.errors import BadInputError

MIN_SAMPLES = 20
VALIDATION_SHARE = 0.25
SPLIT_SEED = 0


@dataclass(frozen=True)
class Dataset:
    """Inputs and optional labels, split into train and validation parts.

    Attributes:
        name: What the user passed (``digits`` or a path), for messages; the manifest records
            only the file name.
        x_train: Training inputs, float32, batch first.
        y_train: Training labels (int64) or ``None`` when the data has none.
        x_val: Validation inputs.
        y_val: Validation labels or ``None``.
        sha256: Hash of the full data (inputs and labels) before splitting.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray | None
    x_val: np.ndarray
    y_val: np.ndarray | None
    sha256: str

    @property
    def has_labels(self) -> bool:
        """Whether labels are available."""
        return self.y_val is not None

    def summary(self) -> dict:
        """A JSON-friendly description for the manifest.

        The data is recorded by content (``sha256``) and file name: the directory it was read
        from would make the same data give a different bundle.
        """
        return {
            "name": Path(self.name).name,
            "sha256": self.sha256,
            "train": len(self.x_train),
            "validation": len(self.x_val),
            "labels": self.has_labels,
        }


@dataclass(frozen=True)
class DetectionDataset(Dataset):
    """A :class:`Dataset` with boxes and classes per frame instead of labels.

    Attributes:
        boxes_train: ``[N, M, 4]`` xyxy pixel boxes of the training frames (``M`` slots).
        classes_train: ``[N, M]`` classes, ``-1`` for an unused slot.
        boxes_val: The validation frames' boxes.
        classes_val: The validation frames' classes.
    """

    boxes_train: np.ndarray | None = None
    classes_train: np.ndarray | None = None
    boxes_val: np.ndarray | None = None
    classes_val: np.ndarray | None = None

    def summary(self) -> dict:
        """The manifest's data record, with the task and the object counts."""
        return {
            **super().summary(),
            "task": "detection",
            "objects_validation": int((self.classes_val >= 0).sum()),
            "empty_validation": int((self.classes_val < 0).all(axis=1).sum()),
        }


def _validation_mask(n: int, seed: int) -> np.ndarray:
    """Which of ``n`` unlabelled samples :func:`split` puts in the validation part."""
    order = np.random.default_rng(seed).permutation(n)
    mask = np.zeros(n, dtype=bool)
    mask[order[: max(1, round(n * VALIDATION_SHARE))]] = True
    return mask


def _hash_arrays(x: np.ndarray, y: np.ndarray | None) -> str:
    digest = hashlib.sha256()
    digest.update(str((x.shape, str(x.dtype))).encode())
    digest.update(np.ascontiguousarray(x).tobytes())
    if y is not None:
        digest.update(np.ascontiguousarray(y).tobytes())
    return digest.hexdigest()


def split(name: str, x: np.ndarray, y: np.ndarray | None, seed: int = SPLIT_SEED) -> Dataset:
    """Validate ``x``/``y`` and split them deterministically (stratified when labelled).

    Raises:
        BadInputError: Too few samples, NaN or infinite values, or labels not matching ``x``.
    """
    if x.ndim < 2:
        raise BadInputError(
            f"Data '{name}': 'x' must have a batch dimension and at least one more, "
            f"got shape {list(x.shape)}."
        )
    if len(x) < MIN_SAMPLES:
        raise BadInputError(
            f"Data '{name}' has {len(x)} samples; at least {MIN_SAMPLES} are needed."
        )
    if not np.issubdtype(x.dtype, np.number):
        raise BadInputError(f"Data '{name}': 'x' must be numeric, got dtype {x.dtype}.")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise BadInputError(f"Data '{name}': 'x' contains NaN or infinite values.")
    if y is not None:
        if y.ndim != 1 or len(y) != len(x):
            raise BadInputError(
                f"Data '{name}': 'y' must be one integer label per sample "
                f"({len(x)}), got shape {list(y.shape)}."
            )
        if not np.issubdtype(y.dtype, np.integer):
            raise BadInputError(f"Data '{name}': 'y' must hold integer labels, got {y.dtype}.")
        if (y < 0).any():
            raise BadInputError(f"Data '{name}': labels must be >= 0, found {int(y.min())}.")
        y = y.astype(np.int64, copy=False)
    rng = np.random.default_rng(seed)
    if y is not None:
        # Stratified: every class keeps the same share in both parts.
        val_idx = []
        for cls in np.unique(y):
            members = np.flatnonzero(y == cls)
            rng.shuffle(members)
            val_idx.extend(members[: max(1, round(len(members) * VALIDATION_SHARE))])
        val_mask = np.zeros(len(x), dtype=bool)
        val_mask[val_idx] = True
    else:
        val_mask = _validation_mask(len(x), seed)
    return Dataset(
        name=name,
        x_train=x[~val_mask],
        y_train=None if y is None else y[~val_mask],
        x_val=x[val_mask],
        y_val=None if y is None else y[val_mask],
        sha256=_hash_arrays(x, y),
    )


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``x`` ``[1797, 1, 8, 8]`` float32 in [0, 1] and ``y`` int64."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    return x, bunch.target.astype(np.int64)


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise BadInputError(
                    f"Data file {path} has no array 'x' (it holds {', '.join(archive.files)})."
                )
            x = archive["x"]
            y = archive["y"] if "y" in archive.files else None
    except BadInputError:
        raise
    except Exception:  # zipfile/format errors vary by numpy version
        raise BadInputError(f"Data file {path} is not a readable .npz archive.") from None
    return x, y


def digits_detect_dataset(seed: int = SPLIT_SEED) -> DetectionDataset:
    """``--data digits-detect``: the generated frames, split like unlabelled data."""
    from edgec.digits_detect import NAME, generate

    x, boxes, classes = generate()
    base = split(NAME, x, None, seed)
    val = _validation_mask(len(x), seed)
    sha = _hash_arrays(x, np.concatenate([boxes.reshape(len(x), -1), classes], axis=1))
    return DetectionDataset(
        **{**base.__dict__, "sha256": sha},
        boxes_train=boxes[~val],
        classes_train=classes[~val],
        boxes_val=boxes[val],
        classes_val=classes[val],
    )


def load_dataset(spec: str, seed: int = SPLIT_SEED) -> Dataset:
    """Load a ``--data`` source by name or path and split it.

    Raises:
        BadInputError: Unknown source, unreadable file, or invalid contents.
    """
    if spec == "digits":
        x, y = digits_arrays()
        return split("digits", x, y, seed)
    if spec == "digits-detect":
        return digits_detect_dataset(seed)
    path = Path(spec)
    if path.suffix == ".npz":
        if not path.is_file():
            raise BadInputError(f"Data file {path} does not exist.")
        x, y = _load_npz(path)
        return split(str(path), x, y, seed)
    raise BadInputError(
        f"Unknown data source '{spec}': use 'digits', 'digits-detect' or a .npz file with "
        "arrays 'x' and "
        "optional 'y'."
    )


def check_matches_model(data: Dataset, input_shape: tuple[int, ...], num_classes: int | None):
    """Check that the data fits the model's single input and, if known, its class count.

    Raises:
        BadInputError: Sample shape or labels do not match the model.
    """
    sample_shape = tuple(data.x_val.shape[1:])
    if sample_shape != tuple(input_shape[1:]):
        raise BadInputError(
            f"Data '{data.name}' has samples of shape {list(sample_shape)} but the model's "
            f"input takes {list(input_shape[1:])} (after the batch dimension)."
        )
    if num_classes is not None and data.has_labels:
        top = int(max(data.y_train.max(initial=0), data.y_val.max(initial=0)))
        if top >= num_classes:
            raise BadInputError(
                f"Data '{data.name}' has label {top} but the model outputs {num_classes} classes."
            )
