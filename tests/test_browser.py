"""The app as a person sees it: headless Chromium opens every tab, runs an attack and a synthesis from the page.

The Imagenette models are test_app's stand-ins (first on the checkpoint search path), so the page starts
on them as it will once the real ones ship; the CIFAR-10 models are the shipped ones.

Screenshots go to $ROBGEN_TEST_ARTIFACTS (default out/test-artifacts/, git-ignored). Needs the
`playwright` package and a Chromium binary (`apt-get install chromium`; .ci/run installs it where
it is missing); skips, saying which is missing, where they are absent.
"""

import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import pytest

from tests.conftest import REPO

playwright_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (requirements-test.txt)")
CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs a Chromium binary: apt-get install chromium")
ARTIFACTS = Path(os.environ.get("ROBGEN_TEST_ARTIFACTS", REPO / "out" / "test-artifacts"))

sys.path.insert(0, str(REPO))
import app  # noqa: E402
from robgen.web.model_cache import model_spec, robustness  # noqa: E402
from tests.test_app import NETTE_ROBUST, NETTE_STANDARD, ROBUST, STANDARD, checkpoints_first, ship_imagenette_stand_ins  # noqa: E402,E501


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    checkpoints, examples = ship_imagenette_stand_ins(tmp_path_factory.mktemp("imagenette"))
    with checkpoints_first(checkpoints):
        yield from open_page(app.build_app(adversarial_examples_folder=examples))


def open_page(demo):
    demo.queue(default_concurrency_limit=2)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True,
                            max_file_size=app.MAX_FILE_SIZE, show_error=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        tab = browser.new_page(viewport={"width": 1280, "height": 1000})
        tab.goto(url)
        tab.get_by_text("the generative model inside a classifier").wait_for(timeout=30_000)
        yield tab
        browser.close()
    demo.close()


def open_tab(page, name):
    page.get_by_role("tab", name=name).click()


def test_each_tab_renders_its_controls(page):
    expectations = {
        "Attack": ["button:Attack", "text:eps (/255, L∞)", "text:λ (HE-PGD energy weight)"],
        "Detect": ["button:Detect", "text:calibration energies"],
        "Synthesize": ["button:Synthesize", "button:Translate", "text:automatic step size"],
        "About": ["text:Cite", "text:From Python"],
    }
    for tab, controls in expectations.items():
        open_tab(page, tab)
        for control in controls:
            kind, text = control.split(":", 1)
            locator = (page.get_by_role("button", name=text, exact=True) if kind == "button"
                       else page.get_by_text(text, exact=False).first)
            locator.wait_for(state="visible", timeout=10_000)
        page.screenshot(path=str(ARTIFACTS / f"tab-{tab.lower()}.png"), full_page=True)
        assert (ARTIFACTS / f"tab-{tab.lower()}.png").stat().st_size > 10_000


def test_an_attack_run_from_the_page_shows_a_result(page):
    open_tab(page, "Attack")
    page.locator("input[type=file]").first.set_input_files(str(REPO / "examples" / "rocket.png"))  # not the default
    page.get_by_role("button", name="Attack", exact=True).click()
    result = page.get_by_text("Energy E(x)")
    result.wait_for(state="visible", timeout=60_000)
    assert "→" in result.inner_text()
    page.get_by_text("top-5 after").first.wait_for(state="visible")
    page.screenshot(path=str(ARTIFACTS / "attack-result.png"), full_page=True)


def test_a_bad_upload_shows_its_message_in_the_page(page, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    open_tab(page, "Detect")
    page.locator("input[type=file]").nth(1).set_input_files(str(bad))
    page.get_by_role("button", name="Detect", exact=True).click()
    page.get_by_text("is not an image file").first.wait_for(state="visible", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "detect-bad-upload.png"))  # the viewport, where the message toast is


def fresh(page):
    page.reload()  # a fresh page: the defaults, and no message left over from an earlier test
    page.get_by_text("the generative model inside a classifier").wait_for(timeout=30_000)


def test_the_page_starts_on_imagenette_says_what_the_model_knows_and_follows_the_picked_model(page):
    """Attack and Detect start on the Imagenette model, with its ten classes written out and its own adversarial
    examples; picking the CIFAR-10 model switches the notes, the Detect examples and the Synthesize model."""
    fresh(page)
    picker = page.get_by_label("model (Attack and Detect)")
    assert picker.input_value() == NETTE_STANDARD
    note = page.get_by_text(f"{NETTE_STANDARD} (Imagenette, 160×160 inputs) knows 10 classes").first
    note.wait_for(state="visible", timeout=10_000)
    assert "tench, English springer, cassette player" in note.inner_text() and "parachute" in note.inner_text()
    open_tab(page, "Detect")
    page.get_by_text(f"examples made by {NETTE_STANDARD}").wait_for(state="visible", timeout=10_000)
    assert not page.get_by_text(f"examples made by {STANDARD}").is_visible()
    page.screenshot(path=str(ARTIFACTS / "detect-imagenette.png"), full_page=True)
    open_tab(page, "Synthesize")
    assert page.get_by_label("model to draw from").input_value() == NETTE_ROBUST
    open_tab(page, "Attack")
    picker.click()
    page.get_by_role("option", name=STANDARD, exact=True).click()
    page.get_by_text(f"{STANDARD} (CIFAR-10, 32×32 inputs) knows 10 classes: airplane").first.wait_for(
        state="visible", timeout=10_000)
    open_tab(page, "Detect")
    page.get_by_text(f"examples made by {STANDARD}").wait_for(state="visible", timeout=10_000)
    assert not page.get_by_text(f"examples made by {NETTE_STANDARD}").is_visible()
    open_tab(page, "Synthesize")
    page.wait_for_function(  # the change event's update arrives after the click
        "() => document.querySelector('input[aria-label=\"model to draw from\"]')?.value === '%s'" % ROBUST,
        timeout=10_000)


