"""Edit-direction nodes inside a real ComfyUI: parity with diffusers on shared CLIP weights, SD 1.x / 2.x / SDXL
encoders, save -> load -> apply through the real executor, the authors' .pt files."""
import importlib
import os
import shutil
import types

import pytest
import torch
from fixtures import tiny_models
from tolerances import network_rounding_atol, unit_roundoff

pytestmark = pytest.mark.host

# Penultimate-layer encoders (SD 2.x, SDXL) need more than 2 layers in ComfyUI.
TINY = {"intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 3}


@pytest.fixture(autouse=True)
def _pack_loaded(pack_nodes):
    """Every test here runs the pack's nodes, loaded by ComfyUI's own custom-node loader."""
    return pack_nodes


def _build(comfy, clip, source="cat", target="dog", mode="generated", count=40, seed=0, **kw):
    return comfy.call_node("P2PZ_BuildDirection", clip=clip, source=source, target=target, sentence_source=mode,
                           count=count, seed=seed, **kw)[0]


def _transformers_copy(clip, prefix="clip_l.transformer.text_model."):
    """The ComfyUI CLIP-L text encoder's weights in a transformers CLIPTextModel, and the same tokenizer files."""
    import comfy.sd1_clip
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer_dir = os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, model_max_length=77)
    sd = {k[len(prefix):]: v.float() for k, v in clip.cond_stage_model.state_dict().items() if k.startswith(prefix)}
    width = sd["embeddings.token_embedding.weight"].shape[1]
    layers = len({k.split(".")[2] for k in sd if k.startswith("encoder.layers.")})
    config = CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=sd[
        "encoder.layers.0.mlp.fc1.weight"].shape[0], num_attention_heads=4 if width == 32 else 12,
        num_hidden_layers=layers, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=width)
    model = CLIPTextModel(config).eval()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return tokenizer, model


def test_direction_node_equals_diffusers_on_the_same_clip_weights(comfy, tiny_sd15_objects):
    from diffusers.pipelines.deprecated.stable_diffusion_variants.pipeline_stable_diffusion_pix2pix_zero import (
        StableDiffusionPix2PixZeroPipeline as P,
    )

    generate_sentences = comfy.pack_import("core.sentences").generate_sentences

    _, clip, _ = tiny_sd15_objects
    tokenizer, text_encoder = _transformers_copy(clip)
    source = generate_sentences("cat", 100, seed=7)
    target = generate_sentences("dog wearing a hat", 90, seed=8)
    source[0] = "A (cat:1.5) on a mat, seen from above."  # prompt-weight syntax must stay literal text
    pipe = types.SimpleNamespace(tokenizer=tokenizer, text_encoder=text_encoder)
    expected = P.construct_direction(pipe, P.get_embeds(pipe, source), P.get_embeds(pipe, target))

    ours = _build(comfy, clip, "cat", "dog wearing a hat", mode="custom", count=1000,
                  source_sentences="\n".join(source), target_sentences="\n".join(target))
    assert ours.embedding.shape == expected.shape == (1, 77, 32)
    assert (ours.source_count, ours.target_count) == (100, 90)
    # the same weights in two implementations, batched 64 (ours) and 16 (diffusers): float32 rounding of the encoder
    # on each side (tolerances.py, rule 3, network_rounding_atol) for each mean, and the direction is a difference of
    # two means: twice that, plus the float32 rounding of the result
    sample = P.get_embeds(pipe, source[:16])
    tol = 2 * network_rounding_atol(text_encoder, 77, sample) + 2 * unit_roundoff() * float(sample.abs().max())
    assert torch.allclose(ours.embedding, expected, rtol=0, atol=tol), ((ours.embedding - expected).abs().max(), tol)
    assert ours.encoder == "SD1ClipModel" and len(ours.fingerprint) == 16


def _tiny_clip(kind):
    import comfy.sd
    import comfy.sdxl_clip
    import comfy.text_encoders.sd2_clip as sd2
    from comfy.supported_models_base import ClipTarget

    if kind == "sd2":
        target = ClipTarget(sd2.SD2Tokenizer, sd2.SD2ClipModel)
        options = {"clip_h_model_config": dict(TINY, hidden_size=48, projection_dim=48)}
    else:
        target = ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)
        options = {"clip_l_model_config": dict(TINY, hidden_size=32, projection_dim=32),
                   "clip_g_model_config": dict(TINY, hidden_size=48, projection_dim=48)}
    clip = comfy.sd.CLIP(target, model_options=dict(options, dtype=torch.float32))
    from fixtures.tiny_models import init_module_weights
    init_module_weights(clip.cond_stage_model, 11)
    return clip


