"""Inputs without labels for distillation: ``--unlabeled DIR|FILE.npz``.

Students learn the teacher's function on them (the teacher labels every view), so field data
nobody has labelled still helps; accuracy is judged on ``--data``'s labels only. Sources:

* a capture directory that ``edgec run --capture DIR`` wrote (its kept frames, oldest first);
* any other directory: its ``.npy`` and ``.npz`` files (``x`` in each ``.npz``), in name order,
  each holding one input or a batch of them;
* ``FILE.npz``: its array ``x`` (what ``edgec captures DIR --export FILE.npz`` writes; a ``y``
  in it is ignored).

Every input must have the teacher's input shape (after the batch dimension). Bad sources raise
:class:`~edgec.errors.BadInputError` with one sentence saying what to pass instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgec.errors import BadInputError

EXPECTED = "a capture DIR (edgec run --capture), a directory of .npy/.npz files or an .npz with x"


def load_unlabeled(spec: str | Path, sample_shape: tuple[int, ...]) -> np.ndarray:
    """The inputs of ``spec`` stacked ``[N, *sample_shape]`` as float32.

    Args:
        spec: The ``--unlabeled`` path.
        sample_shape: One input's shape without the batch dimension (the teacher's).

    Raises:
        BadInputError: Missing or unreadable source, no inputs, non-numeric or non-finite
            values, or inputs of another shape.
    """
    path = Path(spec)
    sample_shape = tuple(sample_shape)
    if path.is_dir():
        arrays = _directory(path)
    elif path.suffix == ".npz":
        if not path.is_file():
            raise BadInputError(f"--unlabeled {path} does not exist; give {EXPECTED}.")
        arrays = [(path, _npz_x(path))]
    elif not path.exists():
        raise BadInputError(f"--unlabeled {path} does not exist; give {EXPECTED}.")
    else:
        raise BadInputError(f"--unlabeled {path} is not a directory or an .npz; give {EXPECTED}.")
    batches = [_as_batch(source, array, sample_shape) for source, array in arrays]
    x = np.concatenate(batches) if batches else np.zeros((0, *sample_shape), np.float32)
    if len(x) == 0:
        raise BadInputError(f"--unlabeled {path} holds no inputs; give {EXPECTED}.")
    if not np.isfinite(x).all():
        raise BadInputError(f"--unlabeled {path} contains NaN or infinite values.")
    return x


def _directory(path: Path) -> list[tuple[Path, np.ndarray]]:
    if (path / "index.json").is_file():
        from edgec.bundle.captures import read_captures

        return [(path, read_captures(path).x)]
    files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz") and p.is_file())
    if not files:
        raise BadInputError(
            f"--unlabeled {path} holds no captures and no .npy/.npz files; give {EXPECTED}."
        )
    arrays = []
    for file in files:
        if file.suffix == ".npz":
            arrays.append((file, _npz_x(file)))
            continue
        try:
            arrays.append((file, np.load(file, allow_pickle=False)))
        except (OSError, ValueError):
            raise BadInputError(f"--unlabeled file {file} is not a readable .npy array.") from None
    return arrays


def _npz_x(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise BadInputError(
                    f"--unlabeled file {path} has no array 'x' (it holds "
                    f"{', '.join(archive.files) or 'nothing'}); save the inputs as x."
                )
            return archive["x"]
    except BadInputError:
        raise
    except Exception:  # zipfile/format errors vary by numpy version
        raise BadInputError(f"--unlabeled file {path} is not a readable .npz archive.") from None


def _as_batch(source: Path, array: np.ndarray, sample_shape: tuple[int, ...]) -> np.ndarray:
    """``array`` as a batch of inputs: one input of ``sample_shape`` or ``[N, *sample_shape]``."""
    if not np.issubdtype(array.dtype, np.number):
        raise BadInputError(
            f"--unlabeled {source} holds {array.dtype} values; inputs must be numeric."
        )
    if tuple(array.shape) == sample_shape:
        array = array[None]
    if tuple(array.shape[1:]) != sample_shape:
        raise BadInputError(
            f"--unlabeled {source} has inputs of shape {list(array.shape[1:])} but the teacher "
            f"takes {list(sample_shape)} (after the batch dimension)."
        )
    return array.astype(np.float32, copy=False)
