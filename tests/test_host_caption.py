"""P2PZ_BLIPCaption and P2PZ_EncodeCaptions inside a real ComfyUI (in-process, CPU), with a tiny random BLIP saved
in Hugging Face format in a temporary models/blip/<name>/ folder."""
import importlib
import os

import pytest
import torch
from official_data import copy_photo
from tiny_blip import save_tiny_blip

pytestmark = pytest.mark.host

CAPTION = "P2PZ_BLIPCaption"
ENCODE = "P2PZ_EncodeCaptions"
BLIP_NAME = "tiny-blip (test)"  # a space and brackets: names must reach the combo unmangled


@pytest.fixture(scope="module")
def caption_mod(pack_nodes):
    return importlib.import_module(pack_nodes[CAPTION].__module__)


def _unregister(path):
    import folder_paths
    paths = folder_paths.folder_names_and_paths["blip"][0]
    while path in paths:
        paths.remove(path)


@pytest.fixture(scope="module")
def blip_models(caption_mod, tmp_path_factory):
    """<tmp>/models/blip registered as a "blip" folder, holding the tiny BLIP in <BLIP_NAME>/."""
    base = str(tmp_path_factory.mktemp("models") / "blip")
    save_tiny_blip(os.path.join(base, BLIP_NAME))
    path = caption_mod.register_blip_folder(base)
    yield path
    _unregister(path)


def test_nodes_registered_with_tooltips(pack_nodes, comfy):
    import nodes

    for name in (CAPTION, ENCODE):
        cls = pack_nodes[name]
        assert nodes.NODE_CLASS_MAPPINGS[name] is cls and nodes.NODE_DISPLAY_NAME_MAPPINGS[name]
        assert cls.CATEGORY == "pix2pix-zero" and cls.DESCRIPTION
        for input_name, spec in cls.INPUT_TYPES()["required"].items():
            assert spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
    spec = pack_nodes[CAPTION].INPUT_TYPES()["required"]
    assert (spec["num_beams"][1]["default"], spec["max_length"][1]["default"], spec["min_length"][1]["default"]) == (3, 30, 10)
    assert spec["prefix"][1]["default"] == "a picture of" and spec["prefix_mode"][0] == ["strip", "keep"]
    assert pack_nodes[CAPTION].OUTPUT_IS_LIST == (True,) and pack_nodes[ENCODE].INPUT_IS_LIST is True


def test_default_blip_validates_with_other_blips_installed(comfy, caption_mod, blip_models):
    """The example workflow names blip-image-captioning-base; with only other BLIP folders installed ComfyUI
    refused it at Run ("Value not in list")."""
    import folder_paths

    assert not any(os.path.isdir(os.path.join(p, caption_mod.DEFAULT_BLIP_NAME))
                   for p in folder_paths.get_folder_paths("blip")), "the test needs the default BLIP absent"
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": CAPTION, "inputs": {"image": ["1", 0], "blip_model": caption_mod.DEFAULT_BLIP_NAME,
                                                "prefix": "a picture of", "prefix_mode": "strip", "num_beams": 3,
                                                "max_length": 30, "min_length": 10}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }
    ok, error, outputs, node_errors = comfy.validate(prompt)
    assert ok, (error, node_errors)


def test_blip_folder_registry_is_extended_never_overwritten(caption_mod, blip_models, tmp_path):
    import folder_paths

    paths = folder_paths.get_folder_paths("blip")
    assert paths[0] == os.path.join(folder_paths.models_dir, "blip")  # the pack's default, registered at import
    assert blip_models in paths
    assert caption_mod.register_blip_folder(blip_models) == blip_models  # registering again: no duplicate
    assert folder_paths.get_folder_paths("blip") == paths

    other = tmp_path / "more-blip"
    for name in ("Zeta BLIP", "another.v2", ".downloading"):
        (other / name).mkdir(parents=True)
    (other / "not-a-folder.safetensors").write_text("x")
    caption_mod.register_blip_folder(str(other))
    try:
        assert folder_paths.get_folder_paths("blip") == paths + [str(other)]
        combo = pack_nodes_combo(caption_mod)
        # sub-folders of every registered path, sorted, names as on disk; hidden folders and files left out
        assert combo == sorted(combo) and {BLIP_NAME, "Zeta BLIP", "another.v2"} <= set(combo)
        assert ".downloading" not in combo and "not-a-folder.safetensors" not in combo
        # the default model stays on offer (downloaded on first use) next to installed ones, as its tooltip says,
        # so the example workflow that names it validates
        assert caption_mod.DEFAULT_BLIP_NAME == "blip-image-captioning-base" and caption_mod.DEFAULT_BLIP_NAME in combo
        tooltip = caption_mod.BLIPCaption.INPUT_TYPES()["required"]["blip_model"][1]["tooltip"]
        assert "always listed" in tooltip and "downloaded" in tooltip
    finally:
        _unregister(str(other))


