"""The workers of collect_pairs.py and the loop that hands them work.

A `PairWorker` is one ComfyUI started in-process with this pack (the runner edit_image.py uses), holding the edit
workflow as an API prompt. `run(item)` edits one photo (or generates and edits one seed) and returns the pair as
PNG bytes with its scores; it never writes to the pair folder. Models and the edit direction stay in ComfyUI's
caches between items (one executor for the worker's life), so an item costs its caption, inversion and edit only.

Pools run workers: `LocalPool` one in this process (no Ray), `RayPool` one Ray actor per GPU (or per group of CPU
cores) on a local Ray or an existing cluster. `collect` hands items to idle workers, gives the item of a worker
that died to another (replacing the worker, within a budget), and reports every outcome to the caller, which
writes (core.pair_ledger). Nothing here imports Ray unless a RayPool is made.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import shutil
import socket
import sys
import tempfile
import time
import traceback

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if PACK_DIR not in sys.path:
    sys.path.insert(0, PACK_DIR)

# Nodes whose outputs are results for a user (files, previews): a collection writes its own pairs instead.
_OUTPUT_NODES = ("SaveImage", "PreviewImage", "PreviewAny", "SaveLatent", "P2PZ_SavePairs", "P2PZ_SaveDirection")


class WorkerSetupError(RuntimeError):
    """A worker cannot start (ComfyUI not found, a model missing on its machine); the message says which machine
    and what to do."""


class ItemError(RuntimeError):
    """One item failed (e.g. its photo is not an image, or the editor refused it); the run goes on."""


@dataclasses.dataclass
class WorkerConfig:
    """What every worker needs, picklable (it travels to Ray actors on other machines)."""

    workflow: dict  # UI-format workflow (example 1 for photos, example 2 for seeds, or the user's)
    settings: list  # (node type, widget, value) set on it, as edit_image.py does
    mode: str  # "photos" or "seeds"
    checkpoint: str
    direction: str | None = None  # a file in models/pix2pix_zero_directions instead of BuildDirection
    comfyui: str | None = None
    base_directory: str | None = None
    cpu: bool = False
    threads: int | None = None  # torch CPU threads (None: torch's default)


def _host():
    return socket.gethostname()


class PairWorker:
    """One in-process ComfyUI with the pack, editing items one at a time."""

    def __init__(self, config: WorkerConfig, rank: int = 0, life: int = 0):
        self.config, self.rank, self.life = config, rank, life
        self.items_done = 0
        if config.threads:
            os.environ["OMP_NUM_THREADS"] = str(config.threads)
        self.input_dir = tempfile.mkdtemp(prefix="p2pz-collect-input-")
        from scripts import comfy_host

        self.comfy_host = comfy_host
        try:
            comfyui = comfy_host.find_comfyui(config.comfyui or os.environ.get("COMFYUI_PATH"))
            accelerated = not config.cpu and self._has_accelerator()
            self.nodes = comfy_host.boot(comfyui, device="auto" if accelerated else "cpu",
                                         base_directory=config.base_directory, input_dir=self.input_dir,
                                         extra_model_paths=True)
            comfy_host.load_pack()
        except comfy_host.HostError as e:
            raise WorkerSetupError(f"{_host()}: {e}") from None
        import torch

        if config.threads:
            torch.set_num_threads(config.threads)
        self._check_models()
        self.prompt, self.roles = self._build_prompt()
        self.executor = comfy_host.new_executor()

    @staticmethod
    def _has_accelerator():
        import torch
        return torch.cuda.is_available() or (getattr(torch, "xpu", None) is not None and torch.xpu.is_available()) \
            or torch.backends.mps.is_available()

    def _check_models(self):
        import folder_paths

        if folder_paths.get_full_path("checkpoints", self.config.checkpoint) is None:
            raise WorkerSetupError(
                f"{_host()}: checkpoint {self.config.checkpoint!r} is not in ComfyUI's checkpoints folders "
                f"({', '.join(folder_paths.get_folder_paths('checkpoints'))}): put it there on this machine (every "
                f"machine of a cluster needs the same models under the same names)")
        if self.config.direction:
            directions = folder_paths.get_filename_list("pix2pix_zero_directions")
            if self.config.direction not in directions:
                raise WorkerSetupError(
                    f"{_host()}: direction {self.config.direction!r} is not in models/pix2pix_zero_directions "
                    f"({len(directions)} files there): copy it there on this machine")

    def _build_prompt(self):
        """The API prompt with the settings applied, output nodes removed, and the node ids of the item's input
        and of the two images a pair is made of."""
        from scripts.workflow_api import node_definitions_from_classes, set_widget, ui_to_api

        nodes = self.nodes
        defs = node_definitions_from_classes(nodes.NODE_CLASS_MAPPINGS)
        workflow = self.config.workflow
        try:
            for node_type, name, value in self.config.settings:
                workflow = set_widget(workflow, node_type, name, value, defs)
            prompt = ui_to_api(workflow, defs)
        except Exception as e:  # WorkflowError and friends: the message names the node and widget
            raise WorkerSetupError(f"the workflow cannot be used: {e}") from None

        def only(class_type):
            ids = [i for i, n in prompt.items() if n["class_type"] == class_type]
            if len(ids) != 1:
                raise WorkerSetupError(f"the workflow must have exactly one {class_type} node, not {len(ids)}")
            return ids[0]

        guided = only("P2PZ_GuidedEdit")
        decodes = {tuple(n["inputs"]["samples"]): i for i, n in prompt.items()
                   if n["class_type"] == "VAEDecode" and isinstance(n["inputs"].get("samples"), list)}
        edited = decodes.get((guided, 0))
        if edited is None:
            raise WorkerSetupError("the workflow must decode Guided Edit's edited_latent with a VAEDecode")
        if self.config.direction:  # a saved direction instead of building one
            build = only("P2PZ_BuildDirection")
            prompt[build] = {"class_type": "P2PZ_LoadDirection", "inputs": {"direction_name": self.config.direction}}
        roles = {"edited": edited}
        if self.config.mode == "photos":
            roles["load"] = only("LoadImage")
            encode = only("VAEEncode")
            roles["original"] = prompt[encode]["inputs"]["pixels"][0]  # the photo as the editor saw it (scaled)
        else:
            roles["noise"] = only("P2PZ_NoiseLatent")
            text = prompt[guided]["inputs"]["positive"][0]
            if prompt[text]["class_type"] != "CLIPTextEncode":
                raise WorkerSetupError("the generate-then-edit workflow must feed Guided Edit's positive from a "
                                       "CLIPTextEncode (the prompt each seed is generated from)")
            roles["text"] = text
            original = decodes.get((guided, 1))
            if original is None:  # decode the reconstruction (the generated image) ourselves
                original = "p2pz-collect-original"
                prompt[original] = {"class_type": "VAEDecode",
                                    "inputs": {"samples": [guided, 1], "vae": prompt[edited]["inputs"]["vae"]}}
            roles["original"] = original
        for node_id in [i for i, n in prompt.items() if n["class_type"] in _OUTPUT_NODES]:
            del prompt[node_id]
        if self.config.mode == "photos":
            from edit_image import check_blip  # the pack's full check of the BLIP folder, before any item
            try:
                check_blip(nodes, prompt)
            except Exception as e:
                raise WorkerSetupError(f"{_host()}: {e}") from None
        return prompt, roles

    def describe(self) -> dict:
        import comfy.model_management as mm
        return {"host": _host(), "pid": os.getpid(), "device": str(mm.get_torch_device()), "rank": self.rank,
                "life": self.life, "comfyui": self.comfy_host.comfyui_version()}

    def run(self, item: dict) -> dict:
        """Edit one item; returns {"key", "input_png", "edited_png", "size", "structure_score", "change_score",
        "seconds" (spent here), "host", "worker" (host:pid)}. Raises ItemError for a failure of this item alone."""
        import copy

        import torch

        data = self.comfy_host.pack_import("core.student_data")  # the pack as this worker's ComfyUI loaded it
        change_score, png_bytes, structure_score = data.change_score, data.png_bytes, data.structure_score

        started = time.monotonic()
        prompt = copy.deepcopy(self.prompt)
        photo = None
        if self.config.mode == "photos":
            photo = os.path.join(self.input_dir, f"{item['key']}{item['ext']}")
            with open(photo, "wb") as f:
                f.write(item["image_bytes"])
            prompt[self.roles["load"]]["inputs"]["image"] = os.path.basename(photo)
        else:
            prompt[self.roles["noise"]]["inputs"]["seed"] = int(item["seed"])
            prompt[self.roles["text"]]["inputs"]["text"] = item["prompt"]
        try:
            result = self.comfy_host.run_prompt(prompt, executor=self.executor,
                                                capture=[self.roles["original"], self.roles["edited"]])
        except self.comfy_host.PromptError as e:
            raise ItemError(_prompt_error_text(e)) from None
        finally:
            if photo is not None and os.path.exists(photo):
                os.remove(photo)
        original = self.comfy_host.node_output(result, self.roles["original"])
        edited = self.comfy_host.node_output(result, self.roles["edited"])
        if original.shape != edited.shape:
            raise ItemError(f"the editor's input {tuple(original.shape)} and output {tuple(edited.shape)} differ in "
                            f"size: give a --size that is a multiple of 8")
        a, b = original[0].movedim(-1, 0).float().cpu(), edited[0].movedim(-1, 0).float().cpu()
        with torch.inference_mode():
            structure, change = float(structure_score(a, b)[0]), float(change_score(a, b)[0])
        self.items_done += 1
        return {"key": item["key"], "input_png": png_bytes(a), "edited_png": png_bytes(b),
                "size": (int(a.shape[1]), int(a.shape[2])), "structure_score": structure, "change_score": change,
                "seconds": time.monotonic() - started, "host": _host(), "worker": f"{_host()}:{os.getpid()}"}

    def close(self):
        shutil.rmtree(self.input_dir, ignore_errors=True)


def _prompt_error_text(e) -> str:
    """ComfyUI's refusal or failure in one line: which node said what (its traceback stays out)."""
    if e.node_errors:
        return "ComfyUI rejected the workflow: " + "; ".join(
            f"node {k} ({v.get('class_type')}): " + ", ".join(x.get("details") or x.get("message", "")
                                                             for x in v.get("errors", []))
            for k, v in e.node_errors.items())
    lines = [line for line in str(e).splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines and lines[0].endswith(":") else (lines[0] if lines else repr(e))


def _reason(exc: BaseException) -> str:
    """One line for a failure: the exception's type and first line (a traceback goes to the worker's log)."""
    text = str(exc).strip().split("\n", 1)[0] or repr(exc)
    return text if isinstance(exc, (ItemError, WorkerSetupError)) else f"{type(exc).__name__}: {text}"


# ----------------------------------------------------------------------------------------------------------------
# Pools
# ----------------------------------------------------------------------------------------------------------------

class _Done:
    """A handle whose outcome is already known (LocalPool runs an item when it is submitted)."""

    def __init__(self, outcome):
        self.outcome = outcome


class LocalPool:
    """One PairWorker in this process: for one machine with one GPU (or the CPU), no Ray needed."""

    kind = "in-process"

    def __init__(self, config: WorkerConfig):
        self.config = config
        self.worker = None
        self.info = {}

    def start(self, on_status=None) -> list[int]:
        if on_status:
            on_status(0, "starting ComfyUI")
        self.worker = PairWorker(self.config)
        self.info = {0: self.worker.describe()}
        return [0]

    def submit(self, slot, item):
        try:
            return _Done(("ok", self.worker.run(item)))
        except ItemError as e:
            return _Done(("item_error", _reason(e)))
        except Exception as e:  # an unexpected failure of one item: recorded, the run goes on
            traceback.print_exc()
            return _Done(("item_error", _reason(e)))

    def wait(self, handles, timeout):
        return [(h, h.outcome) for h in handles]

    def replace(self, slot, reason):
        return False

    def shutdown(self):
        if self.worker is not None:
            self.worker.close()


class RayPool:
    """One Ray actor per worker slot, each a PairWorker. Without an address a local Ray is started (and stopped at
    the end); with one, the run joins that cluster. The pack's code travels to the actors as Ray's working_dir,
    so other machines need ComfyUI and the models, not the pack."""

    kind = "ray"

    def __init__(self, config: WorkerConfig, workers: int | None, address: str | None = None,
                 gpus_per_worker: float | None = None, cpus_per_worker: float | None = None, max_restarts: int = 3):
        try:
            import ray  # noqa: F401
        except ImportError:
            raise WorkerSetupError("Ray is not installed: pip install 'ray>=2.40' with ComfyUI's Python (or "
                                   "collect without --workers/--address: one in-process worker)") from None
        self.config, self.workers, self.address = config, workers, address
        self.gpus_per_worker, self.cpus_per_worker = gpus_per_worker, cpus_per_worker
        self.restarts_left = max_restarts
        self.actors, self.info, self.lives = {}, {}, {}
        self._started_ray = False

    def _init_ray(self):
        import ray

        runtime_env = {"working_dir": PACK_DIR,
                       "excludes": [".git", "tests", "bench", "world", "assets", "example_workflows",
                                    "*.safetensors", "*.ckpt", "__pycache__"],
                       "env_vars": {k: os.environ[k] for k in ("COMFYUI_PATH", "HF_HUB_OFFLINE")
                                    if k in os.environ}}
        try:
            if self.address:
                ray.init(address=self.address, runtime_env=runtime_env, log_to_driver=False)
            else:
                cpus = os.cpu_count() or 1
                ray.init(num_cpus=cpus, runtime_env=runtime_env, include_dashboard=False, log_to_driver=False)
                self._started_ray = True
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
            raise WorkerSetupError(f"cannot connect to {where}: {_reason(e)}. Start the head with `ray start "
                                   f"--head` and pass its address (host:6379), or leave --address out for a local "
                                   f"Ray") from None

    def _plan(self):
        import ray

        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        gpus_per = self.gpus_per_worker
        if gpus_per is None:
            gpus_per = 1 if gpus and not self.config.cpu else 0
        workers = self.workers or (max(1, int(gpus // gpus_per)) if gpus_per else 1)
        cpus_per = self.cpus_per_worker or (1 if gpus_per else max(1, cpus // workers))
        if gpus_per and workers * gpus_per > gpus:
            raise WorkerSetupError(f"{workers} workers x {gpus_per} GPU need {workers * gpus_per:g} GPUs, the "
                                   f"cluster has {gpus}: lower --workers, or pass --cpu")
        if workers * cpus_per > cpus:
            raise WorkerSetupError(f"{workers} workers x {cpus_per:g} CPU cores need {workers * cpus_per:g}, the "
                                   f"cluster has {cpus}: lower --workers or --cpus-per-worker")
        return workers, gpus_per, cpus_per

    def _new_actor(self, slot):
        import ray

        life = self.lives.get(slot, -1) + 1
        self.lives[slot] = life
        config = dataclasses.replace(self.config, threads=self.config.threads or max(1, int(self._cpus_per)))
        cls = ray.remote(PairWorker).options(num_gpus=self._gpus_per, num_cpus=self._cpus_per, max_restarts=0,
                                             max_task_retries=0)
        actor = cls.remote(config, slot, life)
        self.actors[slot] = actor
        return actor

    def _ready(self, slots, on_status):
        """Wait for the actors' ComfyUI to start; returns {slot: error text} for those that could not."""
        import ray

        refs = {self.actors[s].describe.remote(): s for s in slots}
        errors = {}
        for ref, slot in refs.items():
            try:
                self.info[slot] = ray.get(ref)
                if on_status:
                    on_status(slot, "ready on " + self.info[slot]["host"])
            except ray.exceptions.RayActorError as e:
                errors[slot] = _actor_error(e)
                self.actors.pop(slot, None)
        return errors

    def start(self, on_status=None) -> list[int]:
        self._init_ray()
        workers, self._gpus_per, self._cpus_per = self._plan()
        for slot in range(workers):
            if on_status:
                on_status(slot, "starting ComfyUI")
            self._new_actor(slot)
        errors = self._ready(range(workers), on_status)
        if len(errors) == workers:
            reasons = sorted(set(errors.values()))
            raise WorkerSetupError("no worker could start: " + "; ".join(reasons))
        for slot, reason in errors.items():
            if on_status:
                on_status(slot, f"could not start: {reason}")
        return sorted(self.actors)

    def submit(self, slot, item):
        return self.actors[slot].run.remote(item)

    def wait(self, handles, timeout):
        import ray

        ready, _ = ray.wait(list(handles), num_returns=1, timeout=timeout)
        outcomes = []
        for ref in ready:
            try:
                outcomes.append((ref, ("ok", ray.get(ref))))
            except ray.exceptions.RayActorError as e:
                outcomes.append((ref, ("died", _actor_error(e))))
            except ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None)
                outcomes.append((ref, ("item_error", _reason(cause) if cause is not None else str(e).split("\n")[0])))
        return outcomes

    def replace(self, slot, reason):
        """Start a new actor in a dead one's slot, within the restart budget; False when spent or it fails."""
        import ray

        dead = self.actors.pop(slot, None)
        if dead is not None:
            try:
                ray.kill(dead, no_restart=True)  # already gone: this only releases Ray's handle
            except Exception:
                pass
        if self.restarts_left <= 0:
            return False
        self.restarts_left -= 1
        self._new_actor(slot)
        return not self._ready([slot], None)

    def shutdown(self):
        import ray

        for actor in self.actors.values():
            try:
                ray.kill(actor)
            except Exception:
                pass
        self.actors.clear()
        if self._started_ray:
            ray.shutdown()


def _actor_error(e) -> str:
    """The reason an actor died or could not start: its constructor's error when there was one."""
    cause = getattr(e, "cause", None) or getattr(getattr(e, "error", None), "cause", None)
    if cause is not None and not isinstance(cause, str):
        return _reason(cause)
    text = str(e)
    for line in text.splitlines():  # Ray puts the constructor's exception line in the message
        if "WorkerSetupError" in line or "HostError" in line:
            return line.split(":", 1)[-1].strip()
    return text.strip().split("\n", 1)[0]


# ----------------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------------

class NoWorkersLeft(RuntimeError):
    pass


def collect(items, pool, slots, on_result, on_failure, on_status=None, on_tick=None, max_attempts=3,
            tick_seconds=1.0, prepare=None):
    """Run every item once on the pool's workers. An item whose worker dies goes back to the queue (another
    worker takes it); after `max_attempts` deaths with it, it is recorded as failed (it may be what kills them,
    e.g. out of memory). Raises NoWorkersLeft when every worker is gone and items remain (they stay not done).
    `prepare(item)`, if given, makes what is sent to a worker (e.g. reads the photo) when the item is handed out,
    so only the items in flight are held in memory."""
    queue = collections.deque(items)
    deaths = collections.Counter()
    idle = collections.deque(slots)
    in_flight = {}
    last_reason = None
    while queue or in_flight:
        while idle and queue:
            slot, item = idle.popleft(), queue.popleft()
            if on_status:
                on_status(slot, f"on {item['label']}")
            in_flight[pool.submit(slot, prepare(item) if prepare else item)] = (slot, item)
        if not in_flight:
            raise NoWorkersLeft(f"every worker is gone ({last_reason}); {len(queue)} items not done: rerun to "
                                f"do them")
        for handle, (kind, value) in pool.wait(list(in_flight), timeout=tick_seconds):
            slot, item = in_flight.pop(handle)
            if kind in ("ok", "item_error"):
                (on_result if kind == "ok" else on_failure)(item, value)
                idle.append(slot)
                if on_status:
                    on_status(slot, "idle")
            else:  # the worker died with this item in flight: nothing of it was written
                last_reason = value
                deaths[item["key"]] += 1
                if deaths[item["key"]] >= max_attempts:
                    on_failure(item, f"its worker died {deaths[item['key']]} times while on it (last: {value})")
                else:
                    queue.appendleft(item)
                if on_status:
                    on_status(slot, f"died ({value}); restarting")
                if pool.replace(slot, value):
                    idle.append(slot)
                    if on_status:
                        on_status(slot, "restarted")
                elif on_status:
                    on_status(slot, "dead")
        if on_tick:
            on_tick()
