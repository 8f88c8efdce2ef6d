"""The pack's own exception types read as pix2pix_zero.<Name> in ComfyUI's error report, wherever it is installed."""
import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _exception_classes():
    """(module, class name) of every public exception class defined in core/ (nodes/ classes need ComfyUI: the
    host test covers them through the loaded pack)."""
    found = []
    for path in sorted((ROOT / "core").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_") and any(
                    isinstance(b, ast.Name) and (b.id.endswith(("Error", "Exception"))) for b in node.bases):
                found.append((f"core.{path.stem}", node.name))
    return found


def full_type_name(klass):
    """ComfyUI's execution.full_type_name (identical in 0.3.64, 0.3.75 and 0.8.0), which names the type in the UI."""
    module = klass.__module__
    if module == "builtins":
        return klass.__qualname__
    return module + "." + klass.__qualname__


def test_the_pack_defines_exception_types():
    assert {"StudentFileError", "BlipModelMissingError"} <= {name for _, name in _exception_classes()}


@pytest.mark.parametrize("module, name", _exception_classes())
def test_exception_types_have_a_clean_name(module, name):
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, Exception)
    assert full_type_name(cls) == f"pix2pix_zero.{name}"
    with pytest.raises(cls):  # still raised and caught as the class it is
        raise cls("x")
