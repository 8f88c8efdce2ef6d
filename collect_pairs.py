"""Collect (input, edited) pairs for a fast student, on one machine or many, with ComfyUI's engine in-process.

    # one machine, one worker (no Ray): every photo of a folder, cat -> dog
    python collect_pairs.py --photos photos/ --source cat --target dog --output ComfyUI/output/pix2pix_zero_pairs/cat_to_dog

    # generated images: seeds 0..14999 of a prompt, edited; 4 GPUs of this machine through a local Ray
    python collect_pairs.py --seeds 0:15000 --prompt "a photo of a cat" --source cat --target dog \\
        --output pairs/cat_to_dog --workers 4

    # a Ray cluster (`ray start --head` on one machine, `ray start --address=HEAD:6379` on the others)
    python collect_pairs.py ... --address HEAD:6379

Each worker is a ComfyUI started in-process with this pack, running the edit workflow (example 1 for photos,
example 2 for seeds, or --workflow) exactly as edit_image.py does; with Ray, one actor per GPU (or per group of CPU
cores). The output folder is what P2PZ_TrainStudent and train_student.py read (input/, edited/, pairs.jsonl), with
the same filters (--min-structure, --min-change).

Resumable and exactly-once: each item's key covers its input (the photo's content, or the seed and prompt), the
edit and the settings. A rerun skips what was written or filtered and tries failed items again; an item on a
worker that dies goes to another; only this command writes the folder, each pair once, with a journal that lets
a killed run's next start finish or undo a pair half written. Run it with ComfyUI's own Python.
"""
import argparse
import json
import os
import sys
import time

PACK_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, PACK_DIR)
import edit_image  # noqa: E402  (standard library only at import)
from edit_image import CommandError, check_model_name  # noqa: E402
from scripts import comfy_host  # noqa: E402

PHOTO_WORKFLOW = edit_image.DEFAULT_WORKFLOW
SEED_WORKFLOW = os.path.join(PACK_DIR, "example_workflows", "pix2pix_zero_2_generate_then_edit.json")
PHOTO_EXTS = (".png", ".jpg", ".jpeg", ".webp")
MAX_SEED = 0xFFFFFFFFFFFFFFFF


# ----------------------------------------------------------------------------------------------------------------
# The manifest: what to edit (checked before any worker starts)
# ----------------------------------------------------------------------------------------------------------------

def parse_seeds(text):
    """'A:B' (A <= seed < B) or a comma list '1,5,9'."""
    try:
        if ":" in text:
            start, stop = (int(x) for x in text.split(":", 1))
            seeds = range(start, stop)
        else:
            seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CommandError(f"--seeds {text!r}: give START:STOP (e.g. 0:1000, STOP excluded) or a list such as "
                           f"1,5,9") from None
    if not len(seeds):
        raise CommandError(f"--seeds {text!r} is empty: STOP must be above START (e.g. 0:1000)")
    if min(seeds) < 0 or max(seeds) > MAX_SEED:
        raise CommandError(f"--seeds {text!r}: seeds go from 0 to 2**64 - 1")
    return seeds


def edit_identity(args):
    """What the edit is, for the item keys: the words and their sentences, or the direction file's content."""
    if args.direction:
        return {"direction": args.direction}
    return {"source": args.source, "target": args.target, "sentences": args.sentences}


def settings_identity(args, workflow):
    """Everything else that decides a result: the settings and the workflow's own widget values (a workflow
    edited in ComfyUI gives new keys); node positions and notes do not count."""
    nodes = sorted(([n.get("type"), n.get("widgets_values"), n.get("mode", 0)] for n in workflow.get("nodes", [])
                    if n.get("type") not in ("MarkdownNote", "Note", "LoadImage", "SaveImage", "PreviewImage",
                                              "PreviewAny")), key=json.dumps)
    links = sorted(json.dumps(link[1:5]) for link in workflow.get("links", []))
    return {"checkpoint": args.checkpoint, "steps": args.steps, "seed": args.seed, "size": args.size,
            "blip": args.blip, "workflow": {"nodes": nodes, "links": links}}


