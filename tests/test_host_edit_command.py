"""The headless edit command (edit_image.py), run as a user runs it: a subprocess with ComfyUI's python, tiny models
in a base directory under the example's file names, the bundled photo in, an image out; its argument and model
checks, all made in about a second before ComfyUI starts; and its download of a missing checkpoint."""
import functools
import http.server
import os
import subprocess
import sys
import threading
import time

import pytest

from official_data import copy_photo

pytestmark = pytest.mark.host

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import edit_image  # noqa: E402  (standard library only at import: no ComfyUI, no torch)

EXAMPLE_CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"
EXAMPLE_BLIP = "blip-image-captioning-base"
FAST = ("--cpu", "--steps", "2", "--sentences", "4", "--size", "64")  # small settings; users get the defaults
# Modules a run must not have imported when it stops on a bad argument or a missing model.
HEAVY = ("torch", "comfy", "folder_paths", "nodes", "execution", "transformers")


@pytest.fixture(scope="module")
def setup(comfy, tiny_checkpoint_name, tmp_path_factory):
    """A ComfyUI base directory holding the tiny checkpoint and BLIP under the example's names (and under names of
    their own), and a work folder with a photo."""
    import folder_paths

    from tiny_blip import save_tiny_blip

    base = tmp_path_factory.mktemp("edit-base")
    (base / "models" / "checkpoints").mkdir(parents=True)
    source = folder_paths.get_full_path("checkpoints", tiny_checkpoint_name)
    for name in (EXAMPLE_CHECKPOINT, "tiny.safetensors"):
        os.symlink(source, base / "models" / "checkpoints" / name)
    save_tiny_blip(str(base / "models" / "blip" / EXAMPLE_BLIP))
    os.symlink(base / "models" / "blip" / EXAMPLE_BLIP, base / "models" / "blip" / "tiny-blip")
    work = tmp_path_factory.mktemp("edit-work")
    copy_photo("cat_1.png", str(work))
    return base, work


def _command(*args, importtime=False):
    return [sys.executable, *(["-X", "importtime"] if importtime else []), os.path.join(REPO, "edit_image.py"), *args]


def _env(**extra):
    env = dict(os.environ, HF_HUB_OFFLINE="1", COMFYUI_PATH=os.environ["COMFYUI_PATH"])
    env.pop(edit_image.CHECKPOINT_URL_ENV, None)
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def _run(base, work, *extra, output="dog.png"):
    cmd = _command(str(work / "cat_1.png"), "--source", "cat", "--target", "dog", "--checkpoint", "tiny.safetensors",
                   "--output", output, "--base-directory", str(base), *FAST, *extra)
    return subprocess.run(cmd, cwd=work, env=_env(), capture_output=True, text=True, timeout=900)


def _refused_fast(args, cwd, **env):
    """Run the command expecting a refusal before ComfyUI starts: exit 2 within 5 s, nothing heavy imported.
    Returns the error text."""
    started = time.monotonic()
    done = subprocess.run(_command(*args, importtime=True), cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=60)
    elapsed = time.monotonic() - started
    errors = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert done.returncode == 2, done.stdout[-2000:] + "\n".join(errors)[-2000:]
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    assert "Traceback" not in done.stderr
    return "\n".join(errors)


def test_edit_command_writes_the_edited_image_in_the_format_asked(setup):
    base, work = setup
    done = _run(base, work, "--blip", "tiny-blip", output="dog.jpg")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from PIL import Image
    with Image.open(work / "dog.jpg") as image:
        assert image.format == "JPEG" and image.size == (64, 64)  # JPEG bytes, not PNG bytes named .jpg
    for expected in ("P2PZ_InvertLatent", "P2PZ_GuidedEdit", "caption:", "2/2", f"wrote {work / 'dog.jpg'}"):
        assert expected in done.stdout, expected
    before = (work / "dog.jpg").read_bytes()
    error = _refused_fast([str(work / "cat_1.png"), "--output", "dog.jpg", "--base-directory", str(base)], work)
    assert "dog.jpg exists" in error and "--overwrite" in error  # never replaces the user's file
    assert (work / "dog.jpg").read_bytes() == before


def test_no_arguments_edits_the_bundled_photo_into_comfyuis_output(setup):
    """`python edit_image.py` (here with small settings) on a machine with the example's models: the bundled cat
    photo becomes a dog in <output>/pix2pix-zero/cat_to_dog_NNNNN.png (the folder the example workflows save to), next to what is there, never over it."""
    base, work = setup
    out = base / "output" / "pix2pix-zero"
    out.mkdir(parents=True)
    (out / "cat_to_dog_00001.png").write_bytes(b"an earlier result")
    before = sorted(os.listdir(work))
    done = subprocess.run(_command("--base-directory", str(base), *FAST), cwd=work, env=_env(), capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    written = out / "cat_to_dog_00002.png"
    assert f"wrote {written}" in done.stdout
    assert (out / "cat_to_dog_00001.png").read_bytes() == b"an earlier result"
    from PIL import Image
    with Image.open(written) as image:
        assert image.format == "PNG" and image.size == (64, 64)
    assert "P2PZ_GuidedEdit" in done.stdout and "caption:" in done.stdout
    assert sorted(os.listdir(work)) == before  # nothing written where it was run


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps 0: give 1 to 500"),
    (["--sentences", "0"], "--sentences 0: give 1 to 10000"),
    (["--size", "0"], "--size 0: give a multiple of 8 from 16"),
    (["--size", "8"], "--size 8: give a multiple of 8 from 16"),
    (["--size", "60"], "(e.g. 56 or 64)"),
    (["--size", "100"], "(e.g. 96 or 104)"),
    (["--output", "dog.gif"], "must end in one of .png, .jpg, .jpeg, .webp"),
    (["--source", " "], "--source is empty"),
    (["not-there.png"], "image not found"),
    (["notes.png"], "cannot read"),
])
def test_every_argument_is_checked_before_comfyui_starts(setup, args, message):
    base, work = setup
    (work / "notes.png").write_text("not an image")
    error = _refused_fast([*args, "--base-directory", str(base)], work)
    assert message in error, error


