"""The pack as a newcomer meets it: a real ComfyUI server (scripts.comfy_host.comfy_server) with this pack, its web
frontend in headless Chromium (Debian's `chromium`, driven by the `playwright` package; `playwright install` is never
used), tiny models under the example's own file names.

- every example_workflows/*.json is opened through the frontend's drag-and-drop path (`app.handleFile`): no alert,
  no toast or dialog, every node of a registered type, every node's title bar on screen in a 1280 x 720 window, at a
  scale where the frontend draws text (not below its low-quality threshold) and, with the minimap on as by default,
  no node under the minimap;
- the template browser lists every one of the pack's templates, each card's thumbnail loads, and each card opens its
  workflow without complaint;
- in both renderers (classic, and "Modern Node Design (Nodes 2.0)" where the frontend offers it, 1.32+): every
  example opens without complaint, and in the classic renderer no two nodes overlap (LiteGraph widens nodes to their
  titles); in Nodes 2.0 the DOM boxes ([data-node-id]) must be framed (inside the window, headers visible, clear of
  the minimap, no two overlapping);
- the photo example opens on the pack's photo (copied into the input folder when the pack loads), is shrunk in the
  page (64 px, 4 steps, 8 sentences), queued with the Run path (`app.queuePrompt`) in both renderers and finishes
  with `execution_success`; its saved image is the edit of that photo (the same prompt replayed on a copy of the
  photo gives the same pixels, on another photo different ones); in Nodes 2.0, where nodes grow to show their images,
  the Save Image and Reconstruction previews must stay inside their nodes and no node then overlap another.

Screenshots go to <test cache>/screenshots/<ComfyUI version>/ (see conftest.host_cache_dir) for people to look at.
Skips, saying why, where /usr/bin/chromium or the playwright package is missing.
"""
import glob
import json
import os
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
PACK_PHOTO = "pix2pix_zero_cat.jpg"  # what the pack copies into the input folder (nodes/bundled.py)
PACK_PHOTO_SOURCE = os.path.join(os.path.dirname(EXAMPLES_DIR), "assets", "cat.jpg")
OTHER_PHOTO = "dog_1.png"
SD15_NAME = "v1-5-pruned-emaonly-fp16.safetensors"
BLIP_NAME = "blip-image-captioning-base"
# Anything of these on screen after opening a workflow is a complaint the user has to read: PrimeVue dialogs
# (missing nodes, missing models, errors), toasts, and the frontend's older comfy-modal error box.
NODES_2_OFFER = "Prefer the legacy design?"  # frontend 1.32's vueNodesMigration.message
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
    # The input folder starts as a user's might: no pix2pix_zero_cat.jpg (the pack puts it there when it loads), and
    # another photo for the control run that shows the edit depends on which photo it reads.
    (base / "input").mkdir()
    copy_photo(OTHER_PHOTO, str(base / "input"))
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
        """The text of every visible dialog, toast or modal, but the frontend's own offer to switch back that frontend
        1.32 (ComfyUI 0.3.75) shows once the renderer is switched to Nodes 2.0 (its "vue-nodes-migration" toast,
        NODES_2_OFFER): standard UI after the user's own switch, not a complaint about a workflow."""
        texts = self.page.evaluate("""(selector) => [...document.querySelectorAll(selector)]
            .filter(e => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0 })
            .map(e => e.innerText.trim().slice(0, 300))""", COMPLAINTS)
        return [t for t in texts if not t.startswith(NODES_2_OFFER)]

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
    """Per node: type, registered or not, load errors, its size and where it is on screen (title bar included)."""
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
                    size: [n.size[0], n.size[1]],
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


NODES_2_FROM = (1, 32)  # "Modern Node Design (Nodes 2.0)" is offered from frontend 1.32 (1.27 has a hidden experiment)
RENDERERS = ["classic", "nodes2"]
# Frontend 1.35 opens a workflow without extra.workflowRendererVersion "Vue" in Nodes 2.0 through
# ensureCorrectLayoutScale (setting Comfy.VueNodes.AutoScaleLayout, on by default): positions and sizes x 1.2
# (heights + the title), then restores the file's extra.ds, so the layout shows 1.2 x larger than in the classic
# renderer, and Vue nodes grow to their content (Save Image and Reconstruction grow again to show their images after
# a run). scripts/build_example_workflows.py lays the examples out for both (nodes2_rects, framed_view).


