"""The web page in headless Chromium against the real stack (nginx + TorchServe).

The page is served by nginx at ``stack.base_url`` and talks to the real endpoints. Expected
values come from the in-process predictors on the same bytes (the stack serves the same
artifacts), so the test knows the class name, the boxes and their count in advance. The
localizer of the ``stack`` fixture maps brightness to density (``sigmoid(40 * (x - 0.5))``), so
bright rectangles on a dark image are the "manipulated regions".
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import requests
from dicom_files import dicom_bytes
from PIL import Image

from medfakedet.artifacts import read_meta
from medfakedet.schema import DensityParams

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
WEB_DIR = Path(__file__).resolve().parents[2] / "web"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WIDTH, HEIGHT = 320, 240  # not square and not 128: boxes must be scaled twice to be drawn right
# (x1, y1, x2, y2, brightness): density ~1.0 and ~0.92, so thr 0.95 keeps only the first.
REGIONS = ((40, 40, 140, 120, 0.9), (190, 130, 290, 210, 0.56))
BOX_YELLOW = (255, 212, 0)


def scan_pixels() -> np.ndarray:
    img = np.full((HEIGHT, WIDTH), 0.1, dtype=np.float32)
    for x1, y1, x2, y2, level in REGIONS:
        img[y1:y2, x1:x2] = level
    return img


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("web-files")
    png = root / "brain_scan.png"
    Image.fromarray(np.rint(scan_pixels() * 255).astype(np.uint8)).save(png)
    dcm = root / "brain_scan.dcm"
    dcm.write_bytes(dicom_bytes(scan_pixels(), bits=8))
    tiff = root / "brain_scan.tif"  # 16-bit: browsers show no TIFF at all
    Image.fromarray(np.rint(scan_pixels() * 65535).astype(np.uint16)).save(tiff)
    txt = root / "notes.png"
    txt.write_text("these are notes, not a scan\n")
    return {"png": png, "dcm": dcm, "tiff": tiff, "txt": txt}


@pytest.fixture(scope="module")
def expected(stack, files) -> dict:
    """What the served models answer for these files, computed in-process."""
    clf = stack.served_predictor("synthesis8")
    loc = stack.served_predictor("manipulation_density")
    data = files["png"].read_bytes()
    (synthesis,) = clf.predict([data])
    (density,) = loc.predict([data])
    (strict,) = loc.predict([data], [DensityParams(threshold=0.95, min_area=20)])
    (dcm,) = loc.predict([files["dcm"].read_bytes()])
    return {"synthesis": synthesis, "density": density, "strict": strict, "dicom": dcm}


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        yield b
        b.close()


# Records the fields of every form the page POSTs (Chromium gives no post data for requests
# that carry a file), so tests can see which parameters were sent.
RECORD_FORMS = """
const realFetch = window.fetch;
window.sentForms = [];
window.fetch = (url, init) => {
  if (init && init.body instanceof FormData) {
    const fields = {};
    for (const [k, v] of init.body.entries()) fields[k] = typeof v === "string" ? v : "<file>";
    window.sentForms.push({ url: String(url), fields });
  }
  return realFetch(url, init);
};
"""


DENSITY = "/detect/manipulation_density"
# What a server from before model cards answered to GET /detect/manipulation_density.
NO_CARD = {"error": "empty body: no image bytes were received", "status": 400}


def answer_as_an_old_server(route) -> None:
    if route.request.method == "GET":
        route.fulfill(status=400, json=NO_CARD)
    else:
        route.continue_()


@pytest.fixture
def page(browser, stack, request):
    """The page from nginx, once it has asked for the localizer's model card (parameter "old
    server": that GET is answered like a server from before cards, a 400)."""
    context = browser.new_context(viewport={"width": 1360, "height": 1000})
    # Playwright's 30 s default is too short for a batch of uploads on a loaded 2-core CI machine.
    context.set_default_timeout(120_000)
    context.add_init_script(RECORD_FORMS)
    if getattr(request, "param", None) == "old server":
        context.route(stack.base_url + DENSITY, answer_as_an_old_server)
    pg = context.new_page()
    errors: list[str] = []  # uncaught exceptions in the page's scripts
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(stack.base_url + "/", wait_until="load")
    pg.wait_for_function("document.getElementById('thr').dataset.card !== 'pending'")
    yield pg
    assert errors == [], f"JavaScript errors on the page: {errors}"
    context.close()


