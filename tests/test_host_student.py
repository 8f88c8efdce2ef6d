"""The student nodes inside a real ComfyUI (in-process, CPU): load -> apply through the executor, model management,
refused files, pair collection and the training node."""
import copy
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tolerances import network_rounding_atol

from fixtures import tiny_models

pytestmark = pytest.mark.host

FOLDER = "pix2pix_zero_students"
NODES = ("P2PZ_LoadStudent", "P2PZ_ApplyStudent", "P2PZ_SavePairs", "P2PZ_TrainStudent")


@pytest.fixture
def core_student(comfy, pack_nodes):
    """The pack's core.student as ComfyUI loaded it (one copy of core in the process: scripts/comfy_host.pack_import)."""
    return comfy.pack_import("core.student")


@pytest.fixture
def core_data(comfy, pack_nodes):
    """The pack's core.student_data as ComfyUI loaded it."""
    return comfy.pack_import("core.student_data")


@pytest.fixture
def students_dir(comfy, tmp_path):
    """A temporary models/pix2pix_zero_students/ folder, appended to ComfyUI's list (the registry is extended, never
    replaced) and taken out again afterwards."""
    import folder_paths

    folder = str(tmp_path / FOLDER)
    os.makedirs(folder)
    folder_paths.add_model_folder_path(FOLDER, folder)
    yield folder
    paths = folder_paths.folder_names_and_paths[FOLDER][0]
    if folder in paths:
        paths.remove(folder)


def _random_student(core_student, path, seed=0, config=None):
    net = core_student.build_student(config, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    core_student.save_student(path, net, edit="cat -> dog", resolution=256, training_steps=10)
    return net.eval()


def _png(comfy, name, h, w, seed):
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 6, 6, generator=g)
    img = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear")[0].permute(1, 2, 0)
    Image.fromarray((img * 255).round().to(torch.uint8).numpy()).save(os.path.join(comfy.io_dirs()["input"], name))
    return name


def test_pack_registers_the_student_nodes(pack_nodes, comfy):
    import folder_paths

    import nodes

    for name in NODES:
        assert name in pack_nodes and nodes.NODE_CLASS_MAPPINGS[name] is pack_nodes[name]
        cls = pack_nodes[name]
        assert cls.CATEGORY == "pix2pix-zero" and cls.DESCRIPTION and nodes.NODE_DISPLAY_NAME_MAPPINGS[name]
        for group in cls.INPUT_TYPES().values():
            for input_name, spec in group.items():
                assert spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
    paths, exts = folder_paths.folder_names_and_paths[FOLDER]
    assert os.path.join(folder_paths.models_dir, FOLDER) in paths and ".safetensors" in exts


def test_load_then_apply_through_the_real_executor(comfy, pack_nodes, students_dir, core_student):
    """LoadImage (a 50x72 photo: not a multiple of 16) -> P2PZ_LoadStudent -> P2PZ_ApplyStudent -> SaveImage; the
    node's output equals core.apply_student on LoadImage's own tensor, bit for bit, and the student went through
    ComfyUI's model management."""
    import comfy.model_management as mm

    net = _random_student(core_student, os.path.join(students_dir, "tiny.safetensors"))
    # a train_state/ folder next to students is not offered in the list
    os.makedirs(os.path.join(students_dir, "train_state"))
    shutil.copy(os.path.join(students_dir, "tiny.safetensors"), os.path.join(students_dir, "train_state", "x.safetensors"))
    choices = pack_nodes["P2PZ_LoadStudent"].INPUT_TYPES()["required"]["student_name"][0]
    assert "tiny.safetensors" in choices and not any("train_state" in c for c in choices)

    name = _png(comfy, "student_in.png", 50, 72, seed=1)
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "P2PZ_LoadStudent", "inputs": {"student_name": "tiny.safetensors", "dtype": "auto"}},
        "3": {"class_type": "P2PZ_ApplyStudent", "inputs": {"student": ["2", 0], "image": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "p2pz_student"}},
    }
    result = comfy.run_prompt(prompt)
    image = comfy.node_output(result, "1")
    edited = comfy.node_output(result, "3")
    student = comfy.node_output(result, "2")
    assert edited.shape == image.shape == (1, 50, 72, 3) and edited.dtype == torch.float32
    # the loader keeps the weights bit exact and converts them to channels_last (faster): core's apply on the
    # same weights in that layout gives the same bits, and the default layout the same values up to summation order
    fast = copy.deepcopy(net).to(memory_format=torch.channels_last)
    assert torch.equal(edited, core_student.apply_student(fast, image.movedim(-1, 1)).movedim(1, -1))
    # the default layout: other kernels, float32 rounding of the network (tests/tolerances.py, rule 3)
    torch.testing.assert_close(edited, core_student.apply_student(net, image.movedim(-1, 1)).movedim(1, -1), rtol=0,
                               atol=network_rounding_atol(net, 0, edited))
    assert not torch.equal(edited, image)
    assert any(lm.model is student.patcher for lm in mm.current_loaded_models)
    assert student.metadata["edit"] == "cat -> dog" and "cat -> dog" in student.describe()
    saved = result["outputs"]["4"]["images"][0]
    assert os.path.isfile(os.path.join(comfy.io_dirs()["output"], saved["subfolder"], saved["filename"]))

    # a batch gives its images edited one by one (only float summation order may differ)
    batch = torch.cat([image, image.flip(1), image.flip(2)])
    out = comfy.call_node("P2PZ_ApplyStudent", student=student, image=batch)[0]
    torch.testing.assert_close(out[0:1], edited, rtol=0, atol=network_rounding_atol(net, 0, edited))  # rule 3
    assert out.shape == batch.shape
    with pytest.raises(ValueError, match="RGB"):
        comfy.call_node("P2PZ_ApplyStudent", student=student, image=torch.rand(1, 16, 16, 4))


