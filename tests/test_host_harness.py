"""The host harness itself, against a real ComfyUI with stock nodes only (no pack code involved).

torch is imported inside the tests: collecting this file without COMFYUI_PATH must not need it.
"""

import os

import pytest
from fixtures import tiny_models

pytestmark = pytest.mark.host


def _image(seed, size=64):
    import torch

    return torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(seed))


def _img2img(comfy, objects, seed):
    model, clip, vae = objects
    (latent,) = comfy.call_node("VAEEncode", vae=vae, pixels=_image(123))
    (positive,) = comfy.call_node("CLIPTextEncode", clip=clip, text="a photo of a cat")
    (negative,) = comfy.call_node("CLIPTextEncode", clip=clip, text="")
    (sampled,) = comfy.call_node("KSampler", model=model, seed=seed, steps=4, cfg=7.5, sampler_name="ddim",
                                 scheduler="ddim_uniform", positive=positive, negative=negative,
                                 latent_image=latent, denoise=1.0)
    (image,) = comfy.call_node("VAEDecode", vae=vae, samples=sampled)
    return latent["samples"], positive, sampled["samples"], image


def test_tiny_objects_round_trip_through_stock_nodes(comfy, tiny_sd15_objects):
    import torch

    model, clip, vae = tiny_sd15_objects
    assert type(model.model.model_config).__name__ == "SD15"
    latent, positive, sampled, image = _img2img(comfy, tiny_sd15_objects, seed=7)

    assert latent.shape == (1, 4, 8, 8)
    assert positive[0][0].shape == (1, 77, 32)  # CLIP width == UNet context_dim
    assert sampled.shape == (1, 4, 8, 8)
    assert image.shape == (1, 64, 64, 3)
    for t in (latent, positive[0][0], sampled, image):
        assert torch.isfinite(t).all()
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert not torch.equal(sampled, latent)  # the sampler did something


def test_tiny_objects_are_deterministic(comfy, tiny_sd15_objects):
    import torch

    _, _, sampled_a, image_a = _img2img(comfy, tiny_sd15_objects, seed=7)
    _, _, sampled_b, image_b = _img2img(comfy, tiny_sd15_objects, seed=7)
    assert torch.equal(sampled_a, sampled_b)
    assert torch.equal(image_a, image_b)
    _, _, sampled_c, _ = _img2img(comfy, tiny_sd15_objects, seed=8)
    assert not torch.equal(sampled_a, sampled_c)  # the seed matters


def test_tiny_sd15_is_reproducible_from_its_seed(comfy):
    import torch

    a = tiny_models.tiny_sd15(seed=3)
    b = tiny_models.tiny_sd15(seed=3)
    c = tiny_models.tiny_sd15(seed=4)
    sd_a = a[0].model.diffusion_model.state_dict()
    sd_b = b[0].model.diffusion_model.state_dict()
    sd_c = c[0].model.diffusion_model.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert not all(torch.equal(sd_a[k], sd_c[k]) for k in sd_a)
    te_a, te_b = a[1].cond_stage_model.state_dict(), b[1].cond_stage_model.state_dict()
    assert all(torch.equal(te_a[k], te_b[k]) for k in te_a)
    vae_a, vae_b = a[2].first_stage_model.state_dict(), b[2].first_stage_model.state_dict()
    assert all(torch.equal(vae_a[k], vae_b[k]) for k in vae_a)


def _graph(ckpt_name, seed=5, output="SaveImage"):
    save_inputs = {"images": ["6", 0]}
    if output == "SaveImage":
        save_inputs["filename_prefix"] = "p2pz_harness"
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a photo of a cat"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": seed, "steps": 4, "cfg": 7.5,
                                                   "sampler_name": "ddim", "scheduler": "ddim_uniform",
                                                   "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": output, "inputs": save_inputs},
    }


def test_checkpoint_graph_runs_through_the_executor(comfy, tiny_checkpoint_name):
    import torch

    import folder_paths

    result = comfy.run_prompt(_graph(tiny_checkpoint_name))

    image = comfy.node_output(result, "6")
    assert image.shape == (1, 64, 64, 3)
    assert torch.isfinite(image).all()
    latent = comfy.node_output(result, "5")["samples"]
    assert latent.shape == (1, 4, 8, 8) and torch.isfinite(latent).all()

    saved = result["outputs"]["7"]["images"]
    assert len(saved) == 1 and saved[0]["type"] == "output"
    out_dir = folder_paths.get_output_directory()
    assert out_dir == comfy.io_dirs()["output"]  # never the ComfyUI checkout
    assert os.path.isfile(os.path.join(out_dir, saved[0]["subfolder"], saved[0]["filename"]))
    assert any(event == "execution_success" for event, _ in result["messages"])

    model = comfy.node_output(result, "1", slot=0)
    assert type(model.model.model_config).__name__ == "SD15"


def test_run_prompt_reports_comfyui_errors(comfy, tiny_checkpoint_name):
    bad = _graph(tiny_checkpoint_name, output="PreviewImage")
    bad["5"]["inputs"]["sampler_name"] = "no_such_sampler"
    with pytest.raises(AssertionError, match="no_such_sampler"):
        comfy.run_prompt(bad)

    # passes validation, fails at run time: a 16-channel SD3 latent into a 4-channel VAE
    failing = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_checkpoint_name}},
        "2": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    with pytest.raises(AssertionError, match=r"ComfyUI failed in node 3 \(VAEDecode\)"):
        comfy.run_prompt(failing)
