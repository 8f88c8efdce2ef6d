"""Test configuration for the pack.

- CPU tests import the pack's modules directly (``import core``): the repo root is put on sys.path here. The pack's
  own ``__init__.py`` imports ComfyUI and is never imported by collection: tests/ has no __init__.py, and the repo
  root is collected as a plain directory, not a Package (see _PackRootIsNotAPackage).
- Tests marked ``host`` need a real ComfyUI checkout named by the environment variable COMFYUI_PATH; without it
  they are skipped. A test that uses one of the host fixtures below is marked ``host`` automatically.
- Host fixtures (all session-scoped; they share one in-process ComfyUI):
    comfy               -> the pack's scripts/comfy_host.py module, ComfyUI booted on the CPU (comfy.run_prompt, ...)
    pack_nodes          -> this pack's NODE_CLASS_MAPPINGS, loaded through ComfyUI's own load_custom_node
    tiny_sd15_objects   -> (MODEL, CLIP, VAE) tiny float32 SD 1.5-shaped objects, seed 0 (shared: clone before
                           patching, never mutate)
    tiny_checkpoint_name-> file name of a tiny SD 1.5 checkpoint that CheckpointLoaderSimple can load; cached in
                           $P2PZ_TEST_CACHE or <system temp>/p2pz-test-cache
"""

import os
import sys
import tempfile

# Before anything imports torch: OpenMP worker threads that spin while waiting make two torch processes on a 2-core
# machine (two test runs, a test run and a benchmark) slow each other down 5-20x; measured on test_host_harness.py:
# 256 s spinning vs 25 s passive next to a busy process, 15 s vs 19 s on an idle machine. Set OMP_WAIT_POLICY
# yourself (e.g. ACTIVE for timings on an idle machine) to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Bitwise repeatability, which several host tests assert (the same graph twice, a run after an interrupted one): Intel
# MKL's default mode (conditional numerical reproducibility off) let the gradient pass's products differ in the last
# bits between identical runs in one process on an AVX-512 CPU (seen on 2026-12-03: 2 of 170 host tests, on ComfyUI
# 0.3.64 and 0.8.0 alike; the tiny random models amplify 1e-8 to 0.1 over 4 steps). MKL_CBWR=AUTO (reproducibility on,
# MKL's fastest code path for the CPU) already removed it there; STRICT also makes results independent of memory
# alignment. MKL reads the variable once, when it loads. docs/nodes.md: Repeatability.
# MKL_CBWR= (set and empty) runs with MKL's default instead, as on a user's machine: the suite's tolerances must hold
# both ways (CONTRIBUTING.md, "Tolerances").
if os.environ.get("MKL_CBWR") == "":
    del os.environ["MKL_CBWR"]
else:
    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import pytest  # noqa: E402
from fixtures import tiny_models

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
for _p in (TESTS_DIR, REPO_ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)

HOST_MARKER_HELP = "host: needs a real ComfyUI: set COMFYUI_PATH"
HOST_SKIP_REASON = "COMFYUI_PATH is not set: host tests need a ComfyUI checkout"
HOST_FIXTURES = ("comfy", "pack_nodes", "tiny_sd15_objects", "tiny_checkpoint_name")

_host = {"ids": set(), "ran": set(), "skipped": set(), "failed": set(), "xfailed": set()}


def _comfyui_path():
    return os.environ.get("COMFYUI_PATH") or None


