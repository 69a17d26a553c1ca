"""End to end in a real browser: `streamlit run app.py` on 127.0.0.1, driven by playwright on Debian's Chromium.

Screenshots go to test-artifacts/browser/ (git-ignored). Without /usr/bin/chromium the test skips, unless
TAME_REQUIRE_BROWSER=1 (as in CI), where a missing browser fails it.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from PIL import Image
from app_server import running_app
from noise_images import noise_folder

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
SERVER_LOG: dict[str, Path] = {}  # where the app server under test writes its log



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
    from tame_core.heads import bundled_head_path

    env = dict(os.environ)
    head = bundled_head_path("efficientnet_lite0")
    if not head.exists():
        head = random_head_path
        env["TAME_HEAD"] = str(head)
    log = (tmp_path_factory.mktemp("server") / "streamlit.log").open("w")
    SERVER_LOG["path"] = Path(log.name)
    try:
        with running_app(log, env) as url:
            yield url, read_metadata(head).layers
    finally:
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

    context = browser.new_context(viewport={"width": 1400, "height": 1700})
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
    from playwright.sync_api import expect

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
    page.locator('[data-testid="stRadio"]').first.wait_for(timeout=LONG)  # the top-5
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
    every = r" \+ ".join(r"[a-z ]+ \(" + re.escape(layer) + r"\)" for layer in layers)  # "fine detail (blocks.4) + ..."
    page.get_by_text(re.compile(f"map from {every}$")).wait_for(timeout=LONG)
    all_branches = main_image(page).get_attribute("src")
    # the deepest branch: the one every trained head leans on, so switching it off must change the map
    page.locator('[data-testid="stWidgetLabel"]').filter(has_text=layers[-1]).first.click()
    page.get_by_text(re.compile(re.escape(layers[-1]) + r", \d+×\d+\) \(off\)")).wait_for(timeout=LONG)
    rest = r" \+ ".join(r"[a-z ]+ \(" + re.escape(layer) + r"\)" for layer in layers[:-1])
    page.get_by_text(re.compile(f"map from {rest}$")).wait_for(timeout=LONG)
    assert main_image(page).get_attribute("src") != all_branches  # a new map (media URLs are content hashes)
    images_loaded(page, 1 + len(layers))  # the map and each branch's contribution
    shot(page, "03-branch-off")

    # the deletion curves: plots appear and fill in; the AUC table when done
    nav(page, "Deletion curves")
    page.locator(".js-plotly-plot").first.wait_for(timeout=LONG)
    # two plots, deletion and insertion; a count while the page redraws them can catch a third, passing one
    expect(page.locator(".js-plotly-plot")).to_have_count(2, timeout=LONG)
    page.get_by_text(re.compile(r"Deletion and insertion curves \(estimated .*\): done in")).wait_for(timeout=LONG * 2)
    page.locator(".js-plotly-plot .scatterlayer .trace").first.wait_for(state="attached", timeout=LONG)
    shot(page, "04-deletion-curves")

    # a second browser session sees none of the first one's images
    other = browser.new_context(viewport={"width": 1400, "height": 1700}).new_page()
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
    page.get_by_text("Grace Hopper: the model sees").wait_for(timeout=LONG)
    picture_with_caption(page, "Grace Hopper ·")
    shot(page, "06-demo")


# --- the app under real use: Stop, demo samples, resume ------------------------------------------------
@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1700})
    opened = context.new_page()
    yield opened
    context.close()


def pick_chelsea(page, url: str) -> None:
    page.goto(url)
    page.get_by_role("heading", name="Explain").wait_for(timeout=LONG)
    page.get_by_role("button", name="Chelsea the cat").click()
    page.get_by_text("p = ").first.wait_for(timeout=LONG)


def choose(page, label: str, option: str) -> None:
    """Add ``option`` (shown as "option: description") to the multiselect labelled ``label``."""
    box = page.locator('[data-testid="stMultiSelect"]').filter(has_text=label)
    box.locator("input").click()
    page.keyboard.type(option)
    page.get_by_role("option", name=re.compile(f"^{re.escape(option)}:")).click()
    box.get_by_text(re.compile(f"^{re.escape(option)}:")).wait_for(timeout=LONG)  # the chip: chosen
    page.keyboard.press("Escape")


def test_stop_ends_score_cam_and_says_when_in_a_real_browser(server, page):
    url, _ = server
    try:
        pick_chelsea(page, url)
        nav(page, "Compare")
        page.get_by_text(re.compile(r"Comparing methods \(estimated .*\): done in")).wait_for(timeout=LONG)  # quick: ran at once
        page.get_by_text(re.compile(r"layercam: median of")).first.wait_for(timeout=LONG)  # the last baseline's row: all drawn
        images_loaded(page, 4)  # the four maps
        shot(page, "07-compare-costs")
        choose(page, "Baselines", "scorecam")
        choose(page, "Baselines", "rise")  # 4,000 forwards: long enough anywhere to wait for a click
        run = page.get_by_role("button", name="Run scorecam, rise:")
        run.wait_for(timeout=LONG)
        assert "forward passes)" in run.inner_text()  # the cost is said before anything starts
        page.get_by_text(re.compile(r"layercam: median of")).first.wait_for(timeout=LONG)  # the rerun drew its table
        images_loaded(page, 4)
        shot(page, "08-compare-estimate")
        run.click()
        # live count: Score-CAM's 1,281 and the 5 TAME runs that time it
        page.get_by_text(re.compile(r"[1-9][\d,]* of 1,286 forward passes")).first.wait_for(timeout=LONG)
        shot(page, "09-scorecam-running")
        clicked = time.monotonic()
        page.get_by_role("button", name="Stop").click()
        stopped = page.get_by_text("stopped", exact=False).filter(has_text="after you asked")
        stopped.wait_for(timeout=30_000)
        seen = time.monotonic() - clicked
        message = stopped.inner_text()
        server_side = float(message.split("stopped ")[1].split(" s after")[0])
        record_latency("browser: Score-CAM in Compare (server side)", server_side)
        record_latency("browser: Score-CAM in Compare (click to message on screen)", seen)
        assert server_side >= 0, message  # the figure is recorded; the server tests count forwards instead of timing
        page.get_by_role("button", name="Run scorecam, rise:").wait_for(timeout=LONG)  # offered again, not restarted
        page.get_by_text(re.compile(r"layercam: median of")).first.wait_for(timeout=LONG)  # what was finished: drawn
        images_loaded(page, 4)
        shot(page, "10-scorecam-stopped")
    except Exception:
        shot(page, "failure-stop")
        raise


def test_closing_the_tab_stops_its_jobs(server, browser):
    """RISE left running in a tab that is then closed: the server stops it (the session is gone)."""
    url, _ = server
    context = browser.new_context(viewport={"width": 1400, "height": 1700})
    page = context.new_page()
    try:
        pick_chelsea(page, url)
        nav(page, "Compare")
        page.get_by_text(re.compile(r"Comparing methods \(estimated .*\): done in")).wait_for(timeout=LONG)
        choose(page, "Baselines", "rise")
        page.get_by_role("button", name="Run rise:").click()
        page.get_by_text(re.compile(r"[1-9][\d,]* of 4,005 forward passes")).first.wait_for(timeout=LONG)  # and 5 TAME runs
        shot(page, "15-rise-before-closing")
    except Exception:
        shot(page, "failure-close")
        raise
    log = SERVER_LOG["path"]
    before = log.read_text().count("its browser session ended")
    closed = time.monotonic()
    context.close()
    deadline = closed + 60
    while log.read_text().count("its browser session ended") == before:
        assert time.monotonic() < deadline, "the job outlived its closed tab by a minute"
        time.sleep(0.25)  # polling a log file: no page to wait on
    record_latency("browser: RISE stopped after its tab closed (close to stop)", time.monotonic() - closed)


def test_demo_mode_shows_each_curated_sample_predicted_as_stated(server, page):
    from tame_core.studio import DEMO

    url, _ = server
    names = imagenet_names()
    try:
        page.goto(url)
        page.get_by_role("heading", name="Explain").wait_for(timeout=LONG)
        nav(page, "Demo mode")
        for position, (key, sample) in enumerate(DEMO.items()):
            title = page.get_by_role("heading", level=2).filter(has_text=f"{sample.title}: the model sees")
            title.wait_for(timeout=LONG)
            assert f"the model sees {names[sample.expected]} (" in title.inner_text(), title.inner_text()
            picture_with_caption(page, f"{sample.title} · ")  # this sample's photo, not the last one's
            picture_with_caption(page, f"Where it looks for {names[sample.expected]}")  # no class index
            assert page.locator('[data-testid="stMain"] [data-testid="stProgress"]').count() == 0
            assert page.get_by_role("button", name="Stop").count() == 0  # no job controls in a presentation
            shot(page, f"11-demo-{position + 1}-{key}")
            page.get_by_role("button", name="Next ▶").click()
    except Exception:
        shot(page, "failure-demo")
        raise


def test_stop_and_resume_keep_the_whole_loss_history_in_a_real_browser(server, page, tmp_path):
    url, _ = server
    data = noise_folder(tmp_path / "images", 8)
    name = f"browser-resume-{os.getpid()}"
    try:
        page.goto(url)
        nav(page, "Train")
        page.get_by_role("heading", name="Train a head").wait_for(timeout=LONG)
        page.get_by_label("Folder (searched recursively)").fill(str(data))
        page.get_by_role("textbox", name="Save as (head name)").fill(name)
        page.get_by_label("Epochs").fill("20")
        page.get_by_label("Epochs").press("Enter")
        batch = page.locator('[data-testid="stSlider"]').filter(has_text="Batch size").get_by_role("slider")
        batch.focus()
        for _ in range(2):  # 16 -> 8 -> 4: two steps an epoch, forty in all
            page.keyboard.press("ArrowLeft")
        page.locator('[data-testid="stSliderThumbValue"]').filter(has_text=re.compile(r"^4$")).wait_for(timeout=LONG)
        page.get_by_role("button", name="Start training").click()
        progress = page.locator('[data-testid="stProgress"]').first
        progress.wait_for(timeout=10_000)  # something to read from the first second on
        first_words = progress.inner_text()
        assert any(word in first_words for word in ("Starting", "Loading the backbone", "Checking", "Training on", "step")), first_words
        shot(page, "12-train-first-seconds")
        page.locator(".js-plotly-plot").first.wait_for(timeout=LONG)
        page.get_by_role("button", name="Stop").click()
        page.get_by_text("Stopped at step").wait_for(timeout=LONG)
        assert page.locator('[data-testid="stAlertContentSuccess"]').count() == 0  # not "Saved"
        assert page.get_by_text("a new run replaces it").count() == 0  # no warning about our own run
        before = plotted_steps(page)
        assert before == list(range(1, len(before) + 1)) and len(before) < 40
        shot(page, "13-train-stopped")
        page.get_by_role("button", name="Resume the stopped run").click()
        page.get_by_text("Saved ").wait_for(timeout=LONG)
        page.wait_for_function(
            "() => document.querySelector('.js-plotly-plot')?.data?.[0]?.x?.length === 40", timeout=LONG
        )
        assert plotted_steps(page) == list(range(1, 41))  # steps 1..n from before the stop are still there
        shot(page, "14-train-resumed")
    except Exception:
        shot(page, "failure-train")
        raise
    finally:
        for leftover in (ROOT / "checkpoints").glob(f"{name}.*"):
            leftover.unlink()


def picture_with_caption(page, caption: str) -> None:
    """Wait until the picture captioned ``caption`` has loaded and decoded."""
    figure = page.locator('[data-testid="stImage"]').filter(has_text=caption).first
    figure.wait_for(timeout=LONG)
    figure.locator("img").evaluate("img => img.decode()")


def plotted_steps(page) -> list[int]:
    return page.evaluate("() => Array.from(document.querySelector('.js-plotly-plot').data[0].x)")


def imagenet_names() -> tuple[str, ...]:
    from tame_core.classes import imagenet_class_names

    return imagenet_class_names()


def record_latency(name: str, seconds: float) -> None:
    path = ROOT / "test-artifacts" / "stop-latencies.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    known = json.loads(path.read_text()) if path.exists() else {}
    known[name] = round(seconds, 3)
    path.write_text(json.dumps(known, indent=2, sort_keys=True))


# --- every table fits at the sizes people demo on -------------------------------------------------------
SIZES = ((1280, 800), (1920, 1080))
#: Tables that need a horizontal scroll to be read, as "what (scrollWidth > clientWidth)": st.dataframe
#: (glide data grid) scrolls in its .dvn-scroller; st.table and html tables in their nearest clipping box.
OVERFLOWING_TABLES = """() => {
    const bad = [];
    const visible = element => element.offsetParent !== null && element.clientWidth > 0;
    const check = (what, element) => {
        if (visible(element) && element.scrollWidth > element.clientWidth + 1)
            bad.push(`${what} (${element.scrollWidth} > ${element.clientWidth})`);
    };
    const clipping = element => {
        for (let box = element.parentElement; box && box !== document.body; box = box.parentElement)
            if (getComputedStyle(box).overflowX !== 'visible') return box;
        return document.scrollingElement;
    };
    const heading = element => (element.innerText || '').split('\\n')[0].slice(0, 40);
    document.querySelectorAll('[data-testid="stDataFrame"]').forEach((frame, index) =>
        check(`dataframe ${index + 1}`, frame.querySelector('.dvn-scroller') || frame));
    document.querySelectorAll('[data-testid="stTable"]').forEach((table, index) => {
        check(`st.table ${index + 1}: ${heading(table)}`, table);
        table.querySelectorAll('*').forEach(inner => {
            if (['auto', 'scroll', 'hidden', 'clip'].includes(getComputedStyle(inner).overflowX))
                check(`st.table ${index + 1}: ${heading(table)}`, inner);
        });
    });
    document.querySelectorAll('table').forEach((table, index) => {
        if (!table.closest('[data-testid="stDataFrame"]'))
            check(`table ${index + 1}: ${heading(table)}`, clipping(table));
    });
    return bad;
}"""


CONTENT_HEIGHT = """() => Math.max(...['[data-testid="stMain"]', '[data-testid="stAppViewContainer"]']
    .map(selector => document.querySelector(selector)?.scrollHeight || 0), document.scrollingElement.scrollHeight)"""


def screenshot_folder(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("TAME_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def tables_fit(page, name: str, folder: Path, problems: list[str]) -> None:
    """At each size: a screenshot, and into ``problems`` every table wider than its box (once the grid has
    re-laid itself out) and any None/nan written into the page's text."""
    for width, height in SIZES:
        page.set_viewport_size({"width": width, "height": height})
        try:  # a grid re-lays itself out a frame or two after a resize
            page.wait_for_function(f"() => ({OVERFLOWING_TABLES})().length === 0", timeout=3_000)
        except Exception:  # noqa: BLE001 - the assertion below says which table
            pass
        problems += [f"{name} at {width}x{height}: {table}" for table in page.evaluate(OVERFLOWING_TABLES)]
        text = page.locator('[data-testid="stMain"]').inner_text()
        problems += [f"{name} at {width}x{height} shows {word!r}" for word in re.findall(r"\b(?:None|nan|NaN)\b", text)]
        # the page scrolls inside stMain, which a full-page screenshot does not follow: as tall as its content
        page.mouse.move(0, 0)  # no hover toolbar over the picture
        tall = page.evaluate(CONTENT_HEIGHT)
        page.set_viewport_size({"width": width, "height": max(height, tall)})
        page.screenshot(path=str(folder / f"{name}-{width}x{height}.png"))


