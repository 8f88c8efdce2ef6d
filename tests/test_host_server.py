"""End to end: a real ComfyUI server (a subprocess on 127.0.0.1, a free port) with this pack in its custom_nodes and
tiny models in a temporary models folder; /object_info, then every example workflow in API form, images back from
/history. The server is always stopped by the test itself (comfy_server's context manager)."""
import glob
import json
import os

import pytest

from scripts.comfy_host import comfy_server
from scripts.workflow_api import check_widget_values, ui_to_api, widget_values

pytestmark = pytest.mark.host

WORKFLOWS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "example_workflows", "*.json")))
# Small sizes and step counts so every workflow runs in seconds on a CPU with the tiny models.
FAST = {"steps": 3, "count": 12, "width": 64, "height": 64, "max_steps": 4}
TINY_BLIP = "tiny-blip"
TINY_STUDENT = "tiny_student.safetensors"
BUNDLED_DIRECTION = "pix2pix_zero_cat_to_dog.safetensors"  # the pack's directions/, named by the reuse example
PACK_PHOTO = "pix2pix_zero_cat.jpg"  # the pack copies assets/cat.jpg into the input folder under this name
# The SD 3.5 / Flux examples: no tiny SD3/Flux checkpoint, text encoder or Flux VAE FILE exists here (the MMDiT tests
# build their tiny models in memory), so these are checked up to the server's own validation of their API form
# (/prompt accepts them, with empty stand-in files under the names they download) and their run stops at the first
# loader reading a stand-in. Their graphs beyond the loaders are run on tiny models by tests/test_host_mmdit*.py.
MMDIT_LOADERS = {"TripleCLIPLoader": "text_encoders", "DualCLIPLoader": "text_encoders", "UNETLoader": "diffusion_models",
                 "VAELoader": "vae", "CheckpointLoaderSimple": "checkpoints"}
MODEL_WIDGETS = {"CheckpointLoaderSimple": ("ckpt_name",), "TripleCLIPLoader": ("clip_name1", "clip_name2", "clip_name3"),
                 "DualCLIPLoader": ("clip_name1", "clip_name2"), "UNETLoader": ("unet_name",), "VAELoader": ("vae_name",)}


def _is_mmdit(workflow):
    return any(n["type"] in ("ModelSamplingSD3", "ModelSamplingFlux") for n in workflow["nodes"])


def _write_stand_ins(models):
    """An empty file under every model name an MMDiT example downloads (properties.models), where none is yet."""
    for path in WORKFLOWS:
        with open(path, encoding="utf-8") as f:
            workflow = json.load(f)
        if not _is_mmdit(workflow):
            continue
        for node in workflow["nodes"]:
            for m in (node.get("properties") or {}).get("models") or []:
                target = models / m["directory"] / m["name"]
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists():
                    target.write_bytes(b"")


@pytest.fixture(scope="module")
def base_dir(comfy, pack_nodes, tiny_checkpoint_name, tmp_path_factory):
    """A ComfyUI base directory: tiny checkpoint, tiny BLIP, tiny student, an input photo."""
    import folder_paths

    from tiny_blip import save_tiny_blip

    base = tmp_path_factory.mktemp("comfy-base")
    models = base / "models"
    (models / "checkpoints").mkdir(parents=True)
    source = folder_paths.get_full_path("checkpoints", tiny_checkpoint_name)
    os.symlink(source, models / "checkpoints" / tiny_checkpoint_name)
    save_tiny_blip(str(models / "blip" / TINY_BLIP))
    (base / "input").mkdir()  # empty: the pack puts the photo the examples name there when it loads
    # The reuse example loads the pack's bundled direction (SD 1.5 width); a user's file of the same name comes first
    # in the folder list, so the tiny checkpoint's own direction stands in for it here.
    _write_direction(comfy, tiny_checkpoint_name, models / "pix2pix_zero_directions" / BUNDLED_DIRECTION)
    students = models / "pix2pix_zero_students"
    students.mkdir()
    _write_tiny_student(comfy, students / TINY_STUDENT)
    _write_stand_ins(models)
    return base


def _write_direction(comfy, checkpoint, path):
    """The direction the reuse example loads, made with the tiny checkpoint's CLIP (so it fits its width)."""
    save_direction = comfy.pack_import("core.direction").save_direction

    clip = comfy.call_node("CheckpointLoaderSimple", ckpt_name=checkpoint)[1]
    direction = comfy.call_node("P2PZ_BuildDirection", clip=clip, source="cat", target="dog",
                                sentence_source="generated", count=FAST["count"], seed=0)[0]
    save_direction(path, direction)


def _write_tiny_student(comfy, path):
    student = comfy.pack_import("core.student")
    model = student.build_student(student.StudentConfig(base_channels=8, num_res_blocks=1), seed=0)
    student.save_student(str(path), model, edit="cat -> dog", resolution=64)


@pytest.fixture(scope="module")
def server(base_dir):
    with comfy_server(base_dir) as s:
        yield s


def test_object_info_lists_every_node_with_description_and_tooltips(server, pack_nodes):
    info = server.get("/object_info")
    ours = {name for name, d in info.items() if d.get("python_module", "").endswith("comfyui-pix2pix-zero")}
    assert ours == set(pack_nodes), (sorted(ours), sorted(pack_nodes))
    for name in sorted(ours):
        d = info[name]
        assert name.startswith("P2PZ_") and d["category"] == "pix2pix-zero", name
        assert len(d["description"]) > 40, f"{name}: no description"
        for section in ("required", "optional"):
            for input_name, spec in (d["input"].get(section) or {}).items():
                options = spec[1] if len(spec) > 1 else {}
                assert options.get("tooltip"), f"{name}.{input_name}: no tooltip"
        assert len(d.get("output_tooltips") or []) == len(d["output"]), f"{name}: output tooltips"


