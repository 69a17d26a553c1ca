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
    """(url, tapped layers) of the app on a free port: the bundled head when there is one, else the test head."""
    from tame_core.checkpoint import read_metadata
    from tame_core.explainer import bundled_head_path

    port = _free_port()
    env = dict(os.environ)
    head = bundled_head_path("efficientnet_lite0")
    if not head.exists():
        head = random_head_path
        env["TAME_HEAD"] = str(head)
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
        yield url, read_metadata(head).layers
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
    try:
        drive(page, server, browser, photo, notes)
    except Exception:
        shot(page, "failure")  # what the page showed when a wait gave up
        raise
    finally:
        context.close()


def images_loaded(page, count: int) -> None:
    """Wait until ``count`` pictures in the page body have arrived and decoded (screenshots show them)."""
    page.wait_for_function(
        """count => [...document.querySelectorAll('[data-testid="stMain"] [data-testid="stImage"] img')]
            .filter(img => img.complete && img.naturalWidth > 0).length >= count""",
        arg=count,
        timeout=LONG,
    )


def main_image(page):
    return page.locator('[data-testid="stMain"] [data-testid="stImage"] img').first


def drive(page, server: tuple[str, list[str]], browser, photo: Path, notes: Path) -> None:
    url, layers = server
    page.goto(url)
    page.get_by_role("heading", name="Explain").wait_for(timeout=LONG)

    # upload a photo and a text file named .jpg: the photo is explained, the other named in an error
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files([str(photo), str(notes)])
    overlay_caption = page.get_by_text("p = ").first
    overlay_caption.wait_for(timeout=LONG)
    error = page.locator('[data-testid="stAlertContentError"]').first
    error.wait_for(timeout=LONG)
    assert error.inner_text().startswith("notes.jpg: not an image")
    images_loaded(page, 2)  # the overlay and the raw map
    page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=LONG)  # the top-5
    shot(page, "01-explain")

    # switch class through the searchable picker
    page.locator('[data-testid="stSelectbox"]').filter(has_text="Explain class").click()
    page.keyboard.type("tabby")
    page.keyboard.press("Enter")
    page.get_by_text("tabby (281): p = ").wait_for(timeout=LONG)
    images_loaded(page, 2)
    shot(page, "02-class-switch")

    # toggle a branch off: the map is re-fused and that branch's tile says so
    nav(page, "Branches")
    page.get_by_role("heading", name="Branches").wait_for(timeout=LONG)
    page.get_by_text("AD100").first.wait_for(timeout=LONG)
    page.get_by_text(f"map from {' + '.join(layers)}").wait_for(timeout=LONG)
    all_branches = main_image(page).get_attribute("src")
    # the deepest branch: the one every trained head leans on, so switching it off must change the map
    page.locator('[data-testid="stWidgetLabel"]').filter(has_text=layers[-1]).first.click()
    page.get_by_text(f"{layers[-1]} (off)").wait_for(timeout=LONG)
    page.get_by_text(f"map from {' + '.join(layers[:-1])}").wait_for(timeout=LONG)
    assert main_image(page).get_attribute("src") != all_branches  # a new map (media URLs are content hashes)
    images_loaded(page, 1 + len(layers))  # the map and each branch's contribution
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
    other.goto(url)
    other.get_by_role("heading", name="Explain").wait_for(timeout=LONG)
    other.get_by_text("None yet: upload images").wait_for(timeout=LONG)
    other.get_by_role("button", name="Chelsea the cat").wait_for(timeout=LONG)  # the page has finished drawing
    assert other.get_by_text("chelsea.png").count() == 0
    shot(other, "05-second-session")
    other.context.close()

    nav(page, "Demo mode")
    page.get_by_text("the model sees").wait_for(timeout=LONG)
    page.get_by_role("button", name="Next ▶").click()
    page.get_by_text("Cup of coffee: the model sees").wait_for(timeout=LONG)
    images_loaded(page, 2)
    shot(page, "06-demo")
