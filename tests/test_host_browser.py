"""The pack as a newcomer meets it: a real ComfyUI server (scripts.comfy_host.comfy_server) with this pack, its web
frontend in headless Chromium (Debian's `chromium`, driven by the `playwright` package; `playwright install` is never
used), tiny models under the example's own file names.

- every example_workflows/*.json is opened through the frontend's drag-and-drop path (`app.handleFile`): no alert,
  no toast or dialog, every node of a registered type, every node's title bar on screen in a 1280 x 720 window, at a
  scale where the frontend draws text (not below its low-quality threshold) and, with the minimap on as by default,
  no node under the minimap;
- the template browser lists every one of the pack's templates, each card's thumbnail loads, and each card opens its
  workflow without complaint;
- the photo example, shrunk in the page (64 px, 4 steps, 8 sentences), is queued with the Run path
  (`app.queuePrompt`) and finishes with `execution_success`, its image in /history.

Screenshots go to <test cache>/screenshots/<ComfyUI version>/ (see conftest.host_cache_dir) for people to look at.
Skips, saying why, where /usr/bin/chromium or the playwright package is missing.
"""
import glob
import json
import os
import shutil
import urllib.request

import pytest

from conftest import host_cache_dir
from official_data import copy_photo
from scripts.comfy_host import PACK_NAME, comfy_server

pytestmark = pytest.mark.host

CHROMIUM = "/usr/bin/chromium"
# No GPU, no sandbox (root in a container), and nothing that reaches for the network on its own.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
VIEWPORT = {"width": 1280, "height": 720}
EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "example_workflows")
WORKFLOWS = sorted(glob.glob(os.path.join(EXAMPLES_DIR, "*.json")))
NAMES = [os.path.basename(p).removesuffix(".json") for p in WORKFLOWS]
PHOTO_EXAMPLE = "pix2pix_zero_1_edit_a_photo"
SD15_NAME = "v1-5-pruned-emaonly-fp16.safetensors"
BLIP_NAME = "blip-image-captioning-base"
# Anything of these on screen after opening a workflow is a complaint the user has to read: PrimeVue dialogs
# (missing nodes, missing models, errors), toasts, and the frontend's older comfy-modal error box.
COMPLAINTS = "[role=dialog], [role=alertdialog], .p-dialog, .p-toast-message, .comfy-modal"


def _missing_browser():
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: pip install playwright (never `playwright install`)"
    return None