def test_the_pack_brings_the_examples_photo_and_direction(server, base_dir):
    """Loading the pack put its cat photo into the (empty) input folder, and Load Edit Direction lists the bundled
    direction, so the examples name files that exist on a fresh install."""
    with open(os.path.join(os.path.dirname(__file__), "..", "assets", "cat.jpg"), "rb") as f:
        assert (base_dir / "input" / PACK_PHOTO).read_bytes() == f.read()
    info = server.get("/object_info")
    assert PACK_PHOTO in info["LoadImage"]["input"]["required"]["image"][0]
    assert BUNDLED_DIRECTION in info["P2PZ_LoadDirection"]["input"]["required"]["direction_name"][0]


@pytest.mark.parametrize("path", WORKFLOWS, ids=[os.path.basename(p) for p in WORKFLOWS])
def test_example_workflow_loads_and_runs(server, base_dir, tiny_checkpoint_name, path):
    with open(path, encoding="utf-8") as f:
        workflow = json.load(f)
    definitions = server.get("/object_info")

    # Loads without missing nodes or invalid widget values (model files are the user's to download).
    missing = sorted({n["type"] for n in workflow["nodes"]} - set(definitions) - {"Note", "MarkdownNote"})
    assert not missing, f"unknown node types {missing}"
    model_inputs = ("ckpt_name", "blip_model", "student_name", "direction_name", "image")
    assert check_widget_values(workflow, definitions, model_inputs) == []
    _check_model_properties(workflow, definitions)

    prompt = ui_to_api(workflow, definitions)
    if _is_mmdit(workflow):
        _check_mmdit_prompt(server, prompt)
        return
    _use_tiny_models(prompt, tiny_checkpoint_name)
    _make_fast(prompt)
    prompt_id = server.post_prompt(prompt)
    entry = server.wait_history(prompt_id, timeout=900)
    if not any(n["class_type"] == "SaveImage" for n in prompt.values()):  # building a direction: saves a file
        texts = [t for out in entry["outputs"].values() for t in out.get("text", [])]
        assert any("saved" in t for t in texts), entry["outputs"]
        return
    images = [img for out in entry["outputs"].values() for img in out.get("images", []) if img["type"] == "output"]
    assert images, f"no saved image in {entry['outputs']}"
    png = server.view(images[0])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def _check_model_properties(workflow, definitions):
    """Every model loader names the file it needs, where it goes and where to download it."""
    for node in workflow["nodes"]:
        if node["type"] != "CheckpointLoaderSimple":
            continue
        models = node.get("properties", {}).get("models") or []
        assert models, f"node {node['id']}: no properties.models"
        name = widget_values(node, definitions["CheckpointLoaderSimple"])["ckpt_name"]
        assert {m["name"] for m in models} >= {name}
        for m in models:
            assert m["directory"] == "checkpoints" and m["url"].startswith("https://") and m["name"].endswith(".safetensors")
    for node in workflow["nodes"]:  # the MMDiT examples' other loaders: text encoders, diffusion model, VAE
        if node["type"] not in MODEL_WIDGETS or node["type"] == "CheckpointLoaderSimple":
            continue
        models = node.get("properties", {}).get("models") or []
        values = widget_values(node, definitions[node["type"]])
        names = {values[w] for w in MODEL_WIDGETS[node["type"]]}
        assert {m["name"] for m in models} == names, f"node {node['id']}: properties.models {models} for {names}"
        for m in models:
            assert m["directory"] == MMDIT_LOADERS[node["type"]], m
            assert m["url"].startswith("https://huggingface.co/") and m["name"].endswith(".safetensors"), m


def _check_mmdit_prompt(server, prompt):
    """The server validates the API form (every input, link and combo value: post_prompt raises on node_errors); the
    run then stops at a model loader reading its empty stand-in file, and nowhere else."""
    from scripts.comfy_host import ServerError

    _make_fast(prompt)
    prompt_id = server.post_prompt(prompt)
    with pytest.raises(ServerError) as failed:
        server.wait_history(prompt_id, timeout=300)
    status = server.get(f"/history/{prompt_id}")[prompt_id]["status"]
    errors = [m[1] for m in status.get("messages", []) if m[0] == "execution_error"]
    assert errors and all(e.get("node_type") in MMDIT_LOADERS for e in errors), str(failed.value)[:2000]


def _use_tiny_models(prompt, checkpoint):
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = checkpoint
        elif node["class_type"] == "P2PZ_BLIPCaption":
            inputs["blip_model"] = TINY_BLIP
        elif node["class_type"] == "P2PZ_LoadStudent":
            inputs["student_name"] = TINY_STUDENT


def _make_fast(prompt):
    for node in prompt.values():
        inputs = node["inputs"]
        for key in ("steps", "count"):
            if isinstance(inputs.get(key), int):
                inputs[key] = min(inputs[key], FAST[key])
        if node["class_type"] in ("ImageScale", "EmptyLatentImage", "P2PZ_NoiseLatent"):
            inputs["width"], inputs["height"] = FAST["width"], FAST["height"]