def test_loader_refuses_other_files_with_a_clear_error(comfy, pack_nodes, students_dir, core_student):
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(4, 320, 3, 3)},
              os.path.join(students_dir, "sd15.safetensors"))
    _random_student(core_student, os.path.join(students_dir, "good.safetensors"))
    data = Path(os.path.join(students_dir, "good.safetensors")).read_bytes()
    with open(os.path.join(students_dir, "cut.safetensors"), "wb") as f:
        f.write(data[: len(data) // 3])
    for name, message in (("sd15.safetensors", "Stable Diffusion checkpoint"), ("cut.safetensors", "truncated")):
        prompt = {"1": {"class_type": "P2PZ_LoadStudent", "inputs": {"student_name": name, "dtype": "fp32"}},
                  "2": {"class_type": "P2PZ_ApplyStudent", "inputs": {"student": ["1", 0], "image": ["3", 0]}},
                  "3": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0}},
                  "4": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}
        with pytest.raises(AssertionError, match=message):
            comfy.run_prompt(prompt)


def test_save_pairs_collects_without_overwriting_and_filters(comfy, pack_nodes, core_data):
    a = _png(comfy, "pair_a.png", 64, 48, seed=2)
    b = _png(comfy, "pair_b.png", 64, 48, seed=3)

    def graph(edited_from, min_structure):
        return {
            "1": {"class_type": "LoadImage", "inputs": {"image": a}},
            "2": {"class_type": "LoadImage", "inputs": {"image": b}},
            "3": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "4": {"class_type": "P2PZ_SavePairs", "inputs": {
                "original": ["1", 0], "edited": edited_from, "dataset_name": "host_test", "edit": "invert",
                "min_structure": min_structure, "min_change": 0.0}},
        }

    folder = os.path.join(comfy.io_dirs()["output"], "pix2pix_zero_pairs", "host_test")
    shutil.rmtree(folder, ignore_errors=True)
    first = comfy.run_prompt(graph(["3", 0], 0.5))
    comfy.run_prompt(graph(["3", 0], 0.5))  # a fresh executor runs it again: a second pair, nothing replaced
    assert [p[0] for p in core_data.list_pairs(folder)] == [1, 2]
    assert "1/1 pairs written" in first["outputs"]["4"]["text"][0]
    original = comfy.node_output(first, "1")[0]
    stored = core_data.read_image(os.path.join(folder, "input", "000001.png")).permute(1, 2, 0)
    assert torch.equal(stored, (original * 255).round().to(torch.uint8))
    rejected = comfy.run_prompt(graph(["2", 0], 0.5))  # an unrelated image as the "edit"
    assert "rejected" in rejected["outputs"]["4"]["text"][1] and comfy.node_output(rejected, "4") == 0
    assert [p[0] for p in core_data.list_pairs(folder)] == [1, 2]
    with pytest.raises(AssertionError, match="invalid dataset name"):
        comfy.run_prompt(dict(graph(["3", 0], 0.0), **{"4": dict(graph(["3", 0], 0.0)["4"], inputs=dict(
            graph(["3", 0], 0.0)["4"]["inputs"], dataset_name="../escape"))}))