def screenshot_dir(tmp_path: Path) -> Path:
    out = Path(os.environ.get("MEDFAKEDET_SCREENSHOT_DIR", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    return out


def canvas_pixel(page, x: float, y: float) -> tuple[int, int, int]:
    """RGB at CSS pixel (x, y) of the image canvas."""
    return tuple(
        page.evaluate(
            """([x, y]) => {
                const c = document.getElementById("image-canvas");
                const k = c.width / c.getBoundingClientRect().width;  // device pixels per CSS px
                const ctx = c.getContext("2d");
                const d = ctx.getImageData(Math.floor(x * k - 0.5), Math.floor(y * k), 1, 1);
                return Array.from(d.data.slice(0, 3));
            }""",
            [x, y],
        )
    )


def upload_and_wait(page, path: Path) -> None:
    with page.expect_response(lambda r: r.url.endswith(DENSITY) and r.request.method == "POST"):
        page.set_input_files("#file-input", str(path))
    page.wait_for_function("document.getElementById('status').textContent === 'Done.'")


def test_page_is_served_with_the_not_for_clinical_use_notice(page) -> None:
    notice = page.get_by_role("note")
    assert "not for clinical use" in notice.inner_text().lower()
    assert "synthetic data" in notice.inner_text()
    # Nothing is fetched from another origin: every script and stylesheet is local.
    sources = page.evaluate(
        "Array.from(document.querySelectorAll('script[src], link[href]')).map(e => e.src || e.href)"
    )
    assert sources and all(s.startswith(page.url.rstrip("/")) for s in sources)


def test_png_upload_shows_class_boxes_and_heatmap(page, files, expected, tmp_path) -> None:
    synthesis, density = expected["synthesis"], expected["density"]
    assert density["count"] == 2  # the fixture's localizer finds both rectangles

    if synthesis["organ"] != "brain":
        # The localizer runs on brain images by default; the page must say why it did not.
        page.set_input_files("#file-input", str(files["png"]))
        page.wait_for_function("document.getElementById('status').textContent === 'Done.'")
        assert page.locator("#density-skipped").is_visible()
        assert synthesis["organ"] in page.locator("#density-skipped-text").inner_text()
        page.check("#localize-always")  # ... and runs it when asked
        page.wait_for_function("document.getElementById('status').textContent === 'Done.'")
    else:
        upload_and_wait(page, files["png"])

    assert page.locator("#result-class").inner_text() == synthesis["class_name"]
    # The stack's synthesis8 abstains on every image; its localizer has no statistics.
    assert synthesis["verdict"] == "uncertain" and density["verdict"] == "manipulated"
    assert page.locator("#verdict-badge").text_content() == "Uncertain"  # CSS capitalises
    assert "uncertain" in page.locator("#verdict-badge").get_attribute("class")
    assert page.locator("#verdict-reason").inner_text() == synthesis["reason"]
    assert page.locator("#in-distribution").inner_text() == "0.00, UNLIKE the training images"
    assert page.locator("#density-badge").text_content() == "Manipulated"
    assert page.locator("#density-in-distribution").inner_text().startswith("unknown")
    p_fake = f"{100 * synthesis['fake_probability']:.1f}%"
    assert page.locator("#fake-value").inner_text() == p_fake
    assert page.locator("#organ-bars .bar-row").count() == 4
    assert page.locator("#class-probs tr").count() == 8

    canvas = page.locator("#image-canvas")
    page.wait_for_function("document.getElementById('image-canvas').dataset.boxes === '2'")
    assert canvas.get_attribute("data-heatmap") == "1"
    assert page.locator("#box-count").inner_text() == "2"
    assert page.locator("#box-list li").count() == 2
    first = density["boxes"][0]
    assert f"({round(first['x1'])}, {round(first['y1'])})" in page.locator("#box-1").inner_text()

    # Boxes are drawn where they belong on the scaled image: the top-left corner of each box,
    # in uploaded-image pixels times displayed/natural size, is box yellow.
    page.uncheck("#show-heatmap")
    assert canvas.get_attribute("data-heatmap") == "0"
    shown = canvas.bounding_box()
    scale = shown["width"] / WIDTH
    assert shown["height"] / HEIGHT == pytest.approx(scale, rel=0.01)
    assert scale > 1.1  # a 320 px image is enlarged on this viewport
    for box in density["boxes"]:
        x, y = box["x1"] * scale, (box["y1"] + box["y2"]) / 2 * scale  # on the left edge
        assert canvas_pixel(page, x, y) == pytest.approx(BOX_YELLOW, abs=40)
    # ... and not in the middle of a box (the image shows there).
    mid = density["boxes"][0]
    inside = canvas_pixel(page, (mid["x1"] + mid["x2"]) / 2 * scale, (mid["y1"] + 10) * scale)
    assert inside != pytest.approx(BOX_YELLOW, abs=40)
    page.check("#show-heatmap")
    assert canvas.get_attribute("data-heatmap") == "1"
    page.screenshot(path=str(screenshot_dir(tmp_path) / "web_png_result.png"), full_page=True)


def test_threshold_slider_queries_the_server_again(page, files, expected) -> None:
    page.check("#localize-always")
    upload_and_wait(page, files["png"])
    page.wait_for_function("document.getElementById('image-canvas').dataset.boxes === '2'")

    with page.expect_response(lambda r: r.url.endswith("/detect/manipulation_density")) as resp:
        page.locator("#thr").fill("0.95")  # fires 'input', like dragging the slider
    assert resp.value.json()["threshold"] == 0.95  # the form carried the slider's value
    strict = expected["strict"]
    assert strict["count"] == 1
    page.wait_for_function("document.getElementById('image-canvas').dataset.boxes === '1'")
    assert page.locator("#density-params").inner_text() == "0.95 / 20 px"
    assert page.locator("#thr-value").inner_text() == "0.95"


@pytest.mark.parametrize("kind", ["dcm", "tiff"])
def test_dicom_and_tiff_show_the_server_preview_with_boxes_on_the_returned_size(
    page, files, expected, tmp_path, kind
) -> None:
    page.check("#localize-always")
    page.uncheck("#show-heatmap")
    upload_and_wait(page, files[kind])
    assert sent_form(page, "/detect/synthesis8") == {"image": "<file>", "preview": "true"}
    dcm = expected["dicom"]
    assert dcm["image_size"] == {"width": WIDTH, "height": HEIGHT}
    page.wait_for_function(
        f"document.getElementById('image-canvas').dataset.boxes === '{dcm['count']}'"
    )
    assert dcm["count"] == 2
    canvas = page.locator("#image-canvas")
    assert canvas.get_attribute("data-preview") == "server"
    shown = canvas.bounding_box()
    assert shown["width"] / shown["height"] == pytest.approx(WIDTH / HEIGHT, rel=0.02)
    assert f"{WIDTH} × {HEIGHT} px" in page.locator("#viewer-caption").inner_text()
    # The preview is the scan itself: bright inside the first region, dark outside both.
    scale = shown["width"] / WIDTH
    x1, y1, x2, y2, _ = REGIONS[0]
    assert min(canvas_pixel(page, (x1 + x2) / 2 * scale, (y1 + y2) / 2 * scale)) > 180
    assert max(canvas_pixel(page, 170 * scale, 20 * scale)) < 60
    page.screenshot(path=str(screenshot_dir(tmp_path) / f"web_{kind}_result.png"), full_page=True)


def test_invalid_file_shows_the_server_message_in_an_alert(page, files, tmp_path) -> None:
    alert = page.get_by_role("alert")
    assert not alert.is_visible()
    with page.expect_response(lambda r: r.url.endswith("/detect/synthesis8")) as resp:
        page.set_input_files("#file-input", str(files["txt"]))
    assert resp.value.status == 400
    body = resp.value.json()  # the handlers' {"error", "status"} (TorchServe's own: "message")
    server_message = body.get("error") or body["message"]
    assert "image" in server_message.lower()
    alert.wait_for(state="visible")
    assert "400" in page.locator("#error-title").inner_text()
    assert page.locator("#error-message").inner_text() == server_message
    assert page.locator("#synthesis").is_hidden()
    page.screenshot(path=str(screenshot_dir(tmp_path) / "web_error.png"), full_page=True)


# Rewrites the threshold in the localizer's answers (and keeps the real ones), so a test can tell
# the value the page read from the server from any value of its own.
RELABEL_THRESHOLD = """(value) => {
  const inner = window.fetch;
  window.relabelThreshold = value;
  window.realThresholds = [];
  window.fetch = async (url, init) => {
    const response = await inner(url, init);
    if (window.relabelThreshold === null || !String(url).endsWith("/manipulation_density")) {
      return response;
    }
    const body = await response.json();
    window.realThresholds.push(body.threshold);
    body.threshold = window.relabelThreshold;
    return new Response(JSON.stringify(body), { status: response.status });
  };
}"""


def sent_form(page, endpoint: str) -> dict[str, str]:
    """The fields of the last form the page posted to ``endpoint`` (files as "<file>")."""
    forms = page.evaluate("window.sentForms")
    return [f["fields"] for f in forms if f["url"].endswith(endpoint)][-1]


def test_slider_starts_at_the_served_calibrated_threshold_before_any_upload(
    page, stack, files
) -> None:
    """The page reads the localizer's model card when it opens: the slider shows the served
    artifact's calibrated box threshold (and the smallest box its min_area) before any upload,
    and neither is sent until the user changes them."""
    calibration = read_meta(stack.artifacts["manipulation_density"])["calibration"]
    card = requests.get(stack.base_url + DENSITY, timeout=60).json()
    assert card["threshold"]["default"] == calibration["box_threshold"]
    threshold, min_area = calibration["box_threshold"], calibration["min_area"]
    assert page.evaluate("window.sentForms") == []  # nothing uploaded yet
    assert page.locator("#thr").is_enabled()
    assert page.locator("#thr").get_attribute("data-calibrated-from") == "card"
    assert float(page.locator("#thr").input_value()) == threshold
    assert page.locator("#thr-value").inner_text() == f"{threshold:.2f}"
    assert page.locator("#min-area").get_attribute("placeholder") == str(min_area)
    assert page.locator("#min-area").get_attribute("max") == str(card["min_area"]["max"])
    assert page.locator("#thr-reset").is_hidden()

    page.check("#localize-always")
    upload_and_wait(page, files["png"])
    assert sent_form(page, DENSITY) == {"image": "<file>", "return_density": "true"}
    assert page.locator("#density-params").inner_text() == f"{threshold} / {min_area} px"
    assert float(page.locator("#thr").input_value()) == threshold


@pytest.mark.parametrize("page", ["old server"], indirect=True)
def test_without_a_card_the_slider_starts_at_the_first_answers_threshold(
    page, files, expected
) -> None:
    """A server from before model cards: the slider waits for the first answer, takes the
    threshold it carries, and thr is sent only once the slider is moved."""
    # Before any answer the slider cannot be moved and shows no number of its own.
    assert page.locator("#thr").is_disabled() and page.locator("#thr-value").inner_text() == "–"
    assert page.locator("#thr").get_attribute("data-card") == "none"
    # The threshold the server answers with is the one the slider takes: change it on the way.
    calibrated = 0.37
    page.evaluate(RELABEL_THRESHOLD, calibrated)
    page.check("#localize-always")
    upload_and_wait(page, files["png"])
    # the calibrated values apply: neither thr nor min_area is sent
    assert sent_form(page, DENSITY) == {"image": "<file>", "return_density": "true"}
    assert sent_form(page, "/detect/synthesis8") == {"image": "<file>"}  # a PNG: no preview
    assert page.locator("#thr").input_value() == str(calibrated)
    assert page.locator("#thr").get_attribute("data-calibrated-from") == "answer"
    assert page.locator("#thr-value").inner_text() == "0.37"
    assert page.locator("#min-area").get_attribute("placeholder") == "20"
    assert page.evaluate("window.realThresholds") == [expected["density"]["threshold"]] == [0.28]
    page.evaluate("window.relabelThreshold = null")

    # Keyboard: one step right on the focused slider sends thr = calibrated + 0.01.
    page.focus("#thr")
    with page.expect_response(lambda r: r.url.endswith(DENSITY)) as resp:
        page.keyboard.press("ArrowRight")
    assert sent_form(page, DENSITY)["thr"] == "0.38"
    assert resp.value.json()["threshold"] == 0.38
    page.wait_for_function("document.getElementById('status').textContent === 'Done.'")
    assert page.locator("#density-params").inner_text() == "0.38 / 20 px"
    # ... and the reset button (Tab, Enter) goes back to sending no thr at all.
    page.locator("#thr-reset").focus()
    with page.expect_response(lambda r: r.url.endswith(DENSITY)) as resp:
        page.keyboard.press("Enter")
    assert "thr" not in sent_form(page, DENSITY)
    assert resp.value.json()["threshold"] == 0.28  # the server's own calibrated value
    assert page.locator("#thr").input_value() == str(calibrated)


def test_gradcam_toggle_by_keyboard_draws_the_servers_heatmap(page, files, tmp_path) -> None:
    page.check("#localize-always")
    page.uncheck("#show-heatmap")
    upload_and_wait(page, files["png"])
    canvas = page.locator("#image-canvas")
    before = canvas_pixel(page, 10, 10)
    assert canvas.get_attribute("data-gradcam") == "0"
    page.focus("#show-gradcam")
    with page.expect_response(lambda r: r.url.endswith("/explanations/synthesis8")) as resp:
        page.keyboard.press("Space")
    body = resp.value.json()
    assert resp.value.status == 200 and body["explanation"]["method"] == "grad-cam"
    page.wait_for_function("document.getElementById('image-canvas').dataset.gradcam === '1'")
    assert canvas_pixel(page, 10, 10) != before  # the coloured map, not the gray scan
    assert canvas.get_attribute("data-boxes") == "2"  # boxes stay on top
    assert "Grad-CAM" in canvas.get_attribute("aria-label")
    page.screenshot(path=str(screenshot_dir(tmp_path) / "web_gradcam.png"), full_page=True)
    page.keyboard.press("Space")  # off again: the scan
    assert canvas.get_attribute("data-gradcam") == "0"
    assert canvas_pixel(page, 10, 10) == before


def test_verdicts_are_shown_in_plain_words(page, files, expected) -> None:
    page.check("#localize-always")
    upload_and_wait(page, files["png"])
    summary = page.locator("#verdict-summary")
    assert summary.is_visible()
    assert summary.inner_text() == (
        "Synthesis: UNCERTAIN, the model cannot tell: do not rely on this answer. "
        "Manipulation: MANIPULATED, the localizer finds manipulated regions."
    )
    assert "uncertain" in summary.get_attribute("class")


def test_batch_of_files_table_details_and_exports(page, files, expected, tmp_path) -> None:
    page.check("#localize-always")
    # The dropzone by keyboard: Enter opens the file chooser, which takes several files.
    # Playwright's filechooser event is missed now and then in headless chromium (CI: a 120 s
    # timeout), so the test counts the chooser's opening (input.click) and sets the files itself.
    page.evaluate(
        "() => { const i = document.getElementById('file-input'); window.chooserOpened = 0;"
        " i.click = () => { window.chooserOpened += 1; }; }"
    )
    page.focus("#dropzone")
    page.keyboard.press("Enter")
    page.wait_for_function("window.chooserOpened === 1")
    assert page.locator("#file-input").evaluate("i => i.multiple")
    page.set_input_files("#file-input", [str(files[k]) for k in ("png", "dcm", "tiff", "txt")])
    status = page.locator("#batch-status")
    page.wait_for_function(
        "document.getElementById('batch-status').textContent.startsWith('4 of 4 files done')"
    )
    assert status.inner_text() == (
        "4 of 4 files done: 0 fake, 3 manipulated, 3 uncertain, 1 errors."
    )
    rows = page.locator("#batch-rows tr")
    assert rows.count() == 4
    cells = [rows.nth(i).locator("th, td").all_inner_texts() for i in range(4)]
    s = expected["synthesis"]
    assert cells[0] == [
        "brain_scan.png", "UNCERTAIN", f"{100 * s['fake_probability']:.1f}%", s["organ"],
        "MANIPULATED", "2",
    ]  # fmt: skip
    assert [c[-1] for c in cells[1:3]] == ["2", "2"]  # DICOM and TIFF: both regions too
    assert cells[3][0] == "notes.png" and cells[3][1] == "ERROR"
    assert cells[3][2].startswith("HTTP 400: ") and "image" in cells[3][2]
    page.screenshot(path=str(screenshot_dir(tmp_path) / "web_batch.png"), full_page=True)

    with page.expect_download() as dl:
        page.click("#export-csv")
    records = list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text())))
    assert [r["file"] for r in records] == ["brain_scan.png", "brain_scan.dcm",
                                            "brain_scan.tif", "notes.png"]  # fmt: skip
    assert [r["status"] for r in records] == ["ok", "ok", "ok", "error"]
    # served in one batch with the other files: on a bf16 path that moves the 4th decimal
    assert float(records[0]["fake_probability"]) == pytest.approx(s["fake_probability"], abs=1e-3)
    assert records[0]["count"] == "2" and records[0]["localizer_verdict"] == "manipulated"
    assert len(records[0]["model_sha256"]) == 64
    with page.expect_download() as dl:
        page.click("#export-json")
    doc = json.loads(Path(dl.value.path()).read_text())
    assert doc[1]["localization"]["boxes"] == expected["dicom"]["boxes"]
    assert doc[3]["synthesis"] is None and "image" in doc[3]["error"]

    # A row by keyboard: focus it, Enter opens it in the single-image view.
    rows.nth(1).focus()
    with page.expect_response(lambda r: r.url.endswith("/detect/manipulation_density")):
        page.keyboard.press("Enter")
    page.wait_for_function("document.getElementById('status').textContent === 'Done.'")
    assert page.locator("#file-name").inner_text().startswith("brain_scan.dcm")
    assert rows.nth(1).get_attribute("aria-selected") == "true"
    assert page.locator("#image-canvas").get_attribute("data-boxes") == "2"


