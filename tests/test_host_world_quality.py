"""Do the edits do what they are for on a model that knows something? (issue 28) pix2pix-zero's colour edit on the
learned world: the edit happens, the object stays where it was, and the cross-attention guidance keeps more of it
than the same edit without guidance.

The world is trained, not shipped: no weights are committed. CI trains a reduced world on every clean run (12 to 17
minutes on 2 cores; test_reduced_world_colour_edit, at the end): its edits happen, keep an object, and keep more of it
with the guidance than without, by a small margin on 32 images (bench/README.md, "A CI-sized world"). The full world
keeps most of the object (mask IoU 0.5 and more) and takes about 5 hours on 2 cores, so its tests run on a world you
have built, in one of two ways:

- P2PZ_BUILD_WORLD=1: the tests build it into the test cache ($P2PZ_TEST_CACHE/world-full) on first use, with the
  commands below, and reuse it afterwards (an interrupted build resumes where it stopped);
- P2PZ_WORLD=DIR: a world built before, a folder holding judge.safetensors, checkpoints/world-sd15.safetensors and
  checkpoints/world-sd3.safetensors, made by

      python -m world.train --out DIR    # judge, VAE, SD 1.x UNet (4,600 steps), SD 3.x MMDiT (8,000 steps)

Without either they are skipped, saying so (as in CI). The edits are bench/bench_quality.py's, run as their own process
as a user runs them (the pack's nodes through ComfyUI, as a user wires them); the judge reads them. The floors are
argued beside each assertion from what an edit that fails would score; the measured figures are printed, and
bench/README.md ("The world quality test") gives them for the checkpoints of its tables.
"""
import glob
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.host

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = 16      # held-out renders (attribute combinations never trained on), each edited once along colour
STEPS = 20
SENTENCES = 200  # per word for each direction, as the benchmark's tables


@pytest.fixture(scope="module")
def world_dir():
    """The learned world's folder: $P2PZ_WORLD, or built into the test cache with P2PZ_BUILD_WORLD=1, else a skip."""
    if os.environ.get("P2PZ_WORLD"):
        return os.environ["P2PZ_WORLD"]
    if os.environ.get("P2PZ_BUILD_WORLD") != "1":
        pytest.skip("needs a learned world: set P2PZ_BUILD_WORLD=1 to build one into the test cache (about 5 hours "
                    "on 2 cores), or P2PZ_WORLD to a folder built with python -m world.train (this file's docstring)")
    from conftest import _comfyui_path, host_cache_dir
    out = os.path.join(host_cache_dir(), "world-full")
    log = os.path.join(host_cache_dir(), "world-full-build.log")
    train = [sys.executable, "-m", "world.train", "--out", out, "--comfyui", _comfyui_path()]
    # every part resumes; a finished part is skipped, or resumed to its default where that has grown since
    _run(train, log, "building the learned world")
    return out


def _world_file(world, *parts):
    path = os.path.join(world, *parts)
    if not os.path.isfile(path):
        pytest.skip(f"{world} has no {os.path.join(*parts)}: build it with the commands in this file's docstring")
    return path


def _run(cmd, log_path, what):
    """Runs a command of this repository as its own process (as a user runs it), its output appended to log_path."""
    with open(log_path, "a") as log:
        proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), stdout=log,
                              stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        with open(log_path) as f:
            pytest.fail(f"{what} failed (exit {proc.returncode}); the end of {log_path}:\n{f.read()[-4000:]}")


def _edit_report(ckpt, judge, methods, tmp_path, images=IMAGES):
    """bench_quality.py's JSON report for `images` colour edits by each method, run as its own process: its rows
    keyed by (image, method)."""
    from conftest import _comfyui_path
    report_path, log_path = str(tmp_path / "quality.json"), str(tmp_path / "quality.log")
    cmd = [sys.executable, os.path.join("bench", "bench_quality.py"), "--ckpt", ckpt, "--judge", judge,
           "--images", str(images), "--edits", "colour", "--methods", *methods, "--steps", str(STEPS),
           "--sentences", str(SENTENCES), "--comfyui", _comfyui_path(), "--json", report_path]
    t0 = time.monotonic()
    _run(cmd, log_path, "bench_quality.py")
    with open(report_path) as f:
        report = json.load(f)
    rows = {(r["image"], r["method"]): r for r in report["rows"]}
    print(f"\n{os.path.basename(ckpt)}: {images} colour edits in {time.monotonic() - t0:.0f} s; judge right on "
          f"{report['summary']['judge_on_inputs']:.0%} of the inputs")
    for m in methods:
        print(f"  {m}: {json.dumps(report['summary']['results'][f'{m}/colour'])}")
    return rows


