"""The pack's packaging promises: what CI runs, what Manager installs, what core imports."""
import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci_commands = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
                   if line.strip().startswith("python -m pytest")]
    assert len(ci_commands) == 1, ci_commands
    assert re.search(rf"^{re.escape(ci_commands[0])}$", readme, re.M), f"README lacks the line: {ci_commands[0]}"


def test_requirements_leave_torch_to_the_host():
    names = [re.split(r"[<>=!~\[ ;]", line.strip())[0].lower()
             for line in (ROOT / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert names and not {"torch", "torchvision", "torchsde", "torchaudio"} & set(names)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = [re.split(r"[<>=!~\[ ;]", d)[0].lower() for d in project["project"]["dependencies"]]
    assert sorted(deps) == sorted(names)
    comfy = project["tool"]["comfy"]
    assert comfy["requires-comfyui"] and comfy["DisplayName"]
    assert "comfyui" not in project["project"]["name"].lower()


_IMPORT_EVERY_CORE_MODULE = """
import importlib, pkgutil, sys

HOST = ("comfy", "comfy_api", "comfy_extras", "execution", "folder_paths", "latent_preview", "nodes")


class RefuseComfyUI:  # any import of a ComfyUI module from core fails loudly, even where ComfyUI is installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HOST:
            raise ImportError("core imported the ComfyUI module " + name)


sys.meta_path.insert(0, RefuseComfyUI())
import core

names = sorted(m.name for m in pkgutil.iter_modules(core.__path__))
for name in names:
    importlib.import_module("core." + name)
print(" ".join(names))
"""


def test_core_imports_without_comfyui():
    """Every module of core/ is imported (core/__init__ loads its names lazily, so importing the package alone would
    prove nothing) with ComfyUI's modules made unimportable."""
    out = subprocess.run([sys.executable, "-c", _IMPORT_EVERY_CORE_MODULE], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    imported = out.stdout.split()
    expected = sorted(p.stem for p in (ROOT / "core").glob("*.py") if p.stem != "__init__")
    assert imported == expected, (imported, expected)


def test_core_import_check_can_fail(tmp_path):
    """The check above fails for a core module that imports ComfyUI (a copy of core with one such module)."""
    import shutil

    shutil.copytree(ROOT / "core", tmp_path / "core")
    (tmp_path / "core" / "leaky.py").write_text("import folder_paths\n")
    out = subprocess.run([sys.executable, "-c", _IMPORT_EVERY_CORE_MODULE], cwd=tmp_path, capture_output=True,
                         text=True)
    assert out.returncode != 0 and "core imported the ComfyUI module folder_paths" in out.stderr


def test_node_ids_are_prefixed():
    ids = []
    for path in (ROOT / "nodes").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "NODE_CLASS_MAPPINGS" for t in node.targets):
                if isinstance(node.value, ast.Dict):
                    ids += [k.value for k in node.value.keys]
    assert ids and all(i.startswith("P2PZ_") for i in ids), ids


def test_command_line_and_workflows_save_to_one_folder():
    """edit_image.py writes where the example workflows' SaveImage nodes do: one folder of ComfyUI's output."""
    import json

    sys.path.insert(0, str(ROOT))
    import edit_image  # standard library only at import

    folders = set()
    for path in sorted((ROOT / "example_workflows").glob("*.json")):
        for node in json.loads(path.read_text())["nodes"]:
            if node["type"] == "SaveImage":
                folders.add(node["widgets_values"][0].split("/")[0])
    assert folders == {edit_image.OUTPUT_SUBFOLDER} == {"pix2pix-zero"}


def _absolute_imports(path):
    """Every module name a Python file imports absolutely (import x.y; from x.y import z), anywhere in the file."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.append(node.module or "")
    return names


def test_what_ships_never_imports_fixtures_world_benchmarks_or_tests():
    """The node pack (root __init__.py, core/, nodes/), the commands and their runtime (scripts/) import none of the
    tiny-model fixtures, the learned world, the benchmarks or the tests: they are not installed for users."""
    apart = {"fixtures", "world", "bench", "tests"}
    shipped = [ROOT / "__init__.py", *(ROOT / "core").glob("*.py"), *(ROOT / "nodes").glob("*.py"),
               *(ROOT / "scripts").glob("*.py"), *(ROOT / name for name in ("edit_image.py", "collect_pairs.py",
                                                                           "train_student.py"))]
    found = [f"{path.relative_to(ROOT)}: {n}" for path in shipped for n in _absolute_imports(path)
             if n.split(".")[0] in apart]
    assert len(shipped) > 30 and found == [], found


def test_host_tests_use_the_pack_as_comfyui_loaded_it():
    """Host tests take the pack's modules from comfy.pack_import (scripts/comfy_host.py), never from a top-level
    `core` import: that would be a second copy of core beside the one ComfyUI loaded (other classes, other module
    state, a monkeypatch that misses). The command tests run the commands as users do, in their own module space."""
    commands = {"test_host_collect_pairs.py", "test_host_edit_command.py"}
    files = [p for p in (ROOT / "tests").glob("test_host_*.py") if p.name not in commands]
    files += [ROOT / "tests" / "map_losses.py", ROOT / "tests" / "flow_checks.py"]
    found = [f"{path.name}: {n}" for path in files for n in _absolute_imports(path) if n.split(".")[0] == "core"]
    assert len(files) >= 20 and found == [], found