def test_a_folder_fills_the_batch_table(page, files, tmp_path) -> None:
    folder = tmp_path / "scans"
    (folder / "sub").mkdir(parents=True)
    for name, key in (("a.png", "png"), ("sub/b.dcm", "dcm"), ("c.tif", "tiff")):
        (folder / name).write_bytes(files[key].read_bytes())
    (folder / "readme.txt").write_text("not scanned: not an image name")
    page.set_input_files("#folder-input", str(folder))
    page.wait_for_function(
        "document.getElementById('batch-status').textContent.startsWith('3 of 3 files done')"
    )
    names = page.locator("#batch-rows th").all_inner_texts()
    assert sorted(names) == ["scans/a.png", "scans/c.tif", "scans/sub/b.dcm"]


def test_file_page_against_a_configured_server_with_a_token(browser, stack, files) -> None:
    """The page opened from file:// talks to the server given in the Server field (CORS), and
    sends the token as a Bearer header (the preflight OPTIONS is answered by nginx)."""
    context = browser.new_context(viewport={"width": 1360, "height": 1000})
    context.set_default_timeout(120_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto((WEB_DIR / "index.html").as_uri(), wait_until="load")
    # No server yet: the page says what to enter instead of failing somewhere.
    pg.set_input_files("#file-input", str(files["png"]))
    pg.get_by_role("alert").wait_for(state="visible")
    assert "enter the server's URL under Server" in pg.locator("#error-message").inner_text()

    assert pg.locator("#thr").is_disabled()  # no server: no card
    pg.fill("#server-url", stack.base_url)
    # Server and Token changed: the page reads the localizer's card again, with the token.
    with_token = "Bearer test-token-123"

    def card_with_token(r) -> bool:
        asked = r.method == "GET" and r.url == stack.base_url + DENSITY
        return asked and r.headers.get("authorization") == with_token

    with pg.expect_request(card_with_token):
        pg.fill("#token", "test-token-123")
        pg.locator("#token").blur()
    pg.wait_for_function("document.getElementById('thr').dataset.card === 'ok'")
    threshold = read_meta(stack.artifacts["manipulation_density"])["calibration"]["box_threshold"]
    assert float(pg.locator("#thr").input_value()) == threshold  # before any upload
    pg.check("#localize-always")
    with pg.expect_request(lambda r: r.url == stack.base_url + "/detect/synthesis8") as req:
        pg.set_input_files("#file-input", str(files["dcm"]))
    assert req.value.headers["authorization"] == "Bearer test-token-123"
    pg.wait_for_function("document.getElementById('status').textContent === 'Done.'")
    assert pg.locator("#box-count").inner_text() == "2"
    assert pg.locator("#image-canvas").get_attribute("data-preview") == "server"
    assert errors == []
    context.close()

    # What nginx answers to the browser's preflight and to the request itself.
    pre = requests.options(
        stack.base_url + "/detect/synthesis8",
        headers={
            "Origin": "null",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
        timeout=10,
    )
    assert pre.status_code == 204
    assert pre.headers["Access-Control-Allow-Origin"] == "*"
    assert "Authorization" in pre.headers["Access-Control-Allow-Headers"]
