"""edit_image.py downloads only what ComfyUI's frontend would offer: a workflow naming another host, another file
type or a name outside the model folder is refused with the URL or name and why, before any network access."""
import argparse
import os
import socket
import sys
import urllib.request

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import edit_image  # noqa: E402  (standard library only at import)
from scripts import model_fetch  # noqa: E402

HF = "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"


@pytest.fixture
def no_network(monkeypatch):
    """Any download, connection or reachability probe fails the test."""
    def forbidden(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    for target, name in ((model_fetch, "download"), (model_fetch, "unreachable_reason"),
                         (urllib.request, "urlopen"), (socket, "create_connection"),
                         (socket.socket, "connect")):
        monkeypatch.setattr(target, name, forbidden)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", edit_image.CHECKPOINT_URL_ENV):
        monkeypatch.delenv(var, raising=False)


def _workflow(name, url):
    return {"nodes": [{"type": "CheckpointLoaderSimple", "widgets_values": [name],
                       "properties": {"models": [{"name": name, "url": url, "directory": "checkpoints"}]}}]}


def _layout(tmp_path):
    folder = tmp_path / "models" / "checkpoints"
    folder.mkdir(parents=True)
    return {"folders": {"checkpoints": [str(folder)], "blip": []}, "extensions": {"checkpoints": [".safetensors"]},
            "models_dir": str(tmp_path / "models")}


def _missing(tmp_path, name, url):
    args = argparse.Namespace(checkpoint=name, blip=None)
    edit_image.fetch_missing_models(edit_image.find_missing_models(args, _workflow(name, url), _layout(tmp_path)))


@pytest.mark.parametrize("name, url, why", [
    ("model.safetensors", "https://example.com/model.safetensors",
     "downloads are only made from https://huggingface.co/"),
    ("model.safetensors", "http://huggingface.co/x/model.safetensors", "downloads are only made from"),  # not https
    ("model.safetensors", "https://huggingface.co.evil.example/model.safetensors", "downloads are only made from"),
    ("model.exe", HF + "model.exe", "only .safetensors and .sft files are downloaded"),
    ("model.ckpt", HF + "model.ckpt", "only .safetensors and .sft files are downloaded"),
    ("sub/model.safetensors", HF + "model.safetensors", "a plain file in the model folder"),
])
def test_workflow_downloads_outside_the_frontends_rules_are_refused(tmp_path, no_network, name, url, why):
    with pytest.raises(edit_image.CommandError) as refused:
        _missing(tmp_path, name, url)
    message = str(refused.value)
    assert why in message and url in message and repr(name) in message, message
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("name", ["../model.safetensors", "../../etc/model.safetensors", "/tmp/model.safetensors",
                                  "sub/../../model.safetensors", "C:model.safetensors", "..\\model.safetensors",
                                  "./model.safetensors", ""])
def test_names_outside_the_model_folder_are_refused(tmp_path, no_network, name):
    with pytest.raises(edit_image.CommandError, match="is refused: "):
        edit_image.check_model_name(name, "--checkpoint")
    with pytest.raises(edit_image.CommandError, match="is refused: "):
        _missing(tmp_path, name, HF + "model.safetensors")


def test_the_command_line_refuses_such_names_before_anything_else(tmp_path, no_network):
    base = dict(steps=50, sentences=1000, size=512, seed=0, source="cat", target="dog", output=None, blip=None,
                image=os.path.join(REPO, "assets", "cat.jpg"), workflow=edit_image.DEFAULT_WORKFLOW, overwrite=False,
                checkpoint=edit_image.DEFAULT_CHECKPOINT)
    with pytest.raises(edit_image.CommandError, match=r"--checkpoint '\.\./x\.safetensors' is refused"):
        edit_image.check_arguments(argparse.Namespace(**dict(base, checkpoint="../x.safetensors")))
    with pytest.raises(edit_image.CommandError, match=r"--blip '/abs/blip' is refused: it is an absolute path"):
        edit_image.check_arguments(argparse.Namespace(**dict(base, blip="/abs/blip")))
    # a sub-folder name, as ComfyUI lists checkpoints in sub-folders, stays allowed
    edit_image.check_arguments(argparse.Namespace(**dict(base, checkpoint="sd15/v1-5.safetensors")))


@pytest.mark.parametrize("url", [HF + "v1-5.safetensors", "https://civitai.com/api/download/models/128078",
                                 "http://localhost:8188/v1-5.safetensors"])
def test_allowed_sources_reach_the_download(tmp_path, monkeypatch, url):
    """The frontend's sources pass the checks and reach the (here recorded) download."""
    calls = []
    monkeypatch.setattr(model_fetch, "offline_reason", lambda: None)
    monkeypatch.setattr(model_fetch, "unreachable_reason", lambda u, *a: None)
    monkeypatch.setattr(model_fetch, "download", lambda u, dest, *a, **k: calls.append((u, dest)))
    monkeypatch.delenv(edit_image.CHECKPOINT_URL_ENV, raising=False)
    _missing(tmp_path, "v1-5.safetensors", url)
    assert calls == [(url, str(tmp_path / "models" / "checkpoints" / "v1-5.safetensors"))]
