"""A missing ai-edge-litert is one sentence that says how to install it, for the schema and
for the interpreter alike."""

from __future__ import annotations

import sys

import pytest

from edgec.errors import MissingDependencyError
from edgec.targets.litert.flatbuffer import schema
from edgec.targets.litert.runner import interpreter_class


@pytest.mark.parametrize(
    ("module", "load"),
    [
        ("ai_edge_litert.schema_py_generated", schema),
        ("ai_edge_litert.interpreter", interpreter_class),
    ],
)
def test_a_missing_litert_install_is_one_sentence(monkeypatch, module, load):
    """With the module unimportable (None in sys.modules), the loader raises
    MissingDependencyError naming the extra, not an ImportError."""
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgec\[litert\]'"):
        load()