@pytest.fixture(scope="module", autouse=True)
def browser_available():
    """Skips the module, saying why, before anything is built or started (autouse: set up first)."""
    reason = _missing_browser()
    if reason:
        print(f"\nSKIP browser test: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def base_dir(comfy, tiny_checkpoint_name, tmp_path_factory):
    """The models the photo example names, as tiny stand-ins: the tiny checkpoint under the SD 1.5 file name (so the
    frontend's missing-models check passes), the tiny BLIP as blip-image-captioning-base, empty stand-ins for the
    MMDiT examples' files; the cat photo as the example's input image."""
    import folder_paths

    from tiny_blip import save_tiny_blip

    base = tmp_path_factory.mktemp("comfy-browser")
    (base / "models" / "checkpoints").mkdir(parents=True)
    os.symlink(folder_paths.get_full_path("checkpoints", tiny_checkpoint_name),
               base / "models" / "checkpoints" / SD15_NAME)
    save_tiny_blip(str(base / "models" / "blip" / BLIP_NAME))
    # The SD 3.5 / Flux examples' files (never run here): empty stand-ins under their names and folders, so the
    # frontend's missing-models check passes for them too.
    for path in WORKFLOWS:
        with open(path, encoding="utf-8") as f:
            for node in json.load(f)["nodes"]:
                for m in (node.get("properties") or {}).get("models") or []:
                    target = base / "models" / m["directory"] / m["name"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if not target.exists():
                        target.write_bytes(b"")
    (base / "input").mkdir()
    copy_photo("cat_1.png", str(base / "input"))
    shutil.copy(base / "input" / "cat_1.png", base / "input" / "example.png")
    return base


@pytest.fixture(scope="module")
def server(base_dir):
    with comfy_server(base_dir) as s:
        # A fresh user gets the "Get Started" template dialog over an empty canvas on first start; mark that done so
        # any dialog seen later is one our workflows caused.
        request = urllib.request.Request(f"{s.url}/settings/Comfy.TutorialCompleted", data=b"true", method="POST")
        urllib.request.urlopen(request, timeout=10).close()
        yield s


@pytest.fixture(scope="module")
def screenshots(server):
    version = server.get("/system_stats")["system"]["comfyui_version"]
    folder = os.path.join(host_cache_dir(), "screenshots", version)
    os.makedirs(folder, exist_ok=True)
    print(f"\nscreenshots: {folder}")
    return folder


class Browser:
    """One page of the frontend, with every alert, page error and HTTP response it met."""

    def __init__(self, page):
        self.page = page
        self.alerts, self.errors, self.responses = [], [], {}
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda e: self.errors.append(f"{e}\n{(e.stack or '')[:1500]}"))
        page.on("response", lambda r: self.responses.__setitem__(r.url, r.status))

    def _dialog(self, dialog):
        self.alerts.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def complaints(self):
        """The text of every visible dialog, toast or modal."""
        return self.page.evaluate("""(selector) => [...document.querySelectorAll(selector)]
            .filter(e => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0 })
            .map(e => e.innerText.trim().slice(0, 300))""", COMPLAINTS)

    def close_complaints(self):
        self.page.keyboard.press("Escape")
        self.page.evaluate("() => document.querySelectorAll('.p-toast-message-close-button, .p-toast-icon-close')"
                           ".forEach(b => b.click())")


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = chromium.new_page(viewport=VIEWPORT)
            # Frontend 1.32 (ComfyUI 0.3.75) opens with a one-time "Introducing Nodes 2.0" banner above the tabs,
            # which pushes the canvas down by its height until the user closes it; it remembers that in this
            # localStorage key (TryVueNodeBanner). Start as a user who closed it once, as with the tutorial above.
            page.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true')")
            b = Browser(page)
            page.goto(server.url)
            # The app is up when the node definitions from /object_info are registered with LiteGraph.
            page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph && "
                                   "'P2PZ_GuidedEdit' in LiteGraph.registered_node_types", timeout=120_000)
            page.wait_for_timeout(1000)  # let start-up toasts and dialogs, if any, appear
            # The minimap floats over the canvas's bottom-right corner and is shown by default (1.27: always; 1.35: from
            # 1024 px wide). The examples are framed clear of it, so it stays on, as a newcomer has it.
            assert page.evaluate("() => app.extensionManager.setting.get('Comfy.Minimap.Visible')"), \
                "the minimap is not shown by default: the check that no node is under it would prove nothing"
            assert not b.alerts, b.alerts
            # Frontend 1.27.10 throws once while it registers its own settings on every fresh start ("Cannot read
            # properties of undefined (reading 'id')" in Comfy.Canvas.NavigationMode's onChange), with or without
            # this pack; only errors from here on, while our workflows are opened and run, are held against us.
            if b.errors:
                print(f"\nfrontend start-up errors (before any workflow was opened): {b.errors}")
                b.errors.clear()
            assert b.complaints() == [], f"the frontend complains before anything was opened: {b.complaints()}"
            yield b
        finally:
            chromium.close()


# LiteGraph draws nodes as boxes without text below this scale: LGraphCanvas.updateLowQualityThreshold sets
# _lowQualityZoomThreshold = min_font_size_for_lod / (LiteGraph.NODE_TEXT_SIZE * sqrt(devicePixelRatio)), with the
# setting LiteGraph.Canvas.MinFontSizeForLOD defaulting to 8 and NODE_TEXT_SIZE 14 in frontends 1.27.10 and 1.35.9
# (comfyui_frontend_package's assets/index-*.js and GraphView-*.js). The test reads it from the page; this is the
# fallback where a frontend does not expose it.
LOW_QUALITY_THRESHOLD = 8 / 14


def _view_report(page):
    """The canvas's scale, the frontend's low-quality threshold (None where not exposed), and the minimap's rectangle
    on screen (None where it is not shown)."""
    return page.evaluate("""() => {
        const c = app.canvas, t = c._lowQualityZoomThreshold;
        const minimap = [...document.querySelectorAll('.minimap-main-container, .litegraph-minimap')]
            .map(e => e.getBoundingClientRect()).find(r => r.width > 0 && r.height > 0);
        return {scale: c.ds.scale, threshold: typeof t === 'number' && t > 0 ? t : null,
                low_quality: c.low_quality ?? null,
                minimap: minimap ? [minimap.left, minimap.top, minimap.right, minimap.bottom] : null};
    }""")