def pack_nodes_combo(caption_mod):
    return caption_mod.BLIPCaption.INPUT_TYPES()["required"]["blip_model"][0]


def test_default_model_offered_when_none_installed(caption_mod, monkeypatch, tmp_path):
    import folder_paths

    empty = tmp_path / "blip"
    empty.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "blip", ([str(empty)], set()))
    assert pack_nodes_combo(caption_mod) == ["blip-image-captioning-base"]


def test_missing_default_model_offline_names_the_folder(comfy, caption_mod, monkeypatch, tmp_path):
    import folder_paths

    models_blip = tmp_path / "models" / "blip"
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "blip", ([str(models_blip)], set()))
    monkeypatch.setattr(caption_mod, "default_blip_dir", lambda: str(models_blip))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    image = torch.rand(1, 32, 32, 3)
    with pytest.raises(FileNotFoundError) as info:
        comfy.call_node(CAPTION, image=image, blip_model="blip-image-captioning-base", prefix="a picture of",
                        prefix_mode="strip", num_beams=3, max_length=30, min_length=10)
    msg = str(info.value)
    assert str(models_blip / "blip-image-captioning-base") in msg
    assert "config.json" in msg and "model.safetensors" in msg and "Salesforce/blip-image-captioning-base" in msg
    assert not models_blip.exists()  # nothing half-written
    with pytest.raises(FileNotFoundError, match="no BLIP model folder named 'nope'"):
        comfy.call_node(CAPTION, image=image, blip_model="nope", prefix="", prefix_mode="strip", num_beams=1,
                        max_length=30, min_length=0)


def _graph(ckpt_name, blip_name, images=("cat_1.png", "dog_1.png")):
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "2": {"class_type": "LoadImage", "inputs": {"image": images[0]}},
        "3": {"class_type": "LoadImage", "inputs": {"image": images[1]}},
        "4": {"class_type": "ImageScale", "inputs": {"image": ["2", 0], "upscale_method": "area", "width": 32,
                                                     "height": 32, "crop": "center"}},
        "5": {"class_type": "ImageScale", "inputs": {"image": ["3", 0], "upscale_method": "area", "width": 32,
                                                     "height": 32, "crop": "center"}},
        "6": {"class_type": "ImageBatch", "inputs": {"image1": ["4", 0], "image2": ["5", 0]}},
        "7": {"class_type": CAPTION, "inputs": {"image": ["6", 0], "blip_model": blip_name, "prefix": "a picture of",
                                                "prefix_mode": "strip", "num_beams": 3, "max_length": 30,
                                                "min_length": 10}},
        "8": {"class_type": ENCODE, "inputs": {"clip": ["1", 1], "captions": ["7", 0]}},
        "9": {"class_type": "PreviewAny", "inputs": {"source": ["7", 0]}},
        "10": {"class_type": "VAEEncode", "inputs": {"pixels": ["6", 0], "vae": ["1", 2]}},
        "11": {"class_type": "P2PZ_InvertLatent", "inputs": {
            "model": ["1", 0], "conditioning": ["8", 0], "latent": ["10", 0], "steps": 2, "schedule": "diffusers",
            "lambda_ac": 20.0, "lambda_kl": 20.0, "reg_steps": 1, "ac_rolls": 1, "seed": 0}},
        "12": {"class_type": "SaveLatent", "inputs": {"samples": ["11", 0], "filename_prefix": "p2pz_caption_test"}},
    }
    return graph


