"""End to end in a real browser: `streamlit run app.py` on 127.0.0.1, driven by playwright on Debian's Chromium.

Screenshots go to test-artifacts/browser/ (git-ignored). Without /usr/bin/chromium the test skips, unless
TAME_REQUIRE_BROWSER=1 (as in CI), where a missing browser fails it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LONG = 240_000  # ms: model load and CPU work on a busy 2-core runner


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install -y chromium)"
        if os.environ.get("TAME_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="module")
def server(chromium, random_head_path, tmp_path_factory):
    """The app on a free port; the bundled head when there is one, else the untrained test head."""
    from tame_core.explainer import bundled_head_path

    port = _free_port()
    env = dict(os.environ)
    if not bundled_head_path("efficientnet_lite0").exists():
        env["TAME_HEAD"] = str(random_head_path)
    log = (tmp_path_factory.mktemp("server") / "streamlit.log").open("w")
    command = [
        sys.executable, "-m", "streamlit", "run", "app.py",
        "--server.address", "127.0.0.1", "--server.port", str(port), "--server.headless", "true",
        "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # the health endpoint answers once the server listens
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"streamlit did not start (exit code {process.poll()}); see {log.name}")
                time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def nav(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click()


def test_upload_explain_toggle_and_curves_in_a_real_browser(server, browser, tmp_path, sample_images):
    photo = tmp_path / "chelsea.png"
    Image.fromarray(sample_images["chelsea"]).save(photo)
    notes = tmp_path / "notes.jpg"
    notes.write_text("a shopping list, not a photo")

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(server)
    page.get_by_role("heading", name="Explain").wait_for(timeout=LONG)

    # upload a photo and a text file named .jpg: the photo is explained, the other named in an error
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files([str(photo), str(notes)])
    overlay_caption = page.get_by_text("p = ").first
    overlay_caption.wait_for(timeout=LONG)
    error = page.locator('[data-testid="stAlertContentError"]').first
    error.wait_for(timeout=LONG)
    assert error.inner_text().startswith("notes.jpg: not an image")
    assert page.locator('[data-testid="stImage"]').count() >= 2  # the overlay and the raw map
    shot(page, "01-explain")

    # switch class through the searchable picker
    page.locator('[data-testid="stSelectbox"]').filter(has_text="Explain class").click()
    page.keyboard.type("tabby")
    page.keyboard.press("Enter")
    page.get_by_text("tabby (281): p = ").wait_for(timeout=LONG)
    shot(page, "02-class-switch")

    # toggle a branch off: the map is re-fused and that branch's tile says so
    nav(page, "Branches")
    page.get_by_role("heading", name="Branches").wait_for(timeout=LONG)
    page.get_by_text("AD100").first.wait_for(timeout=LONG)
    first_toggle = page.locator('[data-testid="stWidgetLabel"]').filter(has_text="blocks.2").first
    first_toggle.click()
    page.get_by_text("blocks.2 (off)").wait_for(timeout=LONG)
    page.get_by_text("map from blocks.4 + blocks.6").wait_for(timeout=LONG)
    shot(page, "03-branch-off")

    # the deletion curves: plots appear and fill in; the AUC table when done
    nav(page, "Deletion curves")
    page.locator(".js-plotly-plot").first.wait_for(timeout=LONG)
    assert page.locator(".js-plotly-plot").count() == 2
    page.get_by_text("Deletion and insertion curves: done in").wait_for(timeout=LONG * 2)
    page.locator(".js-plotly-plot .scatterlayer .trace").first.wait_for(state="attached", timeout=LONG)
    shot(page, "04-deletion-curves")

    # a second browser session sees none of the first one's images
    other = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    other.goto(server)
    other.get_by_role("heading", name="Explain").wait_for(timeout=LONG)
    other.get_by_text("None yet: upload images").wait_for(timeout=LONG)
    assert other.get_by_text("chelsea.png").count() == 0
    shot(other, "05-second-session")
    other.context.close()

    nav(page, "Demo mode")
    page.get_by_text("the model sees").wait_for(timeout=LONG)
    page.get_by_role("button", name="Next ▶").click()
    page.get_by_text("Cup of coffee: the model sees").wait_for(timeout=LONG)
    shot(page, "06-demo")
    context.close()