@pytest.mark.parametrize("kind,width,pooled_width", [("sd2", 48, 48), ("sdxl", 80, 48)])
def test_sd2_and_sdxl_encoders(comfy, kind, width, pooled_width):
    """Width = the conditioning width of the encoder (SDXL: CLIP-L and OpenCLIP-G side by side), pooled = the
    pooled vector SDXL's conditioning needs; both equal the mean of CLIPTextEncode-style single encodings."""
    generate_sentences = comfy.pack_import("core.sentences").generate_sentences

    clip = _tiny_clip(kind)
    d = _build(comfy, clip, count=70, seed=2)  # 70: two encoder batches (64 + 6)
    assert d.embedding.shape == (1, 77, width) and d.pooled.shape == (1, pooled_width)

    def mean_single(word):
        conds, pools = [], []
        with torch.inference_mode():
            for s in generate_sentences(word, 70, seed=2):
                c, p = clip.encode_from_tokens(clip.tokenize(s), return_pooled=True)
                conds.append(c)
                pools.append(p)
        return torch.cat(conds).double().mean(0, keepdim=True), torch.cat(pools).double().mean(0, keepdim=True)

    (sc, sp), (tc, tp) = mean_single("cat"), mean_single("dog")
    # batched (64 + 6) vs one sentence at a time: the encoder's float32 rounding on both sides (rule 3), twice for a
    # difference of two means, plus the float32 rounding of the result
    tol = 2 * network_rounding_atol(clip.cond_stage_model, 77, tc) + 2 * unit_roundoff() * float(tc.abs().max())
    assert torch.allclose(d.embedding.double(), tc - sc, rtol=0, atol=tol)
    tol_pooled = 2 * network_rounding_atol(clip.cond_stage_model, 77, tp) + 2 * unit_roundoff() * float(tp.abs().max())
    assert torch.allclose(d.pooled.double(), tp - sp, rtol=0, atol=tol_pooled)

    caption = comfy.call_node("CLIPTextEncode", clip=clip, text="a cat sitting on a sofa")[0]
    edited = comfy.call_node("P2PZ_ApplyDirection", conditioning=caption, direction=d, multiplier=1.0)[0]
    # one float32 addition on each side (the node adds in float32 too): the same arithmetic
    assert torch.equal(edited[0][0], caption[0][0] + d.embedding)
    assert torch.equal(edited[0][1]["pooled_output"], caption[0][1]["pooled_output"] + d.pooled)
    assert caption[0][1]["pooled_output"] is not edited[0][1]["pooled_output"]  # the input was not modified


def test_direction_of_another_encoder_is_refused(comfy, tiny_sd15_objects):
    _, clip, _ = tiny_sd15_objects
    d = _build(comfy, _tiny_clip("sd2"), count=5)
    caption = comfy.call_node("CLIPTextEncode", clip=clip, text="a cat")[0]
    with pytest.raises(ValueError, match=r"48 wide .*SD2ClipModel.* 32 wide"):
        comfy.call_node("P2PZ_ApplyDirection", conditioning=caption, direction=d, multiplier=1.0)


@pytest.fixture
def directions_dir(comfy, tmp_path):
    """A temporary first folder for pix2pix_zero_directions (and sentences), removed from the registry after."""
    import folder_paths

    added = []
    for name in ("pix2pix_zero_directions", "pix2pix_zero_sentences"):
        path = str(tmp_path / name)
        os.makedirs(path)
        folder_paths.add_model_folder_path(name, path, is_default=True)
        added.append((name, path))
    yield tmp_path
    for name, path in added:
        folder_paths.folder_names_and_paths[name][0].remove(path)


def _graph_build_save(ckpt, name, **build):
    inputs = {"clip": ["1", 1], "source": "cat", "target": "dog", "sentence_source": "generated", "count": 30,
              "seed": 5}
    inputs.update(build)
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "P2PZ_BuildDirection", "inputs": inputs},
        "3": {"class_type": "P2PZ_SaveDirection", "inputs": {"direction": ["2", 0], "name": name}},
    }


