"""The pair-collection command (collect_pairs.py) with a real ComfyUI and tiny models: refusals before anything
starts; one in-process worker on photos (a broken photo recorded, the run goes on), a rerun that does no work, and
the folder training a student with train_student.py; a local Ray with two actors on generated images, one actor
killed (SIGKILL) with an item in flight: nothing lost, nothing written twice, a rerun does nothing."""
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from official_data import copy_photo

pytestmark = pytest.mark.host

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import collect_pairs  # noqa: E402  (standard library only at import)

FAST = ("--cpu", "--steps", "2", "--sentences", "4", "--size", "64")  # small settings; users get the defaults
HEAVY = ("torch", "comfy", "folder_paths", "nodes", "execution", "ray")


@pytest.fixture(scope="module")
def setup(comfy, tiny_checkpoint_name, tmp_path_factory):
    """A ComfyUI base directory with the tiny checkpoint (tiny.safetensors) and BLIP, and a folder of three photos
    and one file that is not an image."""
    import folder_paths

    from tiny_blip import save_tiny_blip

    base = tmp_path_factory.mktemp("collect-base")
    (base / "models" / "checkpoints").mkdir(parents=True)
    os.symlink(folder_paths.get_full_path("checkpoints", tiny_checkpoint_name),
               base / "models" / "checkpoints" / "tiny.safetensors")
    save_tiny_blip(str(base / "models" / "blip" / "blip-image-captioning-base"))
    photos = tmp_path_factory.mktemp("photos")
    for name in ("cat_1.png", "cat_2.png", "dog_1.png"):
        copy_photo(name, str(photos))
    (photos / "broken.png").write_bytes(b"this is not a PNG")
    return base, photos


def _env():
    return dict(os.environ, HF_HUB_OFFLINE="1", COMFYUI_PATH=os.environ["COMFYUI_PATH"])


def _cli(*args, timeout=900, importtime=False):
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), os.path.join(REPO, "collect_pairs.py"),
           *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _keys(folder):
    with open(os.path.join(folder, "pairs.jsonl"), encoding="utf-8") as f:
        return [json.loads(line)["key"] for line in f]


@pytest.mark.parametrize("args, message", [
    (("--source", "cat", "--target", "dog"), "--photos FOLDER"),
    (("--photos", "{photos}", "--seeds", "0:3", "--source", "cat", "--target", "dog"), "--photos FOLDER"),
    (("--photos", "{missing}", "--source", "cat", "--target", "dog"), "no such folder"),
    (("--photos", "{empty}", "--source", "cat", "--target", "dog"), "holds no .png"),
    (("--seeds", "0:3", "--source", "cat", "--target", "dog"), "needs --prompt"),
    (("--seeds", "5:2", "--prompt", "a cat", "--source", "cat", "--target", "dog"), "is empty"),
    (("--seeds", "0:3", "--prompts-file", "{missing}", "--source", "cat", "--target", "dog"), "cannot read it"),
    (("--photos", "{photos}", "--source", "cat", "--target", "Cat"), "the same"),
    (("--photos", "{photos}", "--source", "cat", "--target", "dog", "--size", "60"), "multiple of 8"),
    (("--photos", "{photos}", "--source", "cat", "--target", "dog", "--no-ray", "--workers", "2"), "--no-ray"),
    (("--photos", "{photos}", "--source", "cat", "--target", "dog", "--checkpoint", "../x.safetensors"), "refused"),
    (("--photos", "{photos}", "--source", "cat", "--target", "dog", "--address", "127.0.0.1:{closed}"),
     "cannot reach the Ray cluster"),
])
def test_bad_input_is_refused_before_anything_starts(setup, tmp_path, args, message):
    base, photos = setup
    (tmp_path / "empty").mkdir()
    from scripts.comfy_host import free_port
    args = [a.format(photos=photos, missing=tmp_path / "missing", empty=tmp_path / "empty", closed=free_port())
            for a in args]
    started = time.monotonic()
    done = _cli(*args, "--output", str(tmp_path / "out"), importtime=True, timeout=60)
    errors = "\n".join(line for line in done.stderr.splitlines() if not line.startswith("import time:"))
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert done.returncode == 2, done.stdout[-2000:] + errors[-2000:]
    assert message in errors and "Traceback" not in errors
    assert time.monotonic() - started < 10
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_missing_on_the_worker_is_named_with_its_folders(setup, tmp_path):
    base, photos = setup
    done = _cli("--photos", str(photos), "--source", "cat", "--target", "dog", "--checkpoint", "absent.safetensors",
                "--base-directory", str(base), "--output", str(tmp_path / "out"), *FAST, timeout=300)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "checkpoint 'absent.safetensors' is not in ComfyUI's checkpoints folders" in done.stderr
    assert str(base / "models" / "checkpoints") in done.stderr
    # the command's own error, last, with no traceback of ours (ComfyUI logs tracebacks of its optional nodes)
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "collect_pairs.py" not in done.stderr and "pair_workers.py" not in done.stderr
    assert not (tmp_path / "out" / "input").exists()