def _graph_report(page):
    """Per node: type, registered or not, load errors, and where its title bar is on screen."""
    return page.evaluate("""() => {
        const canvas = app.canvas.canvas, r = canvas.getBoundingClientRect(), ds = app.canvas.ds;
        const k = r.width / canvas.width;  // canvas pixels -> CSS pixels
        const title = LiteGraph.NODE_TITLE_HEIGHT;
        return (app.graph.nodes ?? app.graph._nodes).map(n => {
            const x0 = r.left + (n.pos[0] + ds.offset[0]) * ds.scale * k;
            const y0 = r.top + (n.pos[1] - title + ds.offset[1]) * ds.scale * k;
            const x1 = r.left + (n.pos[0] + n.size[0] + ds.offset[0]) * ds.scale * k;
            const y1 = r.top + (n.pos[1] + n.size[1] + ds.offset[1]) * ds.scale * k;
            // What the user sees at the middle of the title bar: the canvas, or some panel over it.
            const hit = document.elementFromPoint((x0 + x1) / 2, y0 + title * ds.scale * k / 2);
            return {id: n.id, type: n.type, title: n.title, registered: n.type in LiteGraph.registered_node_types,
                    has_errors: !!n.has_errors, rect: [x0, y0, x1, y1].map(Math.round),
                    inside: x0 >= r.left && y0 >= r.top && x1 <= r.right && y1 <= r.bottom,
                    title_visible: hit === canvas,
                    covered_by: hit && hit !== canvas ? `${hit.tagName}.${String(hit.className).slice(0, 60)}` : null};
        });
    }""")


def _open_file(browser, path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    before = len(browser.alerts)
    browser.page.evaluate("async ([text, name]) => await app.handleFile(new File([text], name, "
                          "{type: 'application/json'}))", [text, os.path.basename(path)])
    browser.page.wait_for_timeout(800)  # dialogs and toasts are shown asynchronously after the load
    return browser.alerts[before:]


def _check_open_workflow(browser, path, where):
    with open(path, encoding="utf-8") as f:
        expected = json.load(f)
    complaints = browser.complaints()
    browser.close_complaints()
    assert complaints == [], f"{where}: the frontend shows {complaints}"
    nodes = _graph_report(browser.page)
    assert sorted(n["type"] for n in nodes) == sorted(n["type"] for n in expected["nodes"]), f"{where}: not loaded"
    bad = [n for n in nodes if not n["registered"] or n["has_errors"]]
    assert not bad, f"{where}: nodes of unregistered types or with load errors: {bad}"
    hidden = [f"{n['title']} at {n['rect']}" + (f" under {n['covered_by']}" if n["covered_by"] else "")
              for n in nodes if not (n["inside"] and n["title_visible"])]
    if hidden:
        browser.page.screenshot(path=os.path.join(host_cache_dir(), "screenshots", "failed_view.png"))
    assert not hidden, f"{where}: nodes not (fully) on screen in a {VIEWPORT} window: {hidden}"
    view = _view_report(browser.page)
    threshold = view["threshold"] or LOW_QUALITY_THRESHOLD
    assert view["scale"] >= threshold and not view["low_quality"], \
        f"{where}: opens at scale {view['scale']}, below {threshold:.3f}, where nodes are drawn without text"
    assert view["minimap"], f"{where}: the minimap is not shown"
    m0, m1, m2, m3 = view["minimap"]
    under = [f"{n['title']} at {n['rect']}" for n in nodes
             if n["rect"][0] < m2 and n["rect"][2] > m0 and n["rect"][1] < m3 and n["rect"][3] > m1]
    if under:
        browser.page.screenshot(path=os.path.join(host_cache_dir(), "screenshots", "failed_view.png"))
    assert not under, f"{where}: nodes under the minimap at {[round(v) for v in view['minimap']]}: {under}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=NAMES)
def test_example_opens_cleanly_by_drag_and_drop(browser, screenshots, path):
    alerts = _open_file(browser, path)
    assert alerts == [], f"opening {os.path.basename(path)} raised {alerts}"
    _check_open_workflow(browser, path, os.path.basename(path))
    browser.page.screenshot(path=os.path.join(screenshots, "open_" + os.path.basename(path)[:-5] + ".png"))


def _open_template_browser(page):
    page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    # Both frontends list custom-node packs by folder name in the dialog's navigation ("Custom Nodes" in 1.27,
    # "Extensions" in 1.35); pick ours.
    dialog = page.locator("[role=dialog]").last
    dialog.wait_for(state="visible", timeout=30_000)
    dialog.get_by_text(PACK_NAME, exact=True).first.click(timeout=30_000)
    return dialog


def test_template_browser_shows_every_example_with_its_thumbnail(browser, server, screenshots):
    page = browser.page
    listed = server.get("/workflow_templates").get(PACK_NAME)
    assert sorted(listed or []) == NAMES, f"/workflow_templates lists {listed}"
    dialog = _open_template_browser(page)
    for name in NAMES:
        # Cards show the file name as their title; the frontend fetches the thumbnail into a blob: URL once the card
        # scrolls into view, so check the HTTP response and the decoded image of the card.
        title = dialog.get_by_text(name, exact=True).first
        title.scroll_into_view_if_needed(timeout=30_000)
        image = title.locator("xpath=ancestor::*[.//img][1]//img").first
        page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=image.element_handle(),
                               timeout=30_000)
        url = f"/api/workflow_templates/{PACK_NAME}/{name}.jpg"
        statuses = [s for u, s in browser.responses.items() if u.endswith(url)]
        assert statuses == [200], f"thumbnail of {name}: responses {statuses} for {url}"
    page.screenshot(path=os.path.join(screenshots, "template_browser.png"))

    # Each card opens its workflow (and closes the browser) as cleanly as drag and drop does. The first card is
    # clicked in the browser still open from above (1.35's browser does not close on Escape).
    for i, (name, path) in enumerate(zip(NAMES, WORKFLOWS)):
        before = len(browser.alerts)
        if i > 0:
            dialog = _open_template_browser(page)
        dialog.get_by_text(name, exact=True).first.click(timeout=30_000)
        page.wait_for_function("() => !document.querySelector('[role=dialog]')", timeout=30_000)
        page.wait_for_function("(n) => (app.graph.nodes ?? app.graph._nodes).length === n",
                               arg=len(json.load(open(path, encoding="utf-8"))["nodes"]), timeout=30_000)
        page.wait_for_timeout(800)
        assert browser.alerts[before:] == [], f"template {name} raised {browser.alerts[before:]}"
        _check_open_workflow(browser, path, f"template card {name}")
    page.screenshot(path=os.path.join(screenshots, "template_opened_last.png"))


