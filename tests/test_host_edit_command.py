"""The headless edit command (edit_image.py), run as a user runs it: a subprocess with ComfyUI's python, tiny models
in a base directory, a photo in, an image out; and its clear errors for missing models and an existing output."""
import os
import subprocess
import sys

import pytest

from official_data import copy_photo

pytestmark = pytest.mark.host

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup(comfy, tiny_checkpoint_name, tmp_path_factory):
    import folder_paths

    from tiny_blip import save_tiny_blip

    base = tmp_path_factory.mktemp("edit-base")
    (base / "models" / "checkpoints").mkdir(parents=True)
    os.symlink(folder_paths.get_full_path("checkpoints", tiny_checkpoint_name),
               base / "models" / "checkpoints" / "tiny.safetensors")
    save_tiny_blip(str(base / "models" / "blip" / "tiny-blip"))
    work = tmp_path_factory.mktemp("edit-work")
    copy_photo("cat_1.png", str(work))
    return base, work


def _run(base, work, *extra, output="dog.png"):
    cmd = [sys.executable, os.path.join(REPO, "edit_image.py"), str(work / "cat_1.png"), "--source", "cat",
           "--target", "dog", "--checkpoint", "tiny.safetensors", "--output", output, "--base-directory", str(base),
           "--cpu", "--steps", "2", "--sentences", "4", "--size", "64", *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", COMFYUI_PATH=os.environ["COMFYUI_PATH"])
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)


def test_edit_command_writes_the_edited_image(setup):
    base, work = setup
    done = _run(base, work, "--blip", "tiny-blip")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from PIL import Image
    image = Image.open(work / "dog.png")
    assert image.size == (64, 64)
    for expected in ("P2PZ_InvertLatent", "P2PZ_GuidedEdit", "caption:", "2/2", "wrote"):
        assert expected in done.stdout, expected
    before = (work / "dog.png").read_bytes()
    again = _run(base, work, "--blip", "tiny-blip")  # never replaces the user's file
    assert again.returncode == 2 and "exists" in again.stderr
    assert (work / "dog.png").read_bytes() == before


def test_edit_command_names_missing_models(setup):
    base, work = setup
    done = _run(base, work, "--blip", "tiny-blip", "--checkpoint", "v1-5-pruned-emaonly-fp16.safetensors",
                output="x.png")
    assert done.returncode == 2
    assert "v1-5-pruned-emaonly-fp16.safetensors" in done.stderr and str(base / "models" / "checkpoints") in done.stderr
    done = _run(base, work, output="y.png")  # the default BLIP, offline
    assert done.returncode == 2
    assert str(base / "models" / "blip" / "blip-image-captioning-base") in done.stderr
    assert "Salesforce/blip-image-captioning-base" in done.stderr
    assert not (work / "x.png").exists() and not (work / "y.png").exists()