def test_one_worker_collects_photos_reruns_for_free_and_the_folder_trains_a_student(setup, tmp_path):
    base, photos = setup
    out = tmp_path / "cat_to_dog"
    args = ("--photos", str(photos), "--source", "cat", "--target", "dog", "--checkpoint", "tiny.safetensors",
            "--base-directory", str(base), "--output", str(out), *FAST)
    first = _cli(*args)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]  # 1: an item failed
    assert "3 pairs written" in first.stdout and "1 failed" in first.stdout
    assert "broken.png: cannot read it as an image" in first.stdout
    keys = _keys(out)
    assert len(keys) == 3 and len(set(keys)) == 3
    log = [json.loads(line) for line in open(out / "collect_log.jsonl", encoding="utf-8")]
    assert [e["item"] for e in log if e["event"] == "failed"] == ["broken.png"]

    again = _cli(*args, timeout=120)
    assert "0 pairs written, 3 skipped" in again.stdout, again.stdout[-3000:]
    assert "worker 0:" not in again.stdout  # no ComfyUI started for a run with nothing to do
    assert _keys(out) == keys

    student = tmp_path / "students"
    trained = subprocess.run(
        [sys.executable, os.path.join(REPO, "train_student.py"), str(out), "--output", str(student), "--steps", "2",
         "--batch-size", "2", "--resolution", "32", "--base-channels", "8", "--res-blocks", "1", "--lambda-adv", "0",
         "--held-out", "0", "--checkpoint-every", "0", "--device", "cpu"],
        env=_env(), capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    files = [f for f in os.listdir(student) if f.endswith(".safetensors")]
    assert files, os.listdir(student)
    from safetensors import safe_open
    with safe_open(str(student / files[0]), "pt") as f:
        assert f.metadata().get("edit") == "cat -> dog"


def test_ray_actor_killed_mid_item_loses_nothing_and_duplicates_nothing(setup, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is the optional extra for collect_pairs.py: pip install 'ray>=2.40'")
    base, _ = setup
    out = tmp_path / "synthetic"
    args = ["--seeds", "0:8", "--prompt", "a photo of a cat", "--prompt", "a cat on a bench", "--source", "cat",
            "--target", "dog", "--checkpoint", "tiny.safetensors", "--base-directory", str(base), "--output",
            str(out), "--workers", "2", "--cpus-per-worker", "1", *FAST]
    seen = {}

    def on_pool(pool, progress):
        tick = progress.tick

        def kill_worker_0_mid_item(force=False):
            # once worker 0 has finished an item and is on the next: SIGKILL its process (as the OOM killer would)
            if not seen and progress.done() >= 1 and str(progress.status.get(0, "")).startswith("on "):
                seen["killed"] = (pool.info[0]["pid"], progress.status[0])
                os.kill(pool.info[0]["pid"], signal.SIGKILL)
            tick(force)
        progress.tick = kill_worker_0_mid_item
        seen_pool["pool"] = pool

    seen_pool = {}
    stream = io.StringIO()
    status = collect_pairs.main(args, on_pool=on_pool, stream=stream)
    text = stream.getvalue()
    assert status == 0, text[-4000:]
    assert "killed" in seen, text[-4000:]
    assert not ray.is_initialized()  # the local Ray it started is stopped
    pool = seen_pool["pool"]
    assert pool.lives[0] == 1 and pool.lives[1] == 0  # worker 0 replaced once, worker 1 never
    keys = _keys(out)
    assert len(keys) == 8 and len(set(keys)) == 8, keys
    records = [json.loads(line) for line in open(out / "pairs.jsonl", encoding="utf-8")]
    assert sorted(r["seed"] for r in records) == list(range(8))
    assert {r["prompt"] for r in records} == {"a photo of a cat", "a cat on a bench"}
    from core.pair_ledger import partial_files
    from core.student_data import list_pairs
    assert len(list_pairs(str(out))) == 8 and partial_files(str(out)) == []

    stream = io.StringIO()
    assert collect_pairs.main(args, on_pool=lambda *a: pytest.fail("a rerun with nothing to do started workers"),
                              stream=stream) == 0
    assert "0 pairs written, 8 skipped" in stream.getvalue()
    assert _keys(out) == keys
