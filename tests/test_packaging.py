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


def test_core_imports_without_comfyui():
    code = "import sys, core; bad = [m for m in sys.modules if m.split('.')[0] in ('comfy', 'nodes', 'folder_paths')]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


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
