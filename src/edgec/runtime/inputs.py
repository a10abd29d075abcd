"""Inputs for the device runtime: ``.npy``/``.npz`` batches and images, one tensor per frame.

Self-contained (NumPy; Pillow only when an image is read): the runtime generator copies it
verbatim into a bundle's ``runtime/``.

:func:`iter_frames` walks the paths lazily and yields one raw frame at a time (a sample of an
array, or an image path); :func:`prepare` turns a raw frame into the batch-1 tensor the first
stage takes. The device runtime runs :func:`prepare` for frame ``n + 1`` while frame ``n`` is in
the cascade.

* ``.npy``: an array of samples ``[N, ...]`` (or one sample, with or without its batch
  dimension) matching the model's input.
* ``.npz``: its ``x`` array (or its only array), as for ``.npy``.
* Images (``.png``, ``.jpg``, ...): when the bundle fuses pre-processing (the manifest's input
  has a ``preprocess`` entry) the image is converted to the frame the bundle takes (size,
  colour order, layout, dtype) and the stages do the rest. Otherwise the image is resized to
  the model's input, converted to grey or RGB by its channel count, and scaled to ``[0, 1]``
  (pixel / 255): compile with ``--preprocess`` when the model needs another normalisation.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ARRAY_SUFFIXES = (".npy", ".npz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".ppm", ".tif", ".tiff")


class InputFileError(ValueError):
    """An input that cannot be fed to the bundle; the message is one sentence saying why."""


@dataclass(frozen=True)
class InputSpec:
    """The input the first stage takes (the manifest's ``inputs[0]``).

    Attributes:
        name: Input name.
        shape: Static shape, batch first.
        dtype: NumPy dtype name.
        layout: ``NCHW``/``NHWC`` or ``None``.
        preprocess: The fused pre-processing description, or ``None``.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    layout: str | None = None
    preprocess: dict | None = None

    @classmethod
    def from_manifest(cls, entry: dict) -> InputSpec:
        """Read a manifest ``inputs`` entry."""
        return cls(
            name=entry["name"],
            shape=tuple(int(d) for d in entry["shape"]),
            dtype=entry["dtype"],
            layout=entry.get("layout"),
            preprocess=entry.get("preprocess"),
        )


def iter_frames(paths: Iterable[str | Path], spec: InputSpec) -> Iterator[np.ndarray | Path]:
    """Yield raw frames from ``paths`` in order: array samples, or image paths.

    Raises:
        InputFileError: A missing file, an unknown suffix, or an array that does not fit.
    """
    for raw_path in paths:
        path = Path(raw_path)
        if not path.is_file():
            raise InputFileError(f"Input {path} does not exist or is not a file.")
        suffix = path.suffix.lower()
        if suffix in ARRAY_SUFFIXES:
            yield from _samples(_load_array(path), spec, path)
        elif suffix in IMAGE_SUFFIXES:
            yield path
        else:
            raise InputFileError(
                f"Input {path} has an unknown type; give .npy or .npz arrays or images "
                f"({', '.join(IMAGE_SUFFIXES)})."
            )


def _load_array(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as archive:
            names = archive.files
            if "x" in names:
                return archive["x"]
            if len(names) == 1:
                return archive[names[0]]
    except Exception:  # numpy raises several types for corrupt files
        raise InputFileError(f"Input {path} is not a readable {path.suffix} file.") from None
    raise InputFileError(
        f"Input {path} holds arrays {', '.join(names) or 'none'}; name the inputs 'x'."
    )


def _samples(array: np.ndarray, spec: InputSpec, path: Path) -> Iterator[np.ndarray]:
    sample = spec.shape[1:]
    if array.shape == sample:
        array = array[None]
    if array.ndim != len(spec.shape) or tuple(array.shape[1:]) != sample:
        raise InputFileError(
            f"Input {path} holds an array of shape {list(array.shape)}; the bundle takes "
            f"samples of shape {list(sample)} (give [N, {', '.join(map(str, sample))}])."
        )
    if not np.issubdtype(array.dtype, np.number):
        raise InputFileError(f"Input {path} holds {array.dtype} values, not numbers.")
    for index in range(len(array)):
        yield array[index : index + 1]


def prepare(raw: np.ndarray | Path, spec: InputSpec) -> np.ndarray:
    """The batch-1 tensor for one raw frame, in the input's dtype.

    Raises:
        InputFileError: Values that do not fit the dtype, NaNs, or an unreadable image.
    """
    array = _image(raw, spec) if isinstance(raw, Path) else np.asarray(raw)
    target = np.dtype(spec.dtype)
    if target.kind in "iu":
        info = np.iinfo(target)
        if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
            raise InputFileError(f"The bundle takes {spec.dtype} frames; got fractional values.")
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise InputFileError(f"The bundle takes {spec.dtype} frames; got values out of range.")
    tensor = np.ascontiguousarray(array.astype(target, copy=False))
    if tensor.dtype.kind == "f" and not np.isfinite(tensor).all():
        raise InputFileError("An input holds NaN or infinite values.")
    return tensor


def _image_geometry(spec: InputSpec) -> tuple[str, int, int, int]:
    if len(spec.shape) != 4:
        raise InputFileError(
            f"Images need a 4-D image input; the bundle takes shape {list(spec.shape)}."
        )
    layout = spec.layout
    if layout is None:
        layout = "NCHW" if spec.shape[1] in (1, 3) else "NHWC"
    if layout == "NCHW":
        _, channels, height, width = spec.shape
    else:
        _, height, width, channels = spec.shape
    if channels not in (1, 3):
        raise InputFileError(f"Images need 1 or 3 channels; the bundle takes {channels}.")
    return layout, channels, height, width


def _image(path: Path, spec: InputSpec) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise InputFileError(
            f"Reading the image {path} needs Pillow: pip install pillow."
        ) from None
    layout, channels, height, width = _image_geometry(spec)
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(image)
    except Exception:  # Pillow raises many types for unreadable files
        raise InputFileError(f"Input {path} is not a readable image.") from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if spec.preprocess and spec.preprocess.get("color") == "bgr":
        pixels = pixels[:, :, ::-1]
    if layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    pixels = pixels[None]
    if spec.preprocess:
        return pixels  # the stages normalise the frame themselves
    return pixels.astype(np.float32) / 255.0
