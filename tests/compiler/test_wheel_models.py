"""Every ONNX model shipped in the installed wheels compiles for the host or is refused with
exit 2, never exit 3 (surprise 7: scikit-learn's ZipMap classifier in onnxruntime's wheel was
an "internal error").

The sweep takes each ``.onnx`` under site-packages up to 300 KB (onnx's backend test models,
onnxruntime's datasets), except onnx's ``light/`` architectures, which
``test_light_models.py`` compiles with output checks. Dynamic input dimensions are fixed to 1
through the API's ``input_shapes``; string, sequence and other inputs are refused by name.
Old-opset models (onnx's ``test_operator_mm`` at opset 6, ``test_sequence_model5``/``8`` at
opset 12) are in the sweep: rewrites must only emit forms their opset allows.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import onnx
import pytest

from edgec.compiler import compile_model
from edgec.config import CompileConfig
from edgec.errors import EXIT_BAD_INPUT, EdgecError

SITE = Path(sysconfig.get_paths()["purelib"])
MAX_BYTES = 300_000
MODELS = sorted(
    path
    for path in SITE.glob("**/*.onnx")
    if path.stat().st_size <= MAX_BYTES and "light" not in path.parent.parts
)
pytestmark = pytest.mark.slow


def _static_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Dynamic input dimensions fixed to 1 (inputs without a tensor shape are left alone)."""
    model = onnx.load(path, load_external_data=False)
    weights = {init.name for init in model.graph.initializer}
    shapes = {}
    for value in model.graph.input:
        tensor = value.type.tensor_type
        if value.name in weights or not value.type.HasField("tensor_type"):
            continue
        if not tensor.HasField("shape"):
            continue
        dims = [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 0
            for d in tensor.shape.dim
        ]
        if 0 in dims:
            shapes[value.name] = tuple(d or 1 for d in dims)
    return shapes


def _param(path: Path):
    return pytest.param(path, id=path.relative_to(SITE).as_posix())


def test_the_sweep_finds_the_zipmap_model():
    assert any(p.name == "logreg_iris.onnx" for p in MODELS)
    assert len(MODELS) > 100


@pytest.mark.parametrize("path", [_param(p) for p in MODELS])
def test_wheel_model_compiles_or_is_refused_with_exit_2(path, tmp_path):
    config = CompileConfig(
        model=path,
        target="host",
        output=tmp_path / "bundle",
        input_shapes=_static_shapes(path),
        students="none",
        precision="fp32",
        measure_seconds=0.05,
    )
    try:
        compile_model(config)
    except EdgecError as err:
        assert err.exit_code == EXIT_BAD_INPUT, str(err)
        assert "\n" not in str(err)
        assert not (tmp_path / "bundle").exists()