def _check_world_knows_colour(rows, method, floor=0.75):
    """The world must know what it is tested on, or nothing after means anything: the judge reads every held-out
    input's colour (renders, its own domain; it reads colour right on all of its test renders), and the reconstruction
    (Guided Edit's second output: the inversion regenerated with the caption) keeps the source colour on at least
    `floor` of the images. A model that never learned colour keeps it at chance (1 in 4)."""
    inputs = [rows[(i, method)] for i in _images(rows)]
    misread = [r["image"] for r in inputs if r["input_reads"]["colour"] != r["truth"]["colour"]]
    assert not misread, f"the judge misreads the colour of held-out inputs {misread}: retrain the judge"
    kept = sum(r["reconstruction_reads"]["colour"] == r["truth"]["colour"] for r in inputs)
    assert kept >= floor * len(inputs), (f"the reconstructions keep the colour on {kept} of {len(inputs)}: the world "
                                         "is undertrained")


def _check_edit_happens(rows, method, measured):
    """The edit happens: a direction that does nothing leaves every edit at the source colour (as the reconstructions
    are), accuracy 0. Floor: at least one of the n edits reads the target colour; at the measured rate p per edit, a
    working edit scores 0 of n with probability (1 - p)^n. For n = 16: 0.003 at the tables' checkpoints' p = 0.31,
    0.034 at the default SD 1.x world's p = 0.19 (3 of 16); for the reduced world's 32 at its lowest measured p = 0.22
    (7 of 32, bench/README.md): 0.0004. Each world's edits are fixed by its seeds; the chance is that of a world
    trained on another machine landing there."""
    images = _images(rows)
    accurate = sum(rows[(i, method)]["accurate"] for i in images)
    assert accurate >= 1, (f"{method}: no colour edit of {len(images)} reads the target colour (where the floor was "
                           f"set, bench/README.md: {measured:.0%})")


# The least mean mask-IoU gain that counts as the guidance acting. A guidance that does not act gives gain 0 (lambda 0
# runs the same inversion, direction and sampler); one that acts too weakly to matter moves it by about 0.01 at most
# (the SD 3.x world at lambda 0.05-0.4: mask IoU 0.48-0.49 against 0.48 at lambda 0). 0.03 is three times that, and
# a third of the smallest gain measured where the guidance works (0.10 on SD 3.x at lambda 10; 0.20 on SD 1.x).
MIN_GUIDANCE_GAIN = 0.03


def _images(rows):
    """The held-out images of a report's rows."""
    return sorted({image for image, _ in rows})


def _mean_iou(rows, method):
    """Mean mask IoU (input, edit) of a method's edits."""
    return sum(rows[(i, method)]["iou"] for i in _images(rows)) / len(_images(rows))


def _guidance_gains(rows, guided):
    """Per image, the guided edit's mask IoU minus the same edit's at lambda_xa 0 (paired: same image and direction)."""
    return [rows[(i, guided)]["iou"] - rows[(i, "no_guidance")]["iou"] for i in _images(rows)]


def _check_guidance_gains(rows, guided, floor=MIN_GUIDANCE_GAIN):
    """The guided edit keeps more of the object than the same edit at lambda_xa 0: mean paired mask-IoU gain above
    `floor`."""
    gains = _guidance_gains(rows, guided)
    mean_gain = sum(gains) / len(gains)
    print(f"  {guided}: mask-IoU gain over lambda 0, mean {mean_gain:+.3f}, {sum(g > 0 for g in gains)} up, "
          f"{sum(g < 0 for g in gains)} down; per image {[round(g, 3) for g in gains]}")
    assert mean_gain > floor, (f"{guided} keeps mask IoU {mean_gain:+.3f} over lambda 0 on average (more than {floor} "
                               f"wanted); per image: {[round(g, 3) for g in gains]}")