class _PackRootIsNotAPackage:
    """pytest >= 8 builds collector nodes for every directory above the test files, and a directory with an
    __init__.py becomes a ``Package`` whose setup imports that __init__.py (as module "main" here). The pack root's
    __init__.py imports ComfyUI, so collect the repo root as a plain ``Dir`` instead. This has to be a plugin
    registered from pytest_configure: hooks defined in this conftest only apply to paths under tests/."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path, parent):
        if os.path.realpath(str(path)) == os.path.realpath(REPO_ROOT):
            return pytest.Dir.from_parent(parent, path=path)
        return None


def pytest_configure(config):
    config.addinivalue_line("markers", HOST_MARKER_HELP)
    if hasattr(pytest, "Dir") and not config.pluginmanager.has_plugin("p2pz-pack-root-dir"):
        config.pluginmanager.register(_PackRootIsNotAPackage(), "p2pz-pack-root-dir")


def pytest_collection_modifyitems(config, items):
    have_comfy = _comfyui_path() is not None
    skip = pytest.mark.skip(reason=HOST_SKIP_REASON)
    for item in items:
        if item.get_closest_marker("host") is None and any(f in getattr(item, "fixturenames", ()) for f in HOST_FIXTURES):
            item.add_marker(pytest.mark.host)
        if item.get_closest_marker("host") is not None:
            _host["ids"].add(item.nodeid)
            if not have_comfy:
                item.add_marker(skip)


def pytest_runtest_logreport(report):
    if report.nodeid not in _host["ids"]:
        return
    if hasattr(report, "wasxfail"):  # ran and failed as a known, marked failure: it ran
        _host["ran"].add(report.nodeid)
        _host["xfailed"].add(report.nodeid)
    elif report.skipped:
        _host["skipped"].add(report.nodeid)
    elif report.when == "call":
        _host["ran"].add(report.nodeid)
        if report.failed:
            _host["failed"].add(report.nodeid)
    elif report.failed:  # setup/teardown error: it ran, and failed
        _host["ran"].add(report.nodeid)
        _host["failed"].add(report.nodeid)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _host["ids"] or getattr(config.option, "collectonly", False):
        return
    skipped = _host["skipped"]
    ran = _host["ran"] - skipped
    failed = _host["failed"] & ran
    known = f", {len(_host['xfailed'] & ran)} of them known failures (xfail)" if _host["xfailed"] & ran else ""
    line = f"host tests: {len(ran)} ran{known}, {len(skipped)} skipped"
    if failed:
        line = f"host tests: {len(ran)} ran ({len(failed)} failed{known}), {len(skipped)} skipped"
    if skipped and _comfyui_path() is None:
        line += " (COMFYUI_PATH is not set)"
    terminalreporter.write_line(line)


def _require_comfy():
    if _comfyui_path() is None:
        pytest.skip(HOST_SKIP_REASON)
    from scripts import comfy_host
    return comfy_host


@pytest.fixture(scope="session")
def comfy():
    """The pack's comfy_host module with ComfyUI booted in-process on the CPU (the pack not loaded yet)."""
    host = _require_comfy()
    host.boot(device="cpu")
    return host


@pytest.fixture(scope="session")
def pack_nodes(comfy):
    """This pack's NODE_CLASS_MAPPINGS, loaded by ComfyUI's nodes.load_custom_node (fails with the import error)."""
    return comfy.load_pack()


@pytest.fixture(scope="session")
def tiny_sd15_objects(comfy):
    """(model_patcher, clip, vae): tiny SD 1.5-shaped float32 objects from seed 0. Shared by the whole session."""
    return tiny_models.tiny_sd15(seed=0)


def host_cache_dir():
    """Where built test models are cached: $P2PZ_TEST_CACHE, else <system temp>/p2pz-test-cache; made if missing (a
    test run alone on a fresh cache, such as the reduced world's, writes its build log there before any model)."""
    path = os.environ.get("P2PZ_TEST_CACHE") or os.path.join(tempfile.gettempdir(), "p2pz-test-cache")
    os.makedirs(path, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint_name(comfy):
    """File name of the tiny SD 1.5 checkpoint, registered in ComfyUI's "checkpoints" folders."""
    cache_dir = host_cache_dir()
    path = tiny_models.tiny_sd15_checkpoint(cache_dir)
    tiny_models.use_models_dir(cache_dir)
    return os.path.basename(path)