def test_photo_example_runs_from_the_frontend(browser, server, screenshots):
    """The photo example as the user would run it on a small machine: widgets changed in the page, queued with the
    Run button's code path, the edited image back."""
    page = browser.page
    path = os.path.join(EXAMPLES_DIR, PHOTO_EXAMPLE + ".json")
    assert _open_file(browser, path) == []
    _check_open_workflow(browser, path, PHOTO_EXAMPLE)
    shrink = [["ImageScale", "width", 64], ["ImageScale", "height", 64], ["P2PZ_InvertLatent", "steps", 4],
              ["P2PZ_GuidedEdit", "steps", 4], ["P2PZ_BuildDirection", "count", 8]]
    page.evaluate("""(shrink) => {
        for (const [type, name, value] of shrink) {
            const nodes = (app.graph.nodes ?? app.graph._nodes).filter(n => n.type === type);
            if (!nodes.length) throw new Error(`no ${type} node`);
            for (const node of nodes) {
                const widget = node.widgets.find(w => w.name === name);
                if (!widget) throw new Error(`${type} has no widget ${name}`);
                widget.value = value;
            }
        }
    }""", shrink)
    # Listen before queueing: the tiny models may finish within the same second. (Stored on window: Playwright's
    # evaluate waits for a returned promise.)
    page.evaluate("""() => { window.__p2pzRun = new Promise(resolve => {
        app.api.addEventListener('execution_success', e => resolve({ok: true, detail: e.detail}));
        app.api.addEventListener('execution_error', e => resolve({ok: false, detail: e.detail}));
        setTimeout(() => resolve({ok: false, detail: 'no execution_success within 300 s'}), 300000);
    }) }""")
    page.evaluate("async () => { await app.queuePrompt(0, 1) }")
    result = page.evaluate("() => window.__p2pzRun")
    assert result["ok"], f"the run failed: {json.dumps(result['detail'])[:3000]}"
    prompt_id = result["detail"]["prompt_id"]
    entry = server.wait_history(prompt_id, timeout=120)
    prompt = entry["prompt"][2]
    assert {prompt[i]["class_type"]: prompt[i]["inputs"].get("steps") for i in prompt
            if prompt[i]["class_type"].startswith("P2PZ_") and "steps" in prompt[i]["inputs"]} == {
        "P2PZ_InvertLatent": 4, "P2PZ_GuidedEdit": 4}, "the page's widget changes did not reach the prompt"
    saved = [img for out in entry["outputs"].values() for img in out.get("images", []) if img["type"] == "output"]
    assert saved and server.view(saved[0])[:8] == b"\x89PNG\r\n\x1a\n", entry["outputs"]
    page.wait_for_timeout(1000)  # the Save Image node shows the result
    assert browser.complaints() == [], browser.complaints()
    page.screenshot(path=os.path.join(screenshots, "photo_example_after_run.png"))


def test_no_page_errors(browser):
    """Runs last in this module: no uncaught exception in the page while the examples were opened and run."""
    assert browser.errors == [], browser.errors