def test_sd15_world_colour_edit_keeps_structure_with_guidance(world_dir, tmp_path):
    ckpt = _world_file(world_dir, "checkpoints", "world-sd15.safetensors")
    judge = _world_file(world_dir, "judge.safetensors")
    rows = _edit_report(ckpt, judge, ["paper", "no_guidance"], tmp_path)
    _check_world_knows_colour(rows, "paper")
    _check_edit_happens(rows, "paper", 0.31)

    # The object stays where it was: mean IoU of the judge's object masks (input, edit) at least 0.5. Methods that
    # repaint the object from the edited caption (prompt swap, SDEdit) reach 0.16-0.25 on this world, the paper's edit
    # 0.65 (the 4,572-step checkpoint); the judge's mask against a render's true mask 0.94 (its test report). Two
    # held-out renders' true masks overlap by 0.20 on average, 0.47 when the objects share the position and 0.65 when
    # they share position, size and shape: 0.5 asks for more than the position kept.
    mean_iou = _mean_iou(rows, "paper")
    assert mean_iou >= 0.5, f"pix2pix-zero's colour edits keep mask IoU {mean_iou:.2f} (prompt swap: 0.16)"

    # What the guidance is for: it keeps more of the structure than the same edit with lambda_xa 0 (the same inversion,
    # direction and sampler). Measured: mean gain 0.20 on the tables' 4,572-step checkpoint (>= 0 on all 16 images),
    # 0.24 on the default 4,600-step one (15 of 16 >= 0; the other -0.04).
    _check_guidance_gains(rows, "paper")


def test_sd3_world_joint_attention_guidance_keeps_structure(world_dir, tmp_path):
    """The SD 3.x path on the world's MMDiT. At the default lambda_xa 0.1 the joint-attention guidance moves this
    model's latent too little to change an edit (bench/README.md, "Edit quality on the SD 3.x world"), so what is
    tested is that the guidance acts the right way when strong enough: the loop at 10 times the input's largest
    strength on every step (bench_quality's lambda_10_all_steps) against lambda 0. The default is not asserted to
    gain anything: on this world it does not, and that is recorded there."""
    ckpt = _world_file(world_dir, "checkpoints", "world-sd3.safetensors")
    judge = _world_file(world_dir, "judge.safetensors")
    rows = _edit_report(ckpt, judge, ["lambda_10_all_steps", "no_guidance"], tmp_path)
    _check_world_knows_colour(rows, "lambda_10_all_steps")
    _check_edit_happens(rows, "lambda_10_all_steps", 0.31)
    # Measured: mean IoU 0.58 against 0.48 (gain 0.10) on the tables' 6,500-step checkpoint; 0.53 against 0.49
    # (gain 0.040, 3 of 16 images down) on the default 8,000-step one, trained in one schedule.
    _check_guidance_gains(rows, "lambda_10_all_steps")


# ----------------------------------------------------------------------------------------------------------------
# The CI-sized world: what CI can afford to train (python -m world.train --reduced; bench/README.md, "A CI-sized
# world"), built into the test cache on every clean run. It knows colour, its edits happen, and its guidance keeps
# more of the object than lambda 0, by less and with more noise per image than the full world's: at 16 images the gain
# was within two standard errors of 0 on some builds, so this test edits twice as many.

REDUCED_PARTS = ("judge", "vae", "sd15")
REDUCED_IMAGES = 32
REDUCED_ACCURACY = 0.41  # measured: 13 of 32 colour edits read the target colour (2026-12-08; in the failure message)
# The edit keeps an object where the input's was: mean mask IoU at least 0.1. An edit that loses the object (or turns
# the image to noise) scores 0; two unrelated held-out renders' objects overlap by 0.20 on average (true masks; 0.47
# when they share the position, 0.65 with position, size and shape). At this size the edit keeps only a little more
# than an unrelated render would (bench/README.md, "A CI-sized world"), so the floor is the failure's, not the paper's
# claim, which the full world's test asserts (>= 0.5).
REDUCED_MIN_IOU = 0.1