def photo_names(folder):
    """The photos of a folder (not its sub-folders), by name."""
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        raise CommandError(f"--photos {folder}: no such folder (give a folder of PNG, JPEG or WebP photos)")
    names = sorted(f for f in os.listdir(folder) if os.path.splitext(f)[1].lower() in PHOTO_EXTS
                   and os.path.isfile(os.path.join(folder, f)))
    if not names:
        raise CommandError(f"--photos {folder} holds no .png, .jpg, .jpeg or .webp file")
    return names


def photo_items(args, edit, settings, ledger_key):
    folder = os.path.abspath(args.photos)
    names = photo_names(folder)
    items = []
    for name in names[:args.limit] if args.limit else names:
        path = os.path.join(folder, name)
        items.append({"label": name, "path": path, "ext": os.path.splitext(name)[1].lower(),
                      "key": ledger_key({"sha256": _file_sha256(path)}, edit, settings)})
    return items


def _unreadable(path):
    """Why Pillow cannot read this photo (None if it can): found here, not by a worker after its start."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        return f"cannot read it as an image ({type(e).__name__}: {e}): replace or remove the file"
    return None


def seed_items(args, edit, settings, ledger_key):
    seeds = parse_seeds(args.seeds)
    prompts = [p.strip() for p in args.prompt if p.strip()]
    items = []
    for seed in list(seeds)[:args.limit] if args.limit else seeds:
        text = prompts[seed % len(prompts)]
        items.append({"label": f"seed {seed}", "seed": seed, "prompt": text,
                      "key": ledger_key({"seed": seed, "prompt": text}, edit, settings)})
    return items


def _file_sha256(path):
    from core.pair_ledger import file_sha256
    return file_sha256(path)


def check_arguments(args):
    """Every check that needs no model, no Ray and no ComfyUI; returns the workflow."""
    if bool(args.photos) == bool(args.seeds):
        raise CommandError("say what to edit: --photos FOLDER (real photos) or --seeds START:STOP with --prompt "
                           "(generated images)")
    if args.prompts_file:
        try:
            with open(args.prompts_file, encoding="utf-8") as f:
                args.prompt = list(args.prompt) + [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise CommandError(f"--prompts-file {args.prompts_file}: cannot read it ({e}): give a UTF-8 text file, "
                               f"one prompt per line") from None
    if args.seeds and not [p for p in args.prompt if p.strip()]:
        raise CommandError('--seeds needs --prompt TEXT or --prompts-file FILE (the image each seed generates, e.g. '
                           '--prompt "a photo of a cat"); several prompts are used in turn')
    if args.photos and args.prompt:
        raise CommandError("--prompt and --prompts-file are for --seeds: photos are captioned by BLIP")
    if args.photos:
        photo_names(args.photos)
    else:
        parse_seeds(args.seeds)
    if args.direction:
        check_model_name(args.direction, "--direction")
        if not args.direction.endswith(".safetensors"):
            raise CommandError(f"--direction {args.direction!r}: give the file name in models/"
                               f"pix2pix_zero_directions, ending in .safetensors")
    else:
        for option in ("source", "target"):
            if not getattr(args, option) or not getattr(args, option).strip():
                raise CommandError(f"--{option} is missing: name what the images show (--source) and what they "
                                   f"should show (--target), e.g. --source cat --target dog, or give --direction")
        if " ".join(args.source.lower().split()) == " ".join(args.target.lower().split()):
            raise CommandError(f"--source and --target are the same ({args.source!r}): the edit would change "
                               f"nothing")
        if args.sentences < 1 or args.sentences > edit_image.MAX_SENTENCES:
            raise CommandError(f"--sentences {args.sentences}: give 1 to {edit_image.MAX_SENTENCES}")
    if args.steps < 1 or args.steps > edit_image.MAX_STEPS:
        raise CommandError(f"--steps {args.steps}: give 1 to {edit_image.MAX_STEPS} (50 is the authors' choice)")
    if args.size < edit_image.MIN_SIZE or args.size % 8 or args.size > edit_image.MAX_SIZE:
        raise CommandError(f"--size {args.size}: give a multiple of 8 from {edit_image.MIN_SIZE} to "
                           f"{edit_image.MAX_SIZE} (512 for SD 1.x)")
    if args.seed < 0 or args.seed > MAX_SEED:
        raise CommandError(f"--seed {args.seed}: give a number from 0 to 2**64 - 1")
    for option in ("min_structure", "min_change"):
        if not 0 <= getattr(args, option) <= 1:
            raise CommandError(f"--{option.replace('_', '-')} {getattr(args, option)}: give 0 (off) to 1")
    check_model_name(args.checkpoint, "--checkpoint")
    if args.blip:
        check_model_name(args.blip, "--blip")
    if args.limit is not None and args.limit < 1:
        raise CommandError(f"--limit {args.limit}: give at least 1")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise CommandError(f"--output {args.output} is a file: give a folder (created if missing)")
    if args.workers is not None and args.workers < 1:
        raise CommandError(f"--workers {args.workers}: give at least 1")
    if args.no_ray and (args.address or (args.workers or 1) > 1):
        raise CommandError("--no-ray runs one in-process worker: leave out --address and --workers")
    if args.address:
        check_cluster_reachable(args.address)
    return edit_image.read_workflow(args.workflow or (PHOTO_WORKFLOW if args.photos else SEED_WORKFLOW))


def check_cluster_reachable(address, timeout=5.0):
    """Refuse, within seconds, a Ray address nothing listens on (Ray itself retries for minutes). 'auto' and
    ray:// client addresses are left to Ray."""
    import socket

    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise CommandError(f"--address {address!r}: give the head's HOST:PORT as `ray start --head` printed it "
                           f"(e.g. 192.168.1.10:6379)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise CommandError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}): start it with `ray start "
                           f"--head --port {port}` on {host}, check the address and that the port is open, or "
                           f"leave --address out for a local Ray") from None


