"""Issue 29, "a newcomer's first hour", inside a real ComfyUI (in-process, CPU, tiny models): every image size from
the pack's minimum to 64 px inverts and edits to finite values; edits that would change nothing and mismatched
steps stop with errors naming the widgets; the pack's exception types read cleanly in ComfyUI's error report."""
import os

import pytest
import torch

pytestmark = pytest.mark.host

STEPS = 2  # the cheapest run that still takes a regularized inversion step and a guided step each way



def _sizes(comfy):
    minimum = 8 * comfy.pack_import("core.inversion").MIN_LATENT
    return list(range(minimum, 65, 8))


def _sd15_with_two_channels_per_group(seed=0):
    """The tiny SD 1.5 UNet with 64 base channels instead of 32. SD 1.x/2.x/XL have 320: their GroupNorm(32) groups
    hold 10 channels, so a 2x2 latent's 1x1 lower levels still normalize over 10 values. The 32-channel test model
    has one channel per group, and torch refuses to normalize a single value (a 2x2 latent, downsampled to 1x1,
    reaches its second level with 32 channels): a limit of the test model, not of SD's."""
    import comfy.model_management as mm
    import comfy.supported_models as sm
    from comfy.model_patcher import ModelPatcher

    from fixtures import tiny_models

    config = sm.SD15(dict(tiny_models.TINY_UNET_CONFIG, model_channels=64))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    tiny_models.init_module_weights(model.diffusion_model, seed)
    model.eval()
    return ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def test_every_size_from_the_minimum_to_64_px_inverts_and_edits(comfy, tiny_sd15_objects, pack_nodes):
    """An image of every size from the pack's minimum (16 px) to 64 px, square and not, through VAEEncode,
    Invert Latent (the default regularization) and Guided Edit with a direction: every output is finite and the
    edit differs from the reconstruction. 16, 24 and 32 px failed with "the inverted latent contains NaN" before."""
    direction_module = comfy.pack_import("core.direction")
    _, clip, vae = tiny_sd15_objects
    model = _sd15_with_two_channels_per_group()
    caption = comfy.call_node("CLIPTextEncode", clip=clip, text="a cat on a sofa")[0]
    direction = direction_module.EditDirection(
        embedding=torch.randn(1, 77, caption[0][0].shape[-1], generator=torch.Generator().manual_seed(1)),
        source="cat", target="dog")
    sizes = _sizes(comfy)
    assert sizes[0] == 16 and sizes[-1] == 64
    shapes = [(s, s) for s in sizes] + [(sizes[0], 64), (64, sizes[0] + 8)]
    for height, width in shapes:
        g = torch.Generator().manual_seed(height * 100 + width)
        image = torch.rand(1, height, width, 3, generator=g)
        latent = comfy.call_node("VAEEncode", pixels=image, vae=vae)[0]
        assert latent["samples"].shape[2:] == (height // 8, width // 8)
        inverted = comfy.call_node("P2PZ_InvertLatent", model=model, conditioning=caption, latent=latent,
                                   steps=STEPS, schedule="diffusers", lambda_ac=20.0, lambda_kl=20.0, reg_steps=5,
                                   ac_rolls=5, seed=0)[0]
        assert torch.isfinite(inverted["samples"]).all(), (height, width)
        edit, reconstruction = comfy.call_node(
            "P2PZ_GuidedEdit", model=model, positive=caption, inverted_latent=inverted, steps=STEPS, cfg=5.0,
            lambda_xa=0.1, guidance="references", direction=direction)
        assert torch.isfinite(edit["samples"]).all(), (height, width)
        assert torch.isfinite(reconstruction["samples"]).all(), (height, width)
        assert not torch.equal(edit["samples"], reconstruction["samples"])
        decoded = comfy.call_node("VAEDecode", samples=edit, vae=vae)[0]
        assert decoded.shape == (1, height, width, 3) and torch.isfinite(decoded).all()


def test_below_the_minimum_is_refused_with_the_size(comfy, tiny_sd15_objects, pack_nodes):
    model, clip, _ = tiny_sd15_objects
    caption = comfy.call_node("CLIPTextEncode", clip=clip, text="a cat")[0]
    with pytest.raises(ValueError, match=r"is 1x4: it must be at least 2x2 \(16x16 pixels\)"):
        comfy.call_node("P2PZ_InvertLatent", model=model, conditioning=caption,
                        latent={"samples": torch.zeros(1, 4, 1, 4)}, steps=STEPS, schedule="diffusers",
                        lambda_ac=20.0, lambda_kl=20.0, reg_steps=5, ac_rolls=5, seed=0)


def test_nan_messages_name_the_possible_causes(comfy, tiny_sd15_objects, pack_nodes):
    model, clip, _ = tiny_sd15_objects
    caption = comfy.call_node("CLIPTextEncode", clip=clip, text="a cat")[0]
    bad = torch.zeros(1, 4, 4, 4)
    bad[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="latent to invert contains NaN.*--fp32-vae"):
        comfy.call_node("P2PZ_InvertLatent", model=model, conditioning=caption, latent={"samples": bad},
                        steps=STEPS, schedule="diffusers", lambda_ac=20.0, lambda_kl=20.0, reg_steps=5, ac_rolls=5,
                        seed=0)
    with pytest.raises(ValueError, match="inverted latent contains NaN.*--force-fp32.*reg_steps 0.*--fp32-vae"):
        comfy.call_node("P2PZ_GuidedEdit", model=model, positive=caption, inverted_latent={"samples": bad},
                        steps=STEPS, cfg=5.0, lambda_xa=0.1, guidance="references", edited_positive=caption)


def test_edits_that_change_nothing_are_refused_naming_the_inputs(comfy, tiny_sd15_objects, pack_nodes):
    """cat -> cat, an all-zero direction or a multiplier of 0: refused at once (Build Edit Direction before any
    sentence is encoded), with the widget to change; an empty word names its widget."""
    direction_module = comfy.pack_import("core.direction")
    model, clip, _ = tiny_sd15_objects
    build = dict(clip=clip, sentence_source="generated", count=4, seed=0)
    with pytest.raises(ValueError, match=r"source and target are the same word \('cat'\).*all zeros"):
        comfy.call_node("P2PZ_BuildDirection", source="cat", target=" cat ", **build)
    with pytest.raises(ValueError, match="'Cat -> cat' is all zeros"):  # CLIP lowercases: identical encodings
        comfy.call_node("P2PZ_BuildDirection", source="Cat", target="cat", **build)
    with pytest.raises(ValueError, match="Build Edit Direction's target is empty: .* in its target box"):
        comfy.call_node("P2PZ_BuildDirection", source="cat", target="  ", **build)
    with pytest.raises(ValueError, match="Build Edit Direction's source is empty"):
        comfy.call_node("P2PZ_BuildDirection", source="", target="dog", **build)
    with pytest.raises(ValueError, match="source_sentences and target_sentences hold the same sentences"):
        comfy.call_node("P2PZ_BuildDirection", source="cat", target="dog", **dict(build, sentence_source="custom"),
                        source_sentences="a cat\na black cat", target_sentences="a cat\na black cat")
    direction = comfy.call_node("P2PZ_BuildDirection", source="cat", target="dog", **build)[0]

    caption = comfy.call_node("CLIPTextEncode", clip=clip, text="a cat")[0]
    zero = direction_module.EditDirection(embedding=torch.zeros_like(direction.embedding), source="cat",
                                          target="cat")
    with pytest.raises(ValueError, match="'cat -> cat' is all zeros"):
        comfy.call_node("P2PZ_ApplyDirection", conditioning=caption, direction=zero, multiplier=1.0)
    with pytest.raises(ValueError, match="multiplier is 0"):
        comfy.call_node("P2PZ_ApplyDirection", conditioning=caption, direction=direction, multiplier=0.0)
    inverted = {"samples": torch.zeros(1, 4, 4, 4)}  # never reached: the checks come first
    edit = dict(model=model, positive=caption, inverted_latent=inverted, steps=STEPS, cfg=5.0, lambda_xa=0.1,
                guidance="references")
    with pytest.raises(ValueError, match="'cat -> cat' is all zeros"):
        comfy.call_node("P2PZ_GuidedEdit", direction=zero, **edit)
    with pytest.raises(ValueError, match="direction_multiplier is 0: .*set direction_multiplier to 1"):
        comfy.call_node("P2PZ_GuidedEdit", direction=direction, direction_multiplier=0.0, **edit)


def test_steps_that_differ_from_the_inversion_stop_with_the_value_to_set(comfy, tiny_sd15_objects, pack_nodes):
    model, clip, _ = tiny_sd15_objects
    caption = comfy.call_node("CLIPTextEncode", clip=clip, text="a cat")[0]
    latent = {"samples": torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))}
    inverted = comfy.call_node("P2PZ_InvertLatent", model=model, conditioning=caption, latent=latent, steps=3,
                               schedule="diffusers", lambda_ac=20.0, lambda_kl=20.0, reg_steps=1, ac_rolls=1,
                               seed=0)[0]
    with pytest.raises(ValueError, match="Guided Edit's steps is 50 but the inverted_latent was made with 3 DDIM "
                                         "steps.*Set Guided Edit's steps to 3"):
        comfy.call_node("P2PZ_GuidedEdit", model=model, positive=caption, inverted_latent=inverted, steps=50,
                        cfg=5.0, lambda_xa=0.1, guidance="references", edited_positive=caption)
    tooltip = pack_nodes["P2PZ_GuidedEdit"].INPUT_TYPES()["required"]["steps"][1]["tooltip"]
    assert "ignored" not in tooltip and "error" in tooltip