def _frontend_version(page):
    text = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ || ''")
    return tuple(int(p) for p in text.split(".")[:2]) if text else (0, 0)


def _use_renderer(browser, renderer):
    """Switch the setting a user switches (Comfy.VueNodes.Enabled); skip Nodes 2.0 where the frontend lacks it."""
    page = browser.page
    if renderer == "nodes2" and _frontend_version(page) < NODES_2_FROM:
        pytest.skip(f"Nodes 2.0 is offered from frontend {NODES_2_FROM}; this is {_frontend_version(page)}")
    page.evaluate("async (on) => await app.extensionManager.setting.set('Comfy.VueNodes.Enabled', on)",
                  renderer == "nodes2")
    page.wait_for_timeout(300)
    browser.close_complaints()  # dismiss frontend 1.32's offer to switch back (NODES_2_OFFER), as a user would


def _dom_report(page):
    """Nodes 2.0: every node's DOM box (CSS pixels), the boxes of the images it shows, whether its header is what the
    user sees at the header's middle, and the minimap's box."""
    return page.evaluate("""() => {
        const nodes = [...document.querySelectorAll('[data-node-id]')]
            .filter(e => !e.parentElement.closest('[data-node-id]'));
        const minimap = [...document.querySelectorAll('.minimap-main-container, .litegraph-minimap')]
            .map(e => e.getBoundingClientRect()).find(r => r.width > 0 && r.height > 0);
        return {scale: app.canvas.ds.scale,
                minimap: minimap ? [minimap.left, minimap.top, minimap.right, minimap.bottom] : null,
                window: [window.innerWidth, window.innerHeight],
                nodes: nodes.map(e => {
                    const r = e.getBoundingClientRect(), id = e.getAttribute('data-node-id');
                    const node = app.graph.getNodeById(Number(id)) ?? app.graph.getNodeById(id);
                    const hit = document.elementFromPoint((r.left + r.right) / 2, r.top + 12);
                    const images = [...e.querySelectorAll('img')].map(i => i.getBoundingClientRect())
                        .filter(i => i.width > 0 && i.height > 0).map(i => [i.left, i.top, i.right, i.bottom]);
                    return {id, type: node?.type, title: node?.title, rect: [r.left, r.top, r.right, r.bottom], images,
                            size: node ? [node.size[0], node.size[1]] : null,
                            header_visible: !!hit && e.contains(hit),
                            covered_by: hit && !e.contains(hit) ? `${hit.tagName}.${String(hit.className).slice(0, 60)}` : null};
                })};
    }""")