def test_every_table_fits_at_1280_and_1920(server, page, tmp_path):
    url, _ = server
    folder = screenshot_folder(tmp_path)
    data = noise_folder(tmp_path / "images", 2)
    problems: list[str] = []
    try:
        pick_chelsea(page, url)
        images_loaded(page, 2)
        page.locator('[data-testid="stRadio"]').first.wait_for(timeout=LONG)
        tables_fit(page, "explain", folder, problems)

        nav(page, "Branches")
        page.get_by_text("AD100").first.wait_for(timeout=LONG)
        page.get_by_text("Every combination of branches").click()
        expect_tables(page, 2)  # one picture's probabilities, every combination
        tables_fit(page, "branches", folder, problems)

        nav(page, "Deletion curves")
        page.get_by_text(re.compile(r"Deletion and insertion curves \(estimated .*\): done in")).wait_for(timeout=LONG * 2)
        expect_tables(page, 1)  # the AUCs
        tables_fit(page, "curves", folder, problems)

        nav(page, "Compare")
        page.get_by_text(re.compile(r"Comparing methods \(estimated .*\): done in")).wait_for(timeout=LONG)
        page.get_by_text(re.compile(r"layercam: median of")).first.wait_for(timeout=LONG)  # the last row: the final drawing
        expect_tables(page, 1)  # the costs
        images_loaded(page, 4)  # the four maps
        tables_fit(page, "compare", folder, problems)

        nav(page, "Train")
        page.get_by_role("heading", name="Train a head").wait_for(timeout=LONG)
        page.get_by_text("Choose the images and at least one layer to start.").wait_for(timeout=LONG)  # all drawn
        tables_fit(page, "train", folder, problems)

        nav(page, "Evaluate")
        page.get_by_label("Folder of images (searched recursively)").fill(str(data))
        page.get_by_label("Folder of images (searched recursively)").press("Enter")
        steps = page.locator('[data-testid="stSlider"]').filter(has_text="Curve steps")
        steps.get_by_role("slider").focus()
        for _ in range(3):  # 50 -> 25 -> 20 -> 10 curve steps: a quick run
            page.keyboard.press("ArrowLeft")
        steps.locator('[data-testid="stSliderThumbValue"]').filter(has_text=re.compile(r"^10$")).wait_for(timeout=LONG)
        page.get_by_role("button", name=re.compile(r"^Evaluate 2 images")).click()
        page.get_by_role("heading", name="Paired comparison").wait_for(timeout=LONG)
        expect_tables(page, 4)  # the means (faithfulness, costs), image by image, the paired comparison
        tables_fit(page, "evaluate", folder, problems)

        nav(page, "Demo mode")
        page.get_by_text("the model sees").wait_for(timeout=LONG)
        images_loaded(page, 2)
        tables_fit(page, "demo", folder, problems)
    except Exception:
        shot(page, "failure-tables")
        raise
    assert not problems, "\n".join(problems)


def expect_tables(page, count: int) -> None:
    from playwright.sync_api import expect

    expect(page.locator('[data-testid="stMain"] [data-testid="stDataFrame"]')).to_have_count(count, timeout=LONG)