def test_train_node_trains_resumes_and_uses_the_vae_encoder(comfy, pack_nodes, students_dir, caplog, core_data):
    """P2PZ_TrainStudent on a pair folder, under inference_mode as the executor runs it, with the perceptual loss
    on a VAE encoder whose weights were made under inference_mode (as every loaded VAE's are); it says what it did
    (UI text, log lines, ComfyUI's progress bar) and writes files others can read (0644 under umask 022)."""
    import logging

    import folder_paths
    from comfy.utils import set_progress_bar_global_hook  # not "import comfy.utils": the fixture is named comfy

    save_pairs = core_data.save_pairs

    pairs = os.path.join(comfy.io_dirs()["output"], "pix2pix_zero_pairs", "host_swap")
    shutil.rmtree(pairs, ignore_errors=True)
    g = torch.Generator().manual_seed(0)
    imgs = torch.nn.functional.interpolate(torch.rand(4, 3, 4, 4, generator=g), size=(32, 32), mode="bilinear")
    save_pairs(pairs, imgs, imgs[:, [2, 1, 0]], record={"edit": "red -> blue"})
    with torch.inference_mode():
        _, _, vae = tiny_models.tiny_sd15(seed=1)
    assert next(vae.first_stage_model.parameters()).is_inference()

    folder_paths.add_model_folder_path(FOLDER, students_dir, is_default=True)  # write there, not in models/
    try:
        kwargs = {"dataset_name": "host_swap", "student_name": "swap", "steps": 3, "resolution": 16,
                  "batch_size": 2, "learning_rate": 1e-3, "lambda_adv": 0.1, "checkpoint_every": 2,
                  "color_jitter": False, "seed": 0}
        progress = []
        set_progress_bar_global_hook(lambda value, total, *_a, **_k: progress.append((value, total)))
        old_umask = os.umask(0o022)
        try:
            with caplog.at_level(logging.INFO):
                done = comfy.call_node("P2PZ_TrainStudent", vae=vae, **kwargs)
        finally:
            os.umask(old_umask)
            set_progress_bar_global_hook(None)
        student = done["result"][0]
        assert sorted(f for f in os.listdir(students_dir) if f.startswith("swap")) == [
            "swap-step000002.safetensors", "swap-step000003.safetensors"]
        for f in ("swap-step000002.safetensors", "swap-step000003.safetensors"):
            assert os.stat(os.path.join(students_dir, f)).st_mode & 0o777 == 0o644, f
        assert student.metadata["training_steps"] == "3" and student.metadata["edit"] == "red -> blue"
        text = done["ui"]["text"]
        assert text[0] == f"student written: {os.path.join(students_dir, 'swap-step000003.safetensors')}", text
        assert text[1].startswith("final loss (smoothed) at step 3: ") and " l1 " in text[1], text
        assert text[2].startswith("held-out L1 over 1 pairs: "), text
        logged = [r.getMessage() for r in caplog.records if "P2PZ_TrainStudent swap" in r.getMessage()]
        assert any("step 3/3, loss" in m for m in logged) and any(text[2] in m for m in logged), logged
        assert progress[-1] == (3, 3) and (1, 3) in progress, progress
        more = comfy.call_node("P2PZ_TrainStudent", **dict(kwargs, steps=4))["result"][0]  # resumes from step 3
        assert more.metadata["training_steps"] == "4"
        assert "swap-step000004.safetensors" in pack_nodes["P2PZ_LoadStudent"].INPUT_TYPES()["required"]["student_name"][0]
        out = comfy.call_node("P2PZ_ApplyStudent", student=more, image=imgs.movedim(1, -1))[0]
        assert out.shape == (4, 32, 32, 3) and np.isfinite(out.numpy()).all()
    finally:
        folder_paths.folder_names_and_paths[FOLDER][0].remove(students_dir)
        folder_paths.add_model_folder_path(FOLDER, students_dir)  # the fixture removes it again


def test_vae_features_work_on_comfyui_vae_encoders(comfy, core_student):
    _, _, vae = tiny_models.tiny_sd15(seed=2)
    features = core_student.vae_encoder_features(vae.first_stage_model.encoder, num_levels=3)
    assert features.layer_names == ["down.0.block.0", "down.1.block.0", "down.2.block.0"]
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    loss = core_student.FeaturePerceptualLoss(features)(x, torch.rand(1, 3, 32, 32))
    loss.backward()
    assert loss > 0 and x.grad.abs().sum() > 0