def test_missing_checkpoint_lists_what_is_installed(setup):
    base, work = setup
    error = _refused_fast(["--checkpoint", "sd15.safetensors", "--blip", "tiny-blip", "--base-directory", str(base)],
                          work)
    assert "checkpoint 'sd15.safetensors'" in error
    assert str(base / "models" / "checkpoints" / "sd15.safetensors") in error
    assert f"installed checkpoints: tiny.safetensors, {EXAMPLE_CHECKPOINT}" in error or (
        f"installed checkpoints: {EXAMPLE_CHECKPOINT}, tiny.safetensors" in error), error
    error = _refused_fast(["--blip", "other-blip", "--base-directory", str(base)], work)
    assert "BLIP model folder 'other-blip'" in error and str(base / "models" / "blip" / "other-blip") in error
    assert f"installed BLIP model folders: {EXAMPLE_BLIP}, tiny-blip" in error, error


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "no network"])
def test_offline_without_models_names_every_file_folder_and_url(tmp_path, how):
    """No models at all: stop in under 5 s with the exact file names, folders and URLs (no hub retries)."""
    base = tmp_path / "empty-base"
    base.mkdir()
    if how == "HF_HUB_OFFLINE":
        env = {}
        checkpoint_url = edit_image.workflow_checkpoint_url(
            __import__("json").load(open(edit_image.DEFAULT_WORKFLOW)), EXAMPLE_CHECKPOINT)
        blip_url = f"https://huggingface.co/{edit_image.BLIP_REPO_ID}"
        assert checkpoint_url.startswith("https://") and EXAMPLE_CHECKPOINT in checkpoint_url
    else:  # downloads allowed, but nothing answers (a port nobody listens on)
        checkpoint_url = f"http://127.0.0.1:9/{EXAMPLE_CHECKPOINT}"
        blip_url = f"http://127.0.0.1:9/{edit_image.BLIP_REPO_ID}"
        env = {"HF_HUB_OFFLINE": None, edit_image.CHECKPOINT_URL_ENV: checkpoint_url, "HF_ENDPOINT": "http://127.0.0.1:9"}
    error = _refused_fast(["--base-directory", str(base)], tmp_path, **env)
    assert ("HF_HUB_OFFLINE is set" if how == "HF_HUB_OFFLINE" else "no network: cannot reach 127.0.0.1:9") in error
    for expected in (EXAMPLE_CHECKPOINT, str(base / "models" / "checkpoints"), checkpoint_url,
                     EXAMPLE_BLIP, str(base / "models" / "blip" / EXAMPLE_BLIP), blip_url):
        assert expected in error, (expected, error)
    assert [p for p in base.rglob("*") if p.is_file()] == []  # nothing half-downloaded


def test_blip_constants_match_the_pack(pack_nodes):
    """edit_image.py names the default BLIP without importing the pack (which imports torch): same values."""
    import importlib

    caption = importlib.import_module(pack_nodes["P2PZ_BLIPCaption"].__module__)
    assert (edit_image.DEFAULT_BLIP, edit_image.BLIP_REPO_ID) == (caption.DEFAULT_BLIP_NAME, caption.BLIP_REPO_ID)


@pytest.fixture
def http_server(tmp_path):
    """A plain HTTP server on 127.0.0.1 serving <tmp>/served/."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_missing_checkpoint_is_downloaded_with_a_progress_bar(http_server, tmp_path, capsys, monkeypatch):
    served, url = http_server
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    payload = os.urandom(3 * (1 << 20) + 17)
    (served / EXAMPLE_CHECKPOINT).write_bytes(payload)
    folder = tmp_path / "models" / "checkpoints"
    dest = folder / EXAMPLE_CHECKPOINT
    missing = edit_image.Missing("checkpoint", EXAMPLE_CHECKPOINT, str(dest), [str(folder)],
                                 f"{url}/{EXAMPLE_CHECKPOINT}", "none", "")
    old = os.umask(0o022)
    try:
        edit_image.fetch_missing_models([missing])
    finally:
        os.umask(old)
    assert dest.read_bytes() == payload and os.stat(dest).st_mode & 0o777 == 0o644
    assert os.listdir(folder) == [EXAMPLE_CHECKPOINT]  # the temporary file was renamed, nothing left beside it
    shown = capsys.readouterr().out
    assert f"downloading checkpoint {EXAMPLE_CHECKPOINT} from {url}/{EXAMPLE_CHECKPOINT}" in shown
    assert "100.0%" in shown and "3.0 MiB of 3.0 MiB" in shown

    gone = edit_image.Missing("checkpoint", "gone.safetensors", str(folder / "gone.safetensors"), [str(folder)],
                              f"{url}/gone.safetensors", "none", "")
    with pytest.raises(edit_image.CommandError, match="(?s)downloading failed .*404.*gone.safetensors"):
        edit_image.fetch_missing_models([gone])
    assert os.listdir(folder) == [EXAMPLE_CHECKPOINT]  # no partial file
