"""The web page in headless Chromium against the real stack (nginx + TorchServe).

The page is served by nginx at ``stack.base_url`` and talks to the real endpoints. Expected
values come from the in-process predictors on the same bytes (the stack serves the same
artifacts), so the test knows the class name, the boxes and their count in advance. The
localizer of the ``stack`` fixture maps brightness to density (``sigmoid(40 * (x - 0.5))``), so
bright rectangles on a dark image are the "manipulated regions".
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from dicom_files import dicom_bytes
from PIL import Image

from medfakedet.predictors import DensityPredictor, Synthesis8Predictor
from medfakedet.schema import DensityParams

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
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
    txt = root / "notes.png"
    txt.write_text("these are notes, not a scan\n")
    return {"png": png, "dcm": dcm, "txt": txt}


@pytest.fixture(scope="module")
def expected(stack, files) -> dict:
    """What the served models answer for these files, computed in-process."""
    clf = Synthesis8Predictor.from_artifact(stack.artifacts["synthesis8"])
    loc = DensityPredictor.from_artifact(stack.artifacts["manipulation_density"])
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


@pytest.fixture
def page(browser, stack):
    context = browser.new_context(viewport={"width": 1360, "height": 1000})
    pg = context.new_page()
    errors: list[str] = []  # uncaught exceptions in the page's scripts
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(stack.base_url + "/", wait_until="load")
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
    with page.expect_response(lambda r: r.url.endswith("/detect/manipulation_density")):
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


def test_dicom_has_no_preview_but_boxes_on_the_returned_image_size(
    page, files, expected, tmp_path
) -> None:
    page.check("#localize-always")
    page.uncheck("#show-heatmap")
    upload_and_wait(page, files["dcm"])
    dcm = expected["dicom"]
    assert dcm["image_size"] == {"width": WIDTH, "height": HEIGHT}
    page.wait_for_function(
        f"document.getElementById('image-canvas').dataset.boxes === '{dcm['count']}'"
    )
    assert dcm["count"] == 2
    shown = page.locator("#image-canvas").bounding_box()
    assert shown["width"] / shown["height"] == pytest.approx(WIDTH / HEIGHT, rel=0.02)
    assert f"{WIDTH} × {HEIGHT} px" in page.locator("#viewer-caption").inner_text()
    page.screenshot(path=str(screenshot_dir(tmp_path) / "web_dicom_result.png"), full_page=True)


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
