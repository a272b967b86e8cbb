"""The latent explorer on the built static site, in headless Chromium: no kernel, no internet.

The site is the book built in smoke mode (the `smoke_site` fixture in conftest.py), served from
localhost. The pixels the browser draws are compared with vae_lib.widgets.decode_with_state, the
Python twin of the JavaScript forward pass, run on the float16 weights read back from the page's
saved widget state.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tools.serve import serve_directory
from vae_lib.widgets import decode_array, decode_with_state

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
EXPLORER_PAGE = "book/latent_explorer.html"
SECOND_PAGE = "book/first_vae.html"
# Canvas pixels are 8-bit grey levels round(255 * (1 - p)). JavaScript and the float64 Python
# twin agree to ~1e-15 in p, so a pixel may differ only where 255 * (1 - p) sits on a rounding
# boundary: by at most one grey level.
GREY_TOLERANCE = 1
# URL schemes that never reach the network.
LOCAL_SCHEMES = ("data:", "blob:", "about:")

READ_IMAGE = """(root) => {
  const canvas = root.querySelector('canvas[aria-label="decoded image"]');
  const rgba = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  const grey = [];
  for (let i = 0; i < rgba.length; i += 4) grey.push(rgba[i]);
  return {grey, z: JSON.parse(canvas.dataset.z)};
}"""


@pytest.fixture(scope="module")
def site_url(smoke_site: Path):
    """The built site served by `python -m http.server` on a free localhost port."""
    with serve_directory(smoke_site) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


# Errors every page of the theme logs, unrelated to widgets: jupyter-book 1 sets up sphinx-thebe
# twice, so its inline `const THEBE_JS_URL` is declared twice (thebe is never launched here); the
# pydata theme complains about an unset theme mode. Failed resources are caught with their URL by
# the response handlers instead ("Failed to load resource" is also the favicon, which Sphinx lacks).
KNOWN_THEME_ERRORS = ("Identifier 'THEBE_JS_URL' has already been declared", "Got invalid theme mode",
                      "Failed to load resource")


class PageLog:
    """Every request, failed request, HTTP error and JavaScript error of one page."""

    def __init__(self, page):
        self.requests, self.failures, self.errors = [], [], []
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("requestfailed", lambda r: self.failures.append(f"{r.url} ({r.failure})"))
        page.on("response", lambda r: r.status >= 400 and self.failures.append(f"{r.url} (HTTP {r.status})"))
        page.on("pageerror", lambda e: self._error(str(e)))
        page.on("console", lambda m: m.type == "error" and self._error(m.text))

    def _error(self, text: str) -> None:
        if not text.startswith(KNOWN_THEME_ERRORS):
            self.errors.append(text)


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 1400})
    page = context.new_page()
    page.log = PageLog(page)
    yield page
    context.close()


def _open(page, url: str, n_explorers: int):
    page.goto(url, wait_until="networkidle")
    page.wait_for_function(
        f"document.querySelectorAll('.vle[data-ready=\"true\"]').length >= {n_explorers}", timeout=30_000)
    return page.locator(".vle")


def _saved_explorers(html_file: Path) -> dict[int, dict]:
    """The explorers' saved states from a built page, keyed by z_dim."""
    match = re.search(r'<script type="application/vnd.jupyter.widget-state\+json">(.*?)</script>',
                      html_file.read_text(), re.S)
    assert match, f"no saved widget state in {html_file}"
    states = json.loads(match.group(1))["state"].values()
    return {s["state"]["decoder"]["z_dim"]: s["state"] for s in states
            if s["model_name"] == "AnyModel" and "decoder" in s["state"]}


def _expected_grey(state: dict, z) -> np.ndarray:
    return np.round(255 * (1 - decode_with_state(state["decoder"], z))).astype(int)


def test_built_page_saves_widget_state_and_views(smoke_site):
    html = (smoke_site / EXPLORER_PAGE).read_text()
    assert "application/vnd.jupyter.widget-state+json" in html
    assert html.count("application/vnd.jupyter.widget-view+json") >= 2
    saved = _saved_explorers(smoke_site / EXPLORER_PAGE)
    assert sorted(saved) == [2, 20]
    assert "export default" in saved[2]["_esm"]


def test_slider_redraws_image_equal_to_python_decoder(page, site_url, smoke_site):
    explorers = _open(page, site_url + EXPLORER_PAGE, 2)
    explorer = explorers.filter(has_text="20-dimensional")
    state = _saved_explorers(smoke_site / EXPLORER_PAGE)[20]

    before = explorer.evaluate(READ_IMAGE)
    np.testing.assert_array_equal(before["z"], state["z"])
    sliders = explorer.locator("input.vle-slider")
    assert sliders.count() == 20
    sliders.nth(0).fill("2.5")
    sliders.nth(3).fill("-1.75")
    after = explorer.evaluate(READ_IMAGE)
    assert after["z"][0] == 2.5 and after["z"][3] == -1.75
    assert after["grey"] != before["grey"], "moving the sliders did not change the image"

    for shown in (before, after):
        diff = np.abs(np.array(shown["grey"]) - _expected_grey(state, shown["z"]))
        assert diff.max() <= GREY_TOLERANCE, f"browser and Python differ by {diff.max()} grey levels"

    # A real key press moves a slider by one step (0.01).
    sliders.nth(5).focus()
    page.keyboard.press("ArrowRight")
    stepped = explorer.evaluate(READ_IMAGE)
    assert stepped["z"][5] == pytest.approx(state["z"][5] + 0.01)
    assert np.abs(np.array(stepped["grey"]) - _expected_grey(state, stepped["z"])).max() <= GREY_TOLERANCE
    assert not page.log.errors, page.log.errors