# ----------------------------------------------------------------------------------------------------------------
# What the user sees
# ----------------------------------------------------------------------------------------------------------------

class Progress:
    """One status line (redrawn on a terminal, printed every `every` seconds otherwise) and the summary."""

    def __init__(self, total, skipped, stream=sys.stdout, every=15.0):
        self.total, self.skipped, self.stream = total, skipped, stream
        self.counts = {"written": 0, "filtered": 0, "failed": 0}
        self.item_seconds = []  # each edited item's time inside its worker (the rest is start-up and dispatch)
        self.failures, self.filter_reasons = [], []
        self.status = {}
        self.started = time.monotonic()
        self.first_result = None
        self.tty = stream.isatty()
        self.every, self.last_print = every, 0.0

    def worker(self, slot, text):
        self.status[slot] = text
        if not self.tty and ("died" in text or "could not" in text or "dead" in text or "ready" in text):
            self._print_line(f"worker {slot}: {text}")

    def done(self):
        return sum(self.counts.values())

    def line(self):
        elapsed = time.monotonic() - self.started
        done = self.done()
        remaining = self.total - self.skipped - done
        rate = ""
        if self.first_result is not None and done > 1:
            per_min = (done - 1) / max(time.monotonic() - self.first_result, 1e-9) * 60
            eta = remaining / per_min if per_min > 0 else float("inf")
            rate = f" | {per_min:.1f} pairs/min, ETA {_minutes(eta)}"
        workers = ", ".join(f"w{s}: {t}" for s, t in sorted(self.status.items()))
        return (f"[{_minutes(elapsed / 60)}] {self.skipped + done}/{self.total} items (written "
                f"{self.counts['written']}, filtered {self.counts['filtered']}, failed {self.counts['failed']}, "
                f"skipped {self.skipped}){rate} | {workers}")

    def tick(self, force=False):
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\033[K" + self.line()[:200])
            self.stream.flush()
        elif force or now - self.last_print >= self.every:
            self._print_line(self.line())
            self.last_print = now

    def _print_line(self, text):
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def result(self, kind, detail=None, seconds=None, worker=None):
        if self.first_result is None:
            self.first_result = time.monotonic()
        self.counts[kind] += 1
        if seconds is not None:
            self.item_seconds.append(seconds)
        if kind == "failed":
            self.failures.append(detail)
            self._print_line(f"failed: {detail}")
        elif kind == "filtered":
            self.filter_reasons.append(detail)

    def summary(self, output, written_total):
        if self.tty:
            self.stream.write("\n")
        lines = [f"done in {_minutes((time.monotonic() - self.started) / 60)}: {self.counts['written']} pairs "
                 f"written, {self.skipped} skipped (done before), {self.counts['filtered']} filtered, "
                 f"{self.counts['failed']} failed; {written_total} pairs in {output}"]
        if self.filter_reasons:
            lines.append("filtered: " + "; ".join(self.filter_reasons[:5]) +
                         (f"; ... ({len(self.filter_reasons) - 5} more)" if len(self.filter_reasons) > 5 else ""))
        for failure in self.failures[:10]:
            lines.append(f"failed: {failure}")
        if len(self.failures) > 10:
            lines.append(f"... {len(self.failures) - 10} more failures in collect_log.jsonl")
        if self.failures:
            lines.append("failed items are tried again by a rerun of the same command")
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()


def _minutes(m):
    if m == float("inf"):
        return "?"
    return f"{int(m // 60)} h {int(m % 60):02d} min" if m >= 60 else f"{m:.1f} min"


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------

def uses_ray(args):
    """Ray for several workers or a cluster (or when asked); otherwise one in-process worker."""
    return not args.no_ray and bool(args.address or (args.workers or 1) > 1 or args.ray)


def make_pool(args, config):
    from scripts.pair_workers import LocalPool, RayPool

    if not uses_ray(args):
        return LocalPool(config)
    return RayPool(config, workers=args.workers, address=args.address, gpus_per_worker=args.gpus_per_worker,
                   cpus_per_worker=args.cpus_per_worker, max_restarts=args.max_worker_restarts)


def run(args, workflow, on_pool=None, stream=sys.stdout):
    """Collect; returns the exit status (0: all done, 1: some items failed or could not be done)."""
    from core.pair_ledger import LedgerError, PairLedger, filter_reasons, item_key
    from core.student_data import PairFilter, list_pairs
    from scripts.pair_workers import NoWorkersLeft, WorkerConfig, WorkerSetupError, collect

    photos = bool(args.photos)
    edit, settings = edit_identity(args), settings_identity(args, workflow)
    items = (photo_items if photos else seed_items)(args, edit, settings, item_key)
    pair_filter = PairFilter(min_structure=args.min_structure, min_change=args.min_change)
    edit_name = args.edit or (args.direction.rsplit(".", 1)[0] if args.direction else f"{args.source} -> {args.target}")
    output = os.path.abspath(args.output)
    try:
        ledger = PairLedger(output)
        ledger.open()
    except LedgerError as e:
        raise CommandError(str(e)) from None
    try:
        if any(ledger.recovered.values()):
            print(f"recovered from an interrupted run: {ledger.recovered['finished']} pairs finished, "
                  f"{ledger.recovered['undone']} half-written pairs removed", file=stream)
        done = ledger.done_keys()
        todo = [item for item in items if item["key"] not in done]
        progress = Progress(len(items), len(items) - len(todo), stream=stream)
        if photos:  # only the photos still to do are opened (a rerun of 15,000 done ones reads none again)
            unreadable = {item["key"]: why for item in todo if (why := _unreadable(item["path"]))}
            for item in [i for i in todo if i["key"] in unreadable]:
                ledger.failed(item["key"], item["label"], unreadable[item["key"]])
                progress.result("failed", f"{item['label']}: {unreadable[item['key']]}")
            todo = [i for i in todo if i["key"] not in unreadable]
        if not todo:
            progress.summary(output, len(list_pairs(output)))
            return 1 if progress.counts["failed"] else 0
        settings_list = edit_image.edit_settings(args, photo=photos)
        if args.direction:  # the worker swaps BuildDirection for LoadDirection: no word settings
            settings_list = [s for s in settings_list if s[0] != "P2PZ_BuildDirection"]
        config = WorkerConfig(workflow=workflow, settings=settings_list, mode="photos" if photos else "seeds",
                              checkpoint=args.checkpoint, direction=args.direction, comfyui=args.comfyui,
                              base_directory=args.base_directory, cpu=args.cpu, threads=args.threads)
        pool = make_pool(args, config)
        if on_pool:
            on_pool(pool, progress)
        try:
            print(f"{len(todo)} items to do ({progress.skipped} done before), {pool.kind} workers", file=stream,
                  flush=True)
            slots = pool.start(on_status=progress.worker)
            for slot, info in sorted(pool.info.items()):
                print(f"worker {slot}: {info['host']} pid {info['pid']}, {info['device']}, ComfyUI "
                      f"{info['comfyui']}", file=stream, flush=True)

            def on_result(item, result):
                record = {"edit": edit_name, "source": "collect_pairs.py", "item": item["label"],
                          "structure_score": round(result["structure_score"], 6),
                          "change_score": round(result["change_score"], 6), "worker_host": result["host"]}
                if not photos:
                    record.update(seed=item["seed"], prompt=item["prompt"])
                reasons = filter_reasons(pair_filter, result["structure_score"], result["change_score"])
                if reasons:
                    ledger.filtered(item["key"], item["label"], reasons,
                                    {"structure_score": record["structure_score"],
                                     "change_score": record["change_score"]})
                    progress.result("filtered", f"{item['label']}: {', '.join(reasons)}", result["seconds"],
                                    result["worker"])
                else:
                    ledger.write(item["key"], result["input_png"], result["edited_png"], result["size"], record)
                    progress.result("written", seconds=result["seconds"], worker=result["worker"])

            def on_failure(item, reason):
                ledger.failed(item["key"], item["label"], reason)
                progress.result("failed", f"{item['label']}: {reason}")

            def load(item):  # read when a worker takes it (15,000 photos are never all in memory); photos travel
                # to the workers as bytes, so other machines need not see the folder
                if photos:
                    with open(item["path"], "rb") as f:
                        return dict(item, image_bytes=f.read())
                return item

            status = 0
            try:
                collect(todo, pool, slots, on_result, on_failure, on_status=progress.worker, on_tick=progress.tick,
                        max_attempts=args.max_attempts, prepare=load)
            except NoWorkersLeft as e:
                print(f"\nstopped: {e}", file=stream)
                status = 1
            except KeyboardInterrupt:
                print("\ninterrupted: what was written is kept; rerun the same command to go on", file=stream)
                status = 130
            progress.tick(force=True)
        except WorkerSetupError as e:
            raise CommandError(str(e)) from None
        finally:
            pool.shutdown()
        progress.summary(output, len(list_pairs(output)))
        return status or (1 if progress.counts["failed"] else 0)
    finally:
        ledger.close()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_argument_group("what to edit")
    what.add_argument("--photos", help="a folder of photos (PNG/JPEG/WebP), each edited once")
    what.add_argument("--seeds", help="generated images instead: seeds START:STOP (STOP excluded) or 1,5,9")
    what.add_argument("--prompt", action="append", default=[],
                      help="with --seeds: the prompt each seed generates from; repeat it for several (seed s uses "
                           "prompt number s mod their count)")
    what.add_argument("--prompts-file", help="with --seeds: a text file of prompts, one per line, used in turn with "
                                             "any --prompt (e.g. thousands of captions of the source)")
    what.add_argument("--limit", type=int, help="at most this many items (the first ones)")
    edit = p.add_argument_group("the edit")
    edit.add_argument("--source", help='what the images show ("cat")')
    edit.add_argument("--target", help='what they should show ("dog")')
    edit.add_argument("--sentences", type=int, default=1000, help="sentences per word for the direction (1000)")
    edit.add_argument("--direction", help="a direction file in models/pix2pix_zero_directions instead of words")
    edit.add_argument("--edit", help="the edit's name stored with each pair (default: 'SOURCE -> TARGET')")
    edit.add_argument("--checkpoint", default=edit_image.DEFAULT_CHECKPOINT,
                      help=f"checkpoint in ComfyUI's models/checkpoints (default {edit_image.DEFAULT_CHECKPOINT})")
    edit.add_argument("--steps", type=int, default=50, help="DDIM steps of the inversion and the edit (50)")
    edit.add_argument("--seed", type=int, default=0, help="seed of the direction's sentences and the inversion (0)")
    edit.add_argument("--size", type=int, default=512, help="images are scaled and centre-cropped to size x size")
    edit.add_argument("--blip", help="BLIP folder in models/blip (photos; default: the workflow's)")
    edit.add_argument("--workflow", help="a UI-format workflow to run instead of the example")
    out = p.add_argument_group("the pairs")
    out.add_argument("--output", required=True, help="the pair folder (created; reruns add to it): e.g. "
                                                     "ComfyUI/output/pix2pix_zero_pairs/cat_to_dog, where the Train "
                                                     "Student node finds it")
    out.add_argument("--min-structure", type=float, default=0.0, help="keep a pair only if its edge maps "
                     "correlate at least this much (0 = off; 0.3-0.5 drops edits that redrew the scene)")
    out.add_argument("--min-change", type=float, default=0.0, help="keep a pair only if the mean pixel change is "
                     "at least this (0 = off; 0.01-0.03 drops edits that did nothing)")
    work = p.add_argument_group("workers")
    work.add_argument("--workers", type=int, help="Ray actors (default: one per GPU of the cluster, or 1)")
    work.add_argument("--address", help="join this Ray cluster (HEAD:6379) instead of starting a local Ray")
    work.add_argument("--ray", action="store_true", help="use a local Ray even for one worker")
    work.add_argument("--no-ray", action="store_true", help="one in-process worker, no Ray (the default without "
                                                            "--workers/--address)")
    work.add_argument("--gpus-per-worker", type=float, help="GPUs per actor (default 1 where there are GPUs)")
    work.add_argument("--cpus-per-worker", type=float, help="CPU cores per actor (default 1 with GPUs, else the "
                                                            "cores split between the workers)")
    work.add_argument("--threads", type=int, help="torch CPU threads per worker (default: its CPU cores)")
    work.add_argument("--max-worker-restarts", type=int, default=3, help="dead actors replaced per run (3)")
    work.add_argument("--max-attempts", type=int, default=3,
                      help="an item whose worker dies this many times is recorded as failed (3)")
    work.add_argument("--comfyui", help="the ComfyUI folder (default: $COMFYUI_PATH or the one this pack is in); "
                                        "on a cluster, the same path on every machine")
    work.add_argument("--base-directory", help="as ComfyUI's --base-directory: models/ under it")
    work.add_argument("--cpu", action="store_true", help="run on the CPU even where there is a GPU")
    return p.parse_args(argv)


def main(argv=None, on_pool=None, stream=sys.stdout):
    args = parse_args(argv)
    try:
        workflow = check_arguments(args)
        if not uses_ray(args):  # Ray workers find their own ComfyUI, on their machines
            try:
                comfy_host.find_comfyui(args.comfyui)
            except comfy_host.HostError as e:
                raise CommandError(str(e)) from None
        return run(args, workflow, on_pool=on_pool, stream=stream)
    except CommandError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