def test_build_save_load_apply_through_the_executor(comfy, tiny_checkpoint_name, directions_dir):
    apply_direction = comfy.pack_import("core.direction").apply_direction

    first = comfy.run_prompt(_graph_build_save(tiny_checkpoint_name, "cat_to_dog"))
    built = comfy.node_output(first, "2")
    assert built.embedding.shape == (1, 77, 768)  # the checkpoint's 12-layer CLIP-L
    assert "cat_to_dog.safetensors" in first["outputs"]["3"]["text"][0]
    saved = directions_dir / "pix2pix_zero_directions" / "cat_to_dog.safetensors"
    original_bytes = saved.read_bytes()

    # Saving again under the same name keeps the first file and writes cat_to_dog_2.
    again = comfy.run_prompt(_graph_build_save(tiny_checkpoint_name, "cat_to_dog", seed=6))
    assert "cat_to_dog_2.safetensors" in again["outputs"]["3"]["text"][0]
    assert saved.read_bytes() == original_bytes

    inputs = comfy.pack_module().NODE_CLASS_MAPPINGS["P2PZ_LoadDirection"].INPUT_TYPES()["required"]
    assert {"cat_to_dog.safetensors", "cat_to_dog_2.safetensors"} <= set(inputs["direction_name"][0])

    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_checkpoint_name}},
        "2": {"class_type": "P2PZ_LoadDirection", "inputs": {"direction_name": "cat_to_dog.safetensors"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a photo of a cat"}},
        "4": {"class_type": "P2PZ_ApplyDirection", "inputs": {"conditioning": ["3", 0], "direction": ["2", 0],
                                                             "multiplier": 1.5}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        # A stock sampler takes the edited conditioning (an edit without structure guidance).
        "6": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 0, "steps": 2, "cfg": 5.0,
                                                   "sampler_name": "ddim", "scheduler": "ddim_uniform",
                                                   "positive": ["4", 0], "negative": ["3", 0],
                                                   "latent_image": ["5", 0], "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}},
    }
    result = comfy.run_prompt(graph)
    loaded = comfy.node_output(result, "2")
    assert torch.equal(loaded.embedding, built.embedding)  # bit exact through the file
    assert torch.equal(loaded.pooled, built.pooled)
    assert (loaded.source, loaded.target, loaded.source_count, loaded.fingerprint) == (
        "cat", "dog", 30, built.fingerprint)
    caption = comfy.node_output(result, "3")
    edited = comfy.node_output(result, "4")
    assert torch.equal(edited[0][0], apply_direction(caption[0][0], loaded, 1.5))
    assert torch.isfinite(comfy.node_output(result, "7")).all()


def test_save_direction_names_and_file_mode(comfy, tiny_checkpoint_name, directions_dir, tiny_sd15_objects):
    """One name check for every name a user types: '...' once wrote a hidden file that Load never listed. Saved
    files get the permissions of ComfyUI's own (0644 under umask 022), not safetensors' 0600."""
    _, clip, _ = tiny_sd15_objects
    direction = _build(comfy, clip, count=3)
    folder = directions_dir / "pix2pix_zero_directions"
    for bad in ("...", ".", "..", ".hidden", "a/b", "..\\x", "", "  ", "cat to dog"):
        with pytest.raises(ValueError, match="letters, digits, '_', '-' or '.'"):
            comfy.call_node("P2PZ_SaveDirection", direction=direction, name=bad)
    assert os.listdir(folder) == []
    old_umask = os.umask(0o022)
    try:
        comfy.call_node("P2PZ_SaveDirection", direction=direction, name=" cat_to_dog.v2 ")
    finally:
        os.umask(old_umask)
    assert os.listdir(folder) == ["cat_to_dog.v2.safetensors"]
    assert os.stat(folder / "cat_to_dog.v2.safetensors").st_mode & 0o777 == 0o644


def test_pack_creates_its_own_default_model_folders(comfy, pack_nodes, tmp_path, monkeypatch):
    """Users drop the authors' .pt files into models/pix2pix_zero_directions: it must exist once the pack loaded.
    Only the pack's default folder is created, never a path the user named in extra_model_paths.yaml."""
    import folder_paths

    common = importlib.import_module(pack_nodes["P2PZ_SaveDirection"].__module__.rsplit(".", 1)[0] + ".common")
    for name in ("pix2pix_zero_directions", "pix2pix_zero_students", "pix2pix_zero_sentences", "blip"):
        assert os.path.isdir(os.path.join(folder_paths.models_dir, name)), name
    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path / "models"))
    user_path = str(tmp_path / "user-extra" / "p2pz_test_folder")
    folder_paths.add_model_folder_path("p2pz_test_folder", user_path)
    try:
        common.register_model_folder("p2pz_test_folder", {".pt"})
        assert os.path.isdir(tmp_path / "models" / "p2pz_test_folder")
        assert not os.path.exists(user_path)
        assert folder_paths.get_folder_paths("p2pz_test_folder") == [user_path, str(tmp_path / "models" / "p2pz_test_folder")]
    finally:
        folder_paths.folder_names_and_paths.pop("p2pz_test_folder", None)