def _above_chance(n, chance=0.25, alpha=0.03):
    """The least count of n that a model guessing at `chance` per image reaches with probability at most `alpha`
    (binomial tail): a floor that says the world learned something, whatever n. For n = 16: 8; for n = 32: 14."""
    def tail(k):  # P(at least k of n right) at `chance` per image
        return sum(math.comb(n, j) * chance ** j * (1 - chance) ** (n - j) for j in range(k, n + 1))
    return next(k for k in range(n + 1) if tail(k) <= alpha)


@pytest.fixture(scope="module")
def reduced_world():
    """The reduced world (judge, VAE, SD 1.x UNet), built into the test cache and reused while world/ is unchanged."""
    from conftest import _comfyui_path, host_cache_dir
    world_src = os.path.join(REPO, "world")
    digest = hashlib.sha256()
    for name in sorted(os.listdir(world_src)):
        if name.endswith(".py"):
            with open(os.path.join(world_src, name), "rb") as f:
                digest.update(name.encode() + f.read())
    out = os.path.join(host_cache_dir(), f"world-reduced-{digest.hexdigest()[:10]}")
    log = out + "-build.log"
    for stale in glob.glob(os.path.join(host_cache_dir(), "world-reduced-*")):  # builds of older world/ code
        if stale not in (out, log):
            shutil.rmtree(stale) if os.path.isdir(stale) else os.remove(stale)
    seconds = {}
    for part in REDUCED_PARTS:  # a finished part is skipped (0 s here when cached)
        t0 = time.monotonic()
        _run([sys.executable, "-m", "world.train", "--out", out, "--reduced", "--part", part,
              "--comfyui", _comfyui_path()], log, f"training the reduced world's {part}")
        seconds[part] = round(time.monotonic() - t0)
    print(f"\nreduced world in {out}: seconds per part {seconds}")
    return out


def test_reduced_world_colour_edit(reduced_world, tmp_path):
    """CI's quality check: on a world CI trains in minutes, pix2pix-zero's colour edit happens, keeps the object, and
    keeps more of it with the cross-attention guidance than without."""
    rows = _edit_report(os.path.join(reduced_world, "checkpoints", "world-sd15.safetensors"),
                        os.path.join(reduced_world, "judge.safetensors"), ["paper", "no_guidance"], tmp_path,
                        images=REDUCED_IMAGES)
    # The reconstructions keep the colour clearly above chance (a colour-blind model: 1 in 4 per image). The reduced
    # VAE is what loses colour when anything does: its round trips kept it on 100 %, 78 % and 49 % of its test renders
    # for training seeds 0, 1 and 2 (bench/README.md), so the floor is chance's, not the full world's 75 %.
    _check_world_knows_colour(rows, "paper", floor=_above_chance(REDUCED_IMAGES) / REDUCED_IMAGES)
    _check_edit_happens(rows, "paper", REDUCED_ACCURACY)
    mean_iou = _mean_iou(rows, "paper")
    assert mean_iou >= REDUCED_MIN_IOU, (f"pix2pix-zero's colour edits keep mask IoU {mean_iou:.2f} on the reduced "
                                         f"world (at least {REDUCED_MIN_IOU} wanted)")
    # What the guidance is for (issue 28: its structure gain over lambda 0 is positive). A guidance that does nothing
    # leaves each edit as lambda 0's (the same inversion, direction and sampler): gain 0 up to rounding; one that
    # harms the structure: below 0. So the floor is 0, the failure's score, asked of the mean over the 32 paired
    # images. Measured on reduced worlds of training seeds 0-3 (each another draw of the world, as another machine's
    # rounding gives; 2026-12-08): +0.079, +0.038, +0.053, +0.042, whose mean 0.053 is 2.9 of their standard
    # deviations (0.018) above 0. At 16 images the same worlds gave +0.035 to +0.120, spread twice as wide (0 was 2.0
    # standard deviations away), which is why this test edits 32.
    _check_guidance_gains(rows, "paper", floor=0.0)