def _overlaps(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _check_framed_nodes2(browser, path, where, screenshot, boxes_name=None, headers=True):
    """Every node's DOM box inside the window, its header not covered, none under the minimap, no two overlapping, and
    every image a node shows inside that node. Boxes are compared exactly: the layouts leave gaps of >= 24 graph units
    (>= 15 CSS px at the smallest scale the examples open at) between nodes in Nodes 2.0, so touching or overlapping
    boxes are a layout fault, not rounding. The measured boxes go to ``boxes_name`` (default nodes2_boxes_<file>)
    next to the screenshot, for whoever lays the examples out. ``headers=False``: headers may be covered (after a run,
    by the queue's "1 job completed" panel that opens over the top-right corner)."""
    with open(path, encoding="utf-8") as f:
        expected = json.load(f)
    report = _dom_report(browser.page)
    boxes_name = boxes_name or "nodes2_boxes_" + os.path.basename(path)
    with open(os.path.join(os.path.dirname(screenshot), boxes_name), "w") as f:
        json.dump(report, f, indent=1)
    browser.page.screenshot(path=screenshot)
    nodes = report["nodes"]
    assert sorted(str(n["id"]) for n in nodes) == sorted(str(n["id"]) for n in expected["nodes"]), \
        f"{where}: the DOM nodes {[n['id'] for n in nodes]} are not the workflow's"
    w, h = report["window"]
    problems = [f"{n['title']} at {[round(v) for v in n['rect']]} is outside the {w} x {h} window" for n in nodes
                if n["rect"][0] < 0 or n["rect"][1] < 0 or n["rect"][2] > w or n["rect"][3] > h]
    problems += [f"{n['title']}: header under {n['covered_by']}" for n in nodes if headers and not n["header_visible"]]
    if report["minimap"]:
        problems += [f"{n['title']} under the minimap" for n in nodes if _overlaps(n["rect"], report["minimap"])]
    problems += [f"{a['title']} overlaps {b['title']}" for i, a in enumerate(nodes) for b in nodes[i + 1:]
                 if _overlaps(a["rect"], b["rect"])]
    problems += [f"{n['title']}: its image at {[round(v) for v in i]} spills out of the node" for n in nodes
                 for i in n["images"] if not (n["rect"][0] <= i[0] and n["rect"][1] <= i[1] and i[2] <= n["rect"][2]
                                              and i[3] <= n["rect"][3])]
    assert not problems, f"{where} in Nodes 2.0 (screenshot {screenshot}): {problems}"
    return report


def _check_open_workflow(browser, path, where, renderer="classic"):
    """No complaint, every node registered and loaded; in the classic renderer also the canvas geometry (Nodes 2.0:
    _check_framed_nodes2 measures the DOM boxes instead)."""
    with open(path, encoding="utf-8") as f:
        expected = json.load(f)
    complaints = browser.complaints()
    browser.close_complaints()
    assert complaints == [], f"{where}: the frontend shows {complaints}"
    nodes = _graph_report(browser.page)
    assert sorted(n["type"] for n in nodes) == sorted(n["type"] for n in expected["nodes"]), f"{where}: not loaded"
    bad = [n for n in nodes if not n["registered"] or n["has_errors"]]
    assert not bad, f"{where}: nodes of unregistered types or with load errors: {bad}"
    if renderer != "classic":
        return
    # LiteGraph widens a node to its title and widgets (computeSize) when the file's size is smaller.
    overlapping = [f"{a['title']} overlaps {b['title']}" for i, a in enumerate(nodes) for b in nodes[i + 1:]
                   if _overlaps(a["rect"], b["rect"])]
    if overlapping:
        browser.page.screenshot(path=os.path.join(host_cache_dir(), "screenshots", "failed_view.png"))
        with open(os.path.join(host_cache_dir(), "screenshots", "failed_view_boxes.json"), "w") as f:
            json.dump(nodes, f, indent=1)
    assert not overlapping, f"{where}: {overlapping}"
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
@pytest.mark.parametrize("renderer", RENDERERS)
def test_example_opens_cleanly_by_drag_and_drop(browser, screenshots, renderer, path):
    _use_renderer(browser, renderer)
    alerts = _open_file(browser, path)
    assert alerts == [], f"opening {os.path.basename(path)} raised {alerts}"
    _check_open_workflow(browser, path, os.path.basename(path), renderer)
    shot = os.path.join(screenshots, f"open_{renderer}_" + os.path.basename(path)[:-5] + ".png")
    if renderer == "nodes2":
        browser.page.wait_for_function("(n) => document.querySelectorAll('[data-node-id]').length >= n",
                                       arg=len(json.load(open(path, encoding="utf-8"))["nodes"]), timeout=30_000)
        browser.page.wait_for_timeout(500)  # images and widgets settle their heights
        _check_framed_nodes2(browser, path, os.path.basename(path), shot)
    else:
        browser.page.screenshot(path=shot)


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
    _use_renderer(browser, "classic")
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


# Same photo, same prompt, same machine: the pipeline is deterministic up to float reductions whose order may vary
# with threads (relative error ~1e-6), which can flip an 8-bit rounding by at most one level per pixel.
SAME_PHOTO_MAX_LEVELS = 1


def _pixels(png):
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def _run_api(server, prompt):
    entry = server.wait_history(server.post_prompt(prompt), timeout=300)
    saved = [img for out in entry["outputs"].values() for img in out.get("images", []) if img["type"] == "output"]
    assert saved, entry["outputs"]
    return _pixels(server.view(saved[0]))


@pytest.mark.parametrize("renderer", RENDERERS)
def test_photo_example_runs_from_the_frontend(browser, server, base_dir, screenshots, renderer):
    """The photo example as the user would run it on a small machine: it opens on the pack's cat photo (put in the
    input folder by the pack), widgets changed in the page, queued with the Run button's code path; the saved image
    is the edit of that photo: the same prompt replayed on a copy of the photo under another name gives the same
    pixels, on another photo different ones (the tiny test models have random weights, so the edit cannot be judged
    by its looks; which photo it came from can)."""
    _use_renderer(browser, renderer)
    page = browser.page
    path = os.path.join(EXAMPLES_DIR, PHOTO_EXAMPLE + ".json")
    installed = base_dir / "input" / PACK_PHOTO
    with open(PACK_PHOTO_SOURCE, "rb") as f:
        assert installed.read_bytes() == f.read(), f"the pack did not put its photo at {installed}"
    assert _open_file(browser, path) == []
    _check_open_workflow(browser, path, PHOTO_EXAMPLE, renderer)
    shrink = [["ImageScale", "width", 64], ["ImageScale", "height", 64], ["P2PZ_InvertLatent", "steps", 4],
              ["P2PZ_GuidedEdit", "steps", 4], ["P2PZ_BuildDirection", "count", 8],
              ["SaveImage", "filename_prefix", f"pix2pix-zero/browser_{renderer}"]]
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
    loads = [i for i in prompt if prompt[i]["class_type"] == "LoadImage"]
    assert [prompt[i]["inputs"]["image"] for i in loads] == [PACK_PHOTO], "the example does not open on the pack's photo"
    saved = [img for out in entry["outputs"].values() for img in out.get("images", []) if img["type"] == "output"]
    assert saved and server.view(saved[0])[:8] == b"\x89PNG\r\n\x1a\n", entry["outputs"]
    edit = _pixels(server.view(saved[0]))

    # Which photo the saved image is the edit of: replay the prompt on a copy of the pack's photo (another name, so
    # nothing comes from the cache) and on another photo.
    copy = f"copy_{renderer}_{PACK_PHOTO}"
    (base_dir / "input" / copy).write_bytes(installed.read_bytes())
    replay = json.loads(json.dumps(prompt))
    replay[loads[0]]["inputs"]["image"] = copy
    same = _run_api(server, replay)
    replay[loads[0]]["inputs"]["image"] = OTHER_PHOTO
    other = _run_api(server, replay)
    assert same.shape == edit.shape == other.shape
    same_diff = int(abs(same - edit).max())
    other_diff = float(abs(other - edit).mean())
    assert same_diff <= SAME_PHOTO_MAX_LEVELS, \
        f"the saved image is not the edit of {PACK_PHOTO}: replayed on the same photo it differs by {same_diff} levels"
    assert other_diff > SAME_PHOTO_MAX_LEVELS, \
        f"the edit does not depend on the photo: {OTHER_PHOTO} gives the same image (mean difference {other_diff:.2f})"

    page.wait_for_timeout(1000)  # the Save Image node shows the result
    assert browser.complaints() == [], browser.complaints()
    shot = os.path.join(screenshots, f"photo_example_after_run_{renderer}.png")
    if renderer == "classic":
        page.screenshot(path=shot)
        return
    # Nodes 2.0 grows Save Image and Reconstruction to show their images: the layout leaves them room.
    report = _check_framed_nodes2(browser, path, f"{PHOTO_EXAMPLE} after its run", shot,
                                  boxes_name=f"nodes2_boxes_after_run_{PHOTO_EXAMPLE}.json", headers=False)
    shown = {n["type"]: len(n["images"]) for n in report["nodes"] if n["type"] in ("SaveImage", "PreviewImage")}
    assert shown == {"SaveImage": 1, "PreviewImage": 1}, f"the images after the run: {shown} (screenshot {shot})"


def test_no_page_errors(browser):
    """Runs last in this module: no uncaught exception in the page while the examples were opened and run. It opens
    every example in both renderers itself first, so that it checks the pack's workflows even when run alone."""
    for renderer in RENDERERS:
        if renderer == "nodes2" and _frontend_version(browser.page) < NODES_2_FROM:
            continue
        _use_renderer(browser, renderer)
        for path in WORKFLOWS:
            assert _open_file(browser, path) == [], f"opening {os.path.basename(path)} in {renderer}"
            browser.page.wait_for_timeout(300)
    assert browser.errors == [], browser.errors