def test_student_config_sizes_are_respected(comfy, pack_nodes, students_dir, core_student):
    """Any image size works with a student of another size multiple (here 8)."""
    config = core_student.StudentConfig(base_channels=8, channel_mult=(1, 2, 4), num_res_blocks=1)
    net = _random_student(core_student, os.path.join(students_dir, "small.safetensors"), seed=4, config=config)
    student = comfy.call_node("P2PZ_LoadStudent", student_name="small.safetensors", dtype="fp32")[0]
    image = torch.rand(2, 13, 9, 3)
    out = comfy.call_node("P2PZ_ApplyStudent", student=student, image=image)[0]
    expected = core_student.apply_student(copy.deepcopy(net).to(memory_format=torch.channels_last), image.movedim(-1, 1))
    assert torch.equal(out, expected.movedim(1, -1))


def _ui_to_api(workflow, node_classes):
    """The UI-format workflow as an API prompt: links become [node, slot] inputs, widgets_values are matched to
    the node's widget inputs in INPUT_TYPES order (extra values such as LoadImage's upload button are dropped)."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in ("MarkdownNote", "Note"):
            continue
        spec = node_classes[node["type"]].INPUT_TYPES()
        linked = {i["name"]: links[i["link"]] for i in node["inputs"] if i.get("link") is not None}
        inputs = {name: [str(link[1]), link[2]] for name, link in linked.items()}
        widget_names = [n for group in ("required", "optional") for n, s in spec.get(group, {}).items()
                        if n not in linked and (isinstance(s[0], list) or s[0] in ("INT", "FLOAT", "STRING", "BOOLEAN"))]
        inputs.update(zip(widget_names, node["widgets_values"]))
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def test_example_workflow_runs(comfy, pack_nodes, students_dir, core_student):
    """example_workflows/pix2pix_zero_5_fast_student.json, converted to the API format, runs as shipped once its student file and
    image exist (LoadImage -> P2PZ_LoadStudent -> P2PZ_ApplyStudent -> SaveImage)."""
    import json

    import nodes

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "example_workflows", "pix2pix_zero_5_fast_student.json")) as f:
        workflow = json.load(f)
    assert workflow["version"] == 0.4 and workflow["last_node_id"] == max(n["id"] for n in workflow["nodes"])
    assert workflow["last_link_id"] == max(link[0] for link in workflow["links"])
    prompt = _ui_to_api(workflow, nodes.NODE_CLASS_MAPPINGS)
    assert [prompt[k]["class_type"] for k in sorted(prompt)] == ["LoadImage", "P2PZ_LoadStudent",
                                                                 "P2PZ_ApplyStudent", "SaveImage"]
    _random_student(core_student, os.path.join(students_dir, prompt["2"]["inputs"]["student_name"]), seed=7)
    _png(comfy, prompt["1"]["inputs"]["image"], 40, 56, seed=5)
    result = comfy.run_prompt(prompt)
    assert comfy.node_output(result, "3").shape == (1, 40, 56, 3)
    assert result["outputs"]["4"]["images"]


def test_save_pairs_lines_up_with_the_vae_crop(comfy, pack_nodes, tiny_sd15_objects, core_data):
    """VAEEncode centre-crops to a multiple of 8, so the editor's output of a 61x45 photo is 56x40: the node crops
    the original the same way instead of refusing the pair."""
    _, _, vae = tiny_sd15_objects
    image = torch.rand(1, 61, 45, 3, generator=torch.Generator().manual_seed(0))
    decoded = comfy.call_node("VAEDecode", vae=vae, samples=comfy.call_node("VAEEncode", vae=vae, pixels=image)[0])[0]
    assert decoded.shape == (1, 56, 40, 3)
    folder = os.path.join(comfy.io_dirs()["output"], "pix2pix_zero_pairs", "host_crop")
    shutil.rmtree(folder, ignore_errors=True)
    out = comfy.call_node("P2PZ_SavePairs", original=image, edited=decoded, dataset_name="host_crop", edit="e",
                          min_structure=0.0, min_change=0.0)
    assert out["result"] == (1,)
    stored = core_data.read_image(os.path.join(folder, "input", "000001.png")).permute(1, 2, 0)
    assert torch.equal(stored, (image[0, 2:58, 2:42] * 255).round().to(torch.uint8))
    with pytest.raises(ValueError, match="differ"):
        comfy.call_node("P2PZ_SavePairs", original=image, edited=torch.rand(1, 20, 20, 3), dataset_name="host_crop",
                        edit="e", min_structure=0.0, min_change=0.0)