def test_synthesize_starts_on_a_robust_model_with_an_automatic_step_and_draws_from_the_page(page):
    fresh(page)
    open_tab(page, "Synthesize")
    chosen = page.get_by_label("model to draw from").input_value()
    assert chosen == NETTE_ROBUST and robustness(model_spec(chosen)) == 2  # robust: it draws objects, not noise
    automatic = page.get_by_label("automatic step size")
    assert automatic.is_checked() and not page.get_by_label("step size (L2)").is_visible()
    automatic.uncheck()
    page.get_by_label("step size (L2)").wait_for(state="visible", timeout=10_000)
    assert float(page.get_by_label("step size (L2)").input_value()) > 0
    automatic.check()
    page.get_by_role("button", name="Synthesize", exact=True).click()
    page.get_by_text("p(tench) =").first.wait_for(state="visible", timeout=120_000)
    assert page.get_by_text("p(tench) =").count() == 8
    shot = ARTIFACTS / "synthesize-result.png"
    page.screenshot(path=str(shot), full_page=True)
    with Image.open(shot) as picture:
        colours = np.asarray(picture.convert("RGB").resize((64, 64))).reshape(-1, 3)
        assert picture.width == 1280 and len(np.unique(colours, axis=0)) > 200


def test_an_adaptive_attack_from_the_page_passes_and_its_shipped_example_is_accepted_in_detect(page):
    """On the CIFAR-10 standard model: the Attack tab's "adaptive" method says the detector accepts its result, and
    the Detect tab accepts the shipped `_adaptive` example as natural, drawn above the threshold."""
    fresh(page)
    picker = page.get_by_label("model (Attack and Detect)")
    picker.click()
    page.get_by_role("option", name=STANDARD, exact=True).click()
    page.get_by_text(f"{STANDARD} (CIFAR-10, 32×32 inputs)").first.wait_for(state="visible", timeout=10_000)
    page.get_by_label("adaptive", exact=True).check()
    page.get_by_role("button", name="Attack", exact=True).click()
    page.get_by_text("accepts it as natural").first.wait_for(state="visible", timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "attack-adaptive.png"), full_page=True)
    # its file (the exact pixels, not the enlarged picture), sent to the Detect tab, which opens and accepts it
    page.get_by_role("button", name="Check it in the Detect tab").click()
    verdict = page.get_by_text("flagged as natural").first
    verdict.wait_for(state="visible", timeout=60_000)
    assert page.get_by_role("tab", name="Detect").get_attribute("aria-selected") == "true"
    made_here = verdict.inner_text()
    assert "> threshold" in made_here
    page.screenshot(path=str(ARTIFACTS / "detect-adaptive-from-attack.png"), full_page=True)
    example = REPO / "examples" / "adversarial" / STANDARD / "chelsea_adaptive.png"
    page.locator("input[type=file]").nth(1).set_input_files(str(example))
    page.get_by_role("button", name="Detect", exact=True).click()
    playwright_api.expect(verdict).not_to_have_text(made_here, timeout=60_000)  # the example's own verdict
    assert "flagged as natural" in verdict.inner_text() and "> threshold" in verdict.inner_text()
    page.screenshot(path=str(ARTIFACTS / "detect-adaptive.png"), full_page=True)


def test_a_change_of_model_clears_the_attacks_file_so_another_model_never_judges_it(page):
    """The file under the Attack tab's result belongs to the model that made it: after a change of model the
    "Check it in the Detect tab" button asks for a new attack instead of showing another model's verdict."""
    fresh(page)
    page.get_by_role("button", name="Attack", exact=True).click()
    page.get_by_text("Energy E(x)").first.wait_for(state="visible", timeout=60_000)
    page.get_by_text("adversarial-exact-").first.wait_for(state="visible", timeout=10_000)
    picker = page.get_by_label("model (Attack and Detect)")
    picker.click()
    page.get_by_role("option", name=STANDARD, exact=True).click()
    page.get_by_text(f"{STANDARD} (CIFAR-10, 32×32 inputs)").first.wait_for(state="visible", timeout=10_000)
    # the change's events run one after another: the file goes once its clearing event has run (a busy machine
    # ran the click first)
    page.get_by_text("adversarial-exact-").first.wait_for(state="hidden", timeout=30_000)
    page.get_by_role("button", name="Check it in the Detect tab").click()
    page.get_by_text("Run an attack first").first.wait_for(state="visible", timeout=30_000)
    assert page.get_by_role("tab", name="Attack").get_attribute("aria-selected") == "true"