def test_corrupt_direction_file_fails_clearly(comfy, tiny_checkpoint_name, directions_dir):
    path = directions_dir / "pix2pix_zero_directions" / "broken.safetensors"
    comfy.run_prompt(_graph_build_save(tiny_checkpoint_name, "broken"))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        comfy.call_node("P2PZ_LoadDirection", direction_name="broken.safetensors")


def test_sentence_files(comfy, tiny_sd15_objects, directions_dir):
    _, clip, _ = tiny_sd15_objects
    folder = directions_dir / "pix2pix_zero_sentences"
    (folder / "tabby cat.txt").write_text("# my cats\nA tabby cat asleep.\nA tabby cat on a wall.\n", "utf-8")
    (folder / "fox.txt").write_text("A red fox in the snow.\n", "utf-8")
    d = _build(comfy, clip, source="", target="", mode="file", source_file="tabby cat.txt", target_file="fox.txt")
    assert (d.source, d.target, d.source_count, d.target_count) == ("tabby cat", "fox", 2, 1)
    same = _build(comfy, clip, mode="custom", source_sentences="A tabby cat asleep.\nA tabby cat on a wall.",
                  target_sentences="A red fox in the snow.")
    assert torch.equal(d.embedding, same.embedding)
    with pytest.raises(ValueError, match="no source_file is chosen"):
        _build(comfy, clip, mode="file")
    with pytest.raises(ValueError, match="target_sentences is empty"):
        _build(comfy, clip, mode="custom", source_sentences="a cat")


def test_generated_build_is_seeded(comfy, tiny_sd15_objects):
    _, clip, _ = tiny_sd15_objects
    a, b, c = (_build(comfy, clip, count=20, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.embedding, b.embedding)
    assert not torch.equal(a.embedding, c.embedding)


def test_authors_pt_files_import_and_apply(comfy, tiny_checkpoint_name, directions_dir):
    from official_data import official_path

    embeddings = official_path("embeddings_sd_1.4")
    folder = directions_dir / "pix2pix_zero_directions"
    for word in ("cat", "dog", "horse", "zebra"):
        shutil.copy(os.path.join(embeddings, f"{word}.pt"), folder / f"{word}.pt")
    spec = comfy.pack_module().NODE_CLASS_MAPPINGS["P2PZ_ImportWordEmbeddings"].INPUT_TYPES()["required"]
    assert spec["source_file"][0] == ["cat.pt", "dog.pt", "horse.pt", "zebra.pt"]

    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_checkpoint_name}},
        "2": {"class_type": "P2PZ_ImportWordEmbeddings", "inputs": {"source_file": "cat.pt", "target_file": "dog.pt"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a photo of a cat"}},
        "4": {"class_type": "P2PZ_ApplyDirection", "inputs": {"conditioning": ["3", 0], "direction": ["2", 0],
                                                             "multiplier": 1.0}},
        "5": {"class_type": "P2PZ_SaveDirection", "inputs": {"direction": ["2", 0], "name": "authors_cat_to_dog"}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 0, "steps": 1, "cfg": 5.0,
                                                   "sampler_name": "ddim", "scheduler": "ddim_uniform",
                                                   "positive": ["4", 0], "negative": ["3", 0],
                                                   "latent_image": ["6", 0], "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }
    result = comfy.run_prompt(graph)
    d = comfy.node_output(result, "2")
    cat, dog = (torch.load(os.path.join(embeddings, f"{w}.pt"), map_location="cpu", weights_only=True) for w in ("cat", "dog"))
    assert d.embedding.shape == (1, 77, 768) and (d.source, d.target) == ("cat", "dog")
    # float64 difference rounded once vs the float32 difference (also one rounding of the exact difference): equal
    assert torch.equal(d.embedding, dog - cat)
    caption, edited = comfy.node_output(result, "3"), comfy.node_output(result, "4")
    # (caption + d) - caption: two float32 roundings of values up to |caption| + |d| (rule 3)
    tol = 2 * unit_roundoff() * float(caption[0][0].abs().max() + (dog - cat).abs().max())
    assert torch.allclose(edited[0][0] - caption[0][0], dog - cat, rtol=0, atol=tol)

    fp16 = comfy.call_node("P2PZ_ImportWordEmbeddings", source_file="horse.pt", target_file="zebra.pt")[0]
    assert fp16.embedding.dtype == torch.float32 and fp16.embedding.shape == (1, 77, 768)

    tiny_caption = comfy.call_node("CLIPTextEncode", clip=tiny_models.tiny_sd15(0)[1], text="a cat")[0]
    with pytest.raises(ValueError, match=r"768 wide .* 32 wide"):
        comfy.call_node("P2PZ_ApplyDirection", conditioning=tiny_caption, direction=d, multiplier=1.0)