def test_pad_buttons_and_posterior_view(page, site_url, smoke_site):
    explorer = _open(page, site_url + EXPLORER_PAGE, 2).filter(has_text="2-dimensional")
    state = _saved_explorers(smoke_site / EXPLORER_PAGE)[2]
    z_range = state["z_range"]

    # The pad's centre is z = 0; its top-right quarter point is (z_range / 2, z_range / 2).
    pad = explorer.locator("canvas.vle-pad")
    box = pad.bounding_box()
    pad.click(position={"x": 0.75 * box["width"], "y": 0.25 * box["height"]})
    z = explorer.evaluate(READ_IMAGE)["z"]
    np.testing.assert_allclose(z, [z_range / 2, z_range / 2], atol=2 * 2 * z_range / box["width"])

    explorer.get_by_role("button", name="Reset z = 0").click()
    reset = explorer.evaluate(READ_IMAGE)
    assert reset["z"] == [0.0, 0.0]
    assert np.abs(np.array(reset["grey"]) - _expected_grey(state, [0.0, 0.0])).max() <= GREY_TOLERANCE
    explorer.get_by_role("button", name="Sample z ~ N(0, I)").click()
    sampled = explorer.evaluate(READ_IMAGE)
    assert sampled["z"] != [0.0, 0.0] and all(abs(v) <= z_range for v in sampled["z"])
    assert np.abs(np.array(sampled["grey"]) - _expected_grey(state, sampled["z"])).max() <= GREY_TOLERANCE

    # Posterior view: picking a digit puts z at its posterior mean and draws its reconstruction.
    digits = state["digits"]
    mu, images = decode_array(digits["mu"]), decode_array(digits["images"])
    explorer.get_by_role("button", name="Posterior q(z|x)").click()
    explorer.get_by_label("test digit").select_option("3")
    shown = explorer.evaluate(READ_IMAGE)
    np.testing.assert_array_equal(shown["z"], mu[3].astype(np.float64))
    assert np.abs(np.array(shown["grey"]) - _expected_grey(state, mu[3])).max() <= GREY_TOLERANCE
    input_grey = explorer.locator('canvas[aria-label="input digit"]').evaluate(
        "(c) => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data).filter((_, i) => i % 4 === 0)")
    np.testing.assert_array_equal(input_grey, 255 - images[3].astype(int))

    # Interpolation: t = 0.5 decodes the midpoint of the two posterior means.
    explorer.get_by_label("interpolate to").select_option("7")
    explorer.get_by_label("interpolation t").fill("0.5")
    mid = explorer.evaluate(READ_IMAGE)
    np.testing.assert_allclose(mid["z"], 0.5 * mu[3].astype(np.float64) + 0.5 * mu[7], rtol=0, atol=1e-12)
    assert np.abs(np.array(mid["grey"]) - _expected_grey(state, mid["z"])).max() <= GREY_TOLERANCE

    shots = smoke_site.parent.parent / "screenshots"
    shots.mkdir(exist_ok=True)
    explorer.screenshot(path=str(shots / "latent_explorer_z2_posterior.png"))
    assert not page.log.errors, page.log.errors


@pytest.mark.parametrize("path", [EXPLORER_PAGE, SECOND_PAGE, "book/index.html"])
def test_no_request_leaves_localhost(page, site_url, path):
    page.goto(site_url + path, wait_until="networkidle")
    if path != "book/index.html":
        page.wait_for_selector(".vle[data-ready='true']", timeout=30_000)
        # MathJax typesets the page's equations from the local copy.
        page.wait_for_selector("mjx-container", timeout=30_000)
    page.wait_for_load_state("networkidle")
    outside = [u for u in page.log.requests if not u.startswith(site_url) and not u.startswith(LOCAL_SCHEMES)]
    assert not outside, f"requests outside localhost: {outside}"
    assert not page.log.failures, f"failed requests: {page.log.failures}"
    assert not page.log.errors, page.log.errors


def test_renders_after_reload_and_in_a_second_chapter(page, site_url, smoke_site):
    explorers = _open(page, site_url + EXPLORER_PAGE, 2)
    explorers.first.locator("input.vle-slider").first.fill("1.5")
    page.reload(wait_until="networkidle")
    page.wait_for_function("document.querySelectorAll('.vle[data-ready=\"true\"]').length >= 2")
    assert page.locator(".vle").count() == 2

    explorer = _open(page, site_url + SECOND_PAGE, 1).first
    state = _saved_explorers(smoke_site / SECOND_PAGE)[20]
    assert explorer.locator("input.vle-slider").count() == 20
    explorer.locator("input.vle-slider").nth(1).fill("-2")
    shown = explorer.evaluate(READ_IMAGE)
    assert shown["z"][1] == -2
    assert np.abs(np.array(shown["grey"]) - _expected_grey(state, shown["z"])).max() <= GREY_TOLERANCE
    assert not page.log.errors, page.log.errors


def test_saved_progress_bar_renders_offline(page, site_url):
    # The training chapter leaves the last epoch's tqdm bar: an ipywidgets progress bar saved in
    # the page, drawn by the site's own html-manager with no kernel and no CDN.
    page.goto(site_url + "book/training.html", wait_until="networkidle")
    bar = page.locator(".widget-hprogress, .widget-progress").first
    bar.wait_for(timeout=30_000)
    assert bar.is_visible()
    outside = [u for u in page.log.requests if not u.startswith(site_url) and not u.startswith(LOCAL_SCHEMES)]
    assert not outside, f"requests outside localhost: {outside}"
    assert not page.log.errors, page.log.errors