def test_caption_batch_through_the_real_executor(comfy, caption_mod, blip_models, tiny_checkpoint_name):
    """LoadImage x2 -> ImageBatch -> P2PZ_BLIPCaption -> P2PZ_EncodeCaptions -> P2PZ_InvertLatent (batch of 2),
    with the captions also shown by Preview Any."""
    import comfy.model_management as mm

    for name in ("cat_1.png", "dog_1.png"):
        copy_photo(name, comfy.io_dirs()["input"])
    result = comfy.run_prompt(_graph(tiny_checkpoint_name, BLIP_NAME))

    captions = result["node_outputs"]["7"][0]  # OUTPUT_IS_LIST: the slot holds one caption per image
    assert isinstance(captions, list) and len(captions) == 2 and all(isinstance(c, str) and c for c in captions)
    assert result["outputs"]["7"]["text"] == captions  # the node's ui text (history / API)
    assert result["outputs"]["9"]["text"] == captions  # Preview Any ran once per caption

    # the node captions exactly what core does, image by image, with the model loaded through ComfyUI
    folder = os.path.join(blip_models, BLIP_NAME)
    patcher, captioner = caption_mod.load_blip_patcher(folder)
    assert any(lm.model is patcher for lm in mm.current_loaded_models)  # loaded by model_management
    assert captioner.dtype == torch.float32  # CPU: fp32
    caption_images = comfy.pack_import("core.caption").caption_images
    images = comfy.node_output(result, "6")
    assert images.shape == (2, 32, 32, 3)
    with torch.inference_mode():
        assert [caption_images(captioner, images[i:i + 1])[0] for i in range(2)] == captions

    # one conditioning, batch 2, row i = CLIPTextEncode(caption i)
    cond = comfy.node_output(result, "8")
    assert len(cond) == 1
    tensor, extra = cond[0]
    assert tensor.shape[0] == 2 and extra["pooled_output"].shape[0] == 2
    clip = comfy.node_output(result, "1", 1)
    for i, text in enumerate(captions):
        ref = comfy.call_node("CLIPTextEncode", clip=clip, text=text)[0]
        assert torch.equal(tensor[i:i + 1], ref[0][0])
        assert torch.equal(extra["pooled_output"][i:i + 1], ref[0][1]["pooled_output"])

    inverted = comfy.node_output(result, "11")
    assert inverted["samples"].shape == (2, 4, 4, 4) and torch.isfinite(inverted["samples"]).all()


def test_loaded_once_and_reused(comfy, caption_mod, blip_models, monkeypatch):
    folder = os.path.join(blip_models, BLIP_NAME)
    caption_mod._cache.clear()
    loads = []
    real_load = caption_mod.load_blip
    monkeypatch.setattr(caption_mod, "load_blip", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    image = torch.rand(3, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    kwargs = {"image": image, "blip_model": BLIP_NAME, "prefix": "a picture of", "num_beams": 3, "max_length": 30,
              "min_length": 10}
    strip = comfy.call_node(CAPTION, prefix_mode="strip", **kwargs)
    keep = comfy.call_node(CAPTION, prefix_mode="keep", **kwargs)
    assert len(loads) == 1  # the second run reused the loaded model
    assert strip["result"][0] == strip["ui"]["text"] and len(strip["ui"]["text"]) == 3
    assert keep["result"][0] == ["a picture of " + c for c in strip["result"][0]]
    assert caption_mod.load_blip_patcher(folder) is caption_mod.load_blip_patcher(folder)


def test_encode_captions_batch_of_one_equals_clip_text_encode(comfy, tiny_sd15_objects):
    _, clip, _ = tiny_sd15_objects
    text = "a cat sitting on a sofa"
    ours = comfy.call_node(ENCODE, clip=[clip], captions=[text])[0]
    ref = comfy.call_node("CLIPTextEncode", clip=clip, text=text)[0]
    assert len(ours) == len(ref) == 1
    assert torch.equal(ours[0][0], ref[0][0])
    assert ours[0][1].keys() == ref[0][1].keys()
    assert torch.equal(ours[0][1]["pooled_output"], ref[0][1]["pooled_output"])


def test_encode_captions_order_and_length_mismatch(comfy, tiny_sd15_objects):
    _, clip, _ = tiny_sd15_objects
    texts = ["a cat", "a dog on the grass", "a horse"]
    ours = comfy.call_node(ENCODE, clip=[clip], captions=texts)[0]
    assert ours[0][0].shape[0] == 3
    for i, text in enumerate(texts):
        assert torch.equal(ours[0][0][i:i + 1], comfy.call_node("CLIPTextEncode", clip=clip, text=text)[0][0][0])
    long_text = " ".join(["cat"] * 100)  # over 75 tokens: two 77-token chunks
    with pytest.raises(ValueError, match="tokens"):
        comfy.call_node(ENCODE, clip=[clip], captions=["a cat", long_text])
    with pytest.raises(ValueError, match="no captions"):
        comfy.call_node(ENCODE, clip=[clip], captions=[])


def test_bad_image_is_refused_before_loading(comfy, blip_models):
    with pytest.raises(ValueError, match="IMAGE"):
        comfy.call_node(CAPTION, image=torch.rand(1, 4, 8, 8), blip_model=BLIP_NAME, prefix="a picture of",
                        prefix_mode="strip", num_beams=3, max_length=30, min_length=10)