def test_error_report_names_the_pack_s_exception_types_cleanly(comfy, pack_nodes, tmp_path):
    """ComfyUI's executor reports a failing node's exception type as module + qualname: the pack's own types read
    pix2pix_zero.<Name>, not the path ComfyUI imported the pack from."""
    import execution
    import folder_paths

    student = comfy.pack_import("core.student")
    caption = comfy.pack_import("core.caption")
    for cls in (student.StudentFileError, caption.BlipModelMissingError):
        assert execution.full_type_name(cls) == f"pix2pix_zero.{cls.__name__}"

    folder_name = comfy.pack_import("nodes.student").STUDENTS_FOLDER
    folder = str(tmp_path / folder_name)
    os.makedirs(folder)
    with open(os.path.join(folder, "broken.safetensors"), "wb") as f:
        f.write(b"not a safetensors file at all")
    folder_paths.add_model_folder_path(folder_name, folder)
    folder_paths.filename_list_cache.pop(folder_name, None)
    try:
        prompt = {"1": {"class_type": "P2PZ_LoadStudent", "inputs": {"student_name": "broken.safetensors",
                                                                      "dtype": "auto"}},
                  "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                               "color": 0}},
                  "3": {"class_type": "P2PZ_ApplyStudent", "inputs": {"student": ["1", 0], "image": ["2", 0]}},
                  "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}
        with pytest.raises(comfy.PromptError) as failed:
            comfy.run_prompt(prompt)
        assert failed.value.exception_type == "pix2pix_zero.StudentFileError", failed.value
    finally:
        folder_paths.folder_names_and_paths[folder_name][0].remove(folder)
        folder_paths.filename_list_cache.pop(folder_name, None)


def test_large_images_are_warned_about_with_the_estimate(comfy, tiny_sd15_objects, pack_nodes, caplog):
    """A 2048 px image on the CPU: Invert Latent and Guided Edit log a warning with the estimate and how to go
    smaller, before any work (here the latent is then refused for its channels, so nothing heavy runs); 64 px: none."""
    import logging

    model, clip, _ = tiny_sd15_objects
    caption = comfy.call_node("CLIPTextEncode", clip=clip, text="a cat")[0]
    big = {"samples": torch.zeros(1, 16, 256, 256)}  # 2048 px; 16 channels: refused right after the warning
    with caplog.at_level(logging.WARNING):
        with pytest.raises(ValueError, match="16 channels"):
            comfy.call_node("P2PZ_InvertLatent", model=model, conditioning=caption, latent=big, steps=STEPS,
                            schedule="diffusers", lambda_ac=20.0, lambda_kl=20.0, reg_steps=5, ac_rolls=5, seed=0)
        with pytest.raises(ValueError, match="16 channels"):
            comfy.call_node("P2PZ_GuidedEdit", model=model, positive=caption, inverted_latent=big, steps=STEPS,
                            cfg=5.0, lambda_xa=0.1, guidance="references", edited_positive=caption)
    warnings = [r.getMessage() for r in caplog.records if "may not finish" in r.getMessage()]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("pix2pix-zero Invert Latent: a 2048x2048 image may not finish")
    assert warnings[1].startswith("pix2pix-zero Guided Edit:")
    assert "256 times the work" in warnings[0] and "ImageScale to 512" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        comfy.pack_import("nodes.common").warn_if_large(torch.zeros(1, 4, 8, 8), model, "Invert Latent")
    assert not [r for r in caplog.records if "may not finish" in r.getMessage()]
