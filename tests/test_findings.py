"""docs/findings.md is what the committed results files give: no number on it is typed by hand or left stale."""

import subprocess
import sys

from support import ROOT


def test_the_findings_page_is_what_the_committed_results_files_give():
    check = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "findings.py"), "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
