"""The README's picture of the web demo (docs/images/app.png): the app serving the offline demo model, in Debian's
chromium driven by playwright, after grounding the first example scene's phrases.

    python tools/screenshot_app.py [--checkpoint CKPT] [--output docs/images/app.png]

The checkpoint defaults to the offline demo's (`make demo`, found by demo_checkpoint under logs/). Needs chromium
(`apt-get install chromium`) and the dev extra (gradio, playwright). The same checkpoint gives the same picture.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import tempfile
from pathlib import Path

from synground.inference.app import build_app, load_models, write_examples
from synground.runs import demo_checkpoint

VIEWPORT = {"width": 1400, "height": 900}


def screenshot(checkpoint: Path, output: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    if shutil.which("chromium") is None:
        raise SystemExit("Debian's chromium is not installed: apt-get install chromium")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as examples_dir:
        examples = write_examples(Path(examples_dir))
        demo = build_app(load_models([checkpoint]), examples)
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
                page = browser.new_page(viewport=VIEWPORT)
                page.goto(f"http://127.0.0.1:{port}")
                # the first example fills in its image and phrases, as a visitor's click does
                page.locator("table").filter(has_text="Phrases").locator("tbody tr").first.click()
                expect(page.get_by_label("Phrases")).to_have_value(re.compile(r"\w"))
                page.get_by_role("button", name="Ground").click()
                expect(page.locator("#overlays img")).to_have_count(len(examples[0][1].split(";")), timeout=60_000)
                page.wait_for_load_state("networkidle")
                output.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=output, full_page=True)
                browser.close()
        finally:
            demo.close()
    print(f"wrote {output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint or export directory (default: the offline demo's)")
    parser.add_argument("--output", type=Path, default=Path("docs/images/app.png"))
    args = parser.parse_args()
    checkpoint = args.checkpoint or demo_checkpoint("logs")
    if checkpoint is None:
        raise SystemExit("no offline demo model under logs/: train it with make demo, or give --checkpoint")
    screenshot(checkpoint, args.output)


if __name__ == "__main__":
    main()
