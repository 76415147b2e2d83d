"""The web demo (app.py) in a real browser: Debian's chromium, driven by playwright, uploads an image to the page that
`python app.py ckpt_path=[...]` serves, types a phrase and reads the points, scores and overlays the page shows, which
must be the Grounder's; a file that is not an image and an empty phrase get a message in the page. Skipped where
chromium or playwright is missing, except in CI (.ci/run installs chromium).
"""

import io
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support import ROOT
from support.checkpoints import tiny_checkpoint
from support.free_port import free_port
from synground.inference.app import demo_model, enlarged, split_phrases
from synground.inference.export import export_model
from synground.inference.grounder import Grounder
from synground.inference.overlays import render_overlay
from synground.shapes.world import ShapesGenerator

RESULT_ROWS = "#results [role=row]:has([role=gridcell])"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[Path]:
    """The two models the page compares: a training checkpoint and an export directory (another tiny model)."""
    root = tmp_path_factory.mktemp("models")
    return [tiny_checkpoint(root / "run-a", seed=0), export_model(tiny_checkpoint(root / "run-b", seed=1), root / "export-b")]


@pytest.fixture(scope="module")
def app_url(models, tmp_path_factory):
    """`python app.py ckpt_path=[checkpoint,export]` on a free port, until the module's tests are done."""
    run_dir = tmp_path_factory.mktemp("app")
    port = free_port()
    log_file = (run_dir / "app.out").open("w")
    app = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "app.py"),
            f"ckpt_path=[{models[0]},{models[1]}]",
            f"server_port={port}",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=run_dir,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(run_dir / "gradio")},
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                output = (run_dir / "app.out").read_text()
                assert app.poll() is None, f"app.py exited with {app.returncode}:\n{output[-3000:]}"
                assert time.time() < deadline, f"app.py did not serve port {port} within 120 s:\n{output[-3000:]}"
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        app.terminate()
        app.wait(timeout=30)
        log_file.close()


@pytest.fixture(scope="module")
def browser():
    missing = None if shutil.which("chromium") else "Debian's chromium is not installed (apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed (pip install playwright)"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {missing}")
        pytest.skip(missing)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app_url):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(30_000)
    page.goto(app_url)
    yield page
    page.close()


def ground_in_page(page, image: Path, phrases: str) -> None:
    page.locator("input[type=file]").first.set_input_files(image)
    page.get_by_label("Phrases").fill(phrases)
    page.get_by_role("button", name="Ground").click()


@pytest.mark.browser
def test_the_page_shows_the_grounders_point_score_and_overlay_for_each_model(page, models, tmp_path):
    image = tmp_path / "scene.png"
    scene = ShapesGenerator(style="textured").scene("scene", seed=3000000)
    scene.image.save(image)
    phrase = scene.regions[0].phrase

    ground_in_page(page, image, phrase)
    rows = page.locator(RESULT_ROWS)
    rows.nth(len(models) - 1).wait_for()
    shown = [[cell.strip() for cell in row.get_by_role("gridcell").all_inner_texts()] for row in rows.all()]
    overlays = page.locator("#overlays img")
    assert overlays.count() == len(models) and len(shown) == len(models)
    for row, source, overlay in zip(shown, models, overlays.all()):
        grounder = Grounder.load(source)
        [expected] = grounder(image, phrase)
        assert row[:2] == [phrase, grounder.name]
        assert (int(row[2]), int(row[3])) == expected.point
        assert float(row[4]) == pytest.approx(expected.score, abs=1e-4)
        # the picture itself: the map with the cross at that point, as render_overlay draws it
        picture = Image.open(io.BytesIO(page.request.get(overlay.get_attribute("src")).body()))
        drawn = np.asarray(enlarged(render_overlay(scene.image, expected, caption=False)), dtype=int)
        assert np.abs(np.asarray(picture.convert("RGB"), dtype=int) - drawn).max() <= 1


@pytest.mark.browser
def test_a_file_that_is_not_an_image_and_an_empty_phrase_get_a_message_in_the_page(page, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("a text file with an image's name\n")
    ground_in_page(page, not_an_image, "the red circle")
    page.get_by_text("notes.png is not an image that can be read: upload a PNG, JPEG or other image file").wait_for()

    image = tmp_path / "scene.png"
    ShapesGenerator(style="clean").scene("scene", seed=2000000).image.save(image)
    ground_in_page(page, image, " ; \n")
    page.get_by_text("No phrase: type one or more phrases, one per line or separated by ';'").wait_for()
    assert page.locator(RESULT_ROWS).count() == 0


def test_phrases_are_split_on_lines_and_semicolons_skipping_blank_pieces():
    assert split_phrases("the red circle\nthe blue square; the green triangle;\n\n") == [
        "the red circle",
        "the blue square",
        "the green triangle",
    ]
    assert split_phrases(" ; \n") == [] and split_phrases(None) == []


def test_without_a_checkpoint_the_offline_demo_model_is_trained_first_and_then_found(tmp_path, caplog):
    """demo_model runs the training script when logs/shapes has no finished run; a stand-in script writes the run as
    train.py does (checkpoint and metrics.json), so the test takes a second instead of five minutes."""
    train_script = tmp_path / "train.py"
    train_script.write_text(
        textwrap.dedent(
            """
            import sys
            from pathlib import Path

            assert sys.argv[1] == "experiment=shapes", sys.argv
            run = Path(sys.argv[2].removeprefix("paths.log_dir=")) / "shapes" / "runs" / "2026-01-01_00-00-00"
            (run / "checkpoints").mkdir(parents=True)
            (run / "checkpoints" / "epoch004.ckpt").write_text("weights")
            (run / "metrics.json").write_text("{}")
            """
        )
    )
    with caplog.at_level(logging.WARNING, logger="synground.inference.app"):
        checkpoint = demo_model(tmp_path / "logs", [sys.executable, str(train_script)])
    assert checkpoint == tmp_path / "logs" / "shapes" / "runs" / "2026-01-01_00-00-00" / "checkpoints" / "epoch004.ckpt"
    assert "no offline demo model yet: training it first with python train.py experiment=shapes" in caplog.text
    # once it exists, nothing is trained again
    train_script.write_text("raise SystemExit(1)")
    assert demo_model(tmp_path / "logs", [sys.executable, str(train_script)]) == checkpoint

    with pytest.raises(RuntimeError, match="training the offline demo model failed"):
        demo_model(tmp_path / "other_logs", [sys.executable, str(train_script)])
