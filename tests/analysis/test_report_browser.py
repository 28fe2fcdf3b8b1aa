"""The report in a real browser: headless Chromium loads it from disk with networking off; no
JavaScript errors, no requests, every figure drawn, every image decoded, no user text run as
script. The screenshot is kept in test-artifacts/ (or $SCALINGLAB_TEST_ARTIFACTS)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from analysis.records import TRIALS
from analysis.report import fit_and_report
from analysis.report.browser import chromium_path, render_check, sort_check
from analysis.store import ResultsStore
from analysis.task_tables import TASKS_FILE, run_tasks
from tests.analysis.report_data import make_results
from tests.conftest import REPO

ARTIFACTS = Path(os.environ.get("SCALINGLAB_TEST_ARTIFACTS", REPO / "test-artifacts"))


def _need_browser():
    pytest.importorskip("playwright", reason="needs the dev extras: pip install -e .[dev]")
    if chromium_path() is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test: cluster/install.sh --dev installs Debian's chromium")
        pytest.skip("no Chromium (cluster/install.sh --dev installs it)")


@pytest.mark.browser
@pytest.mark.slow
def test_report_renders_offline_in_chromium_with_every_figure_drawn_and_sorts_on_click(tmp_path):
    _need_browser()
    folder = make_results(tmp_path / "synthetic")
    tasks = run_tasks(folder, predict=["N=1e9,D=2e10"], bootstrap=40, log=lambda m: None)
    ResultsStore(folder).write_json(TASKS_FILE, tasks)  # as `scalinglab task RESULTS` does: one task panel
    report = fit_and_report(folder, out=tmp_path / "report.html", predict=["N=1e10,D=2e11", "C=1e22"],
                            bootstrap=40, log=lambda m: None).report
    check = render_check(report, screenshot=ARTIFACTS / "report.png")
    assert check.console_errors == []
    assert check.requests == []  # nothing but the file itself
    assert len(check.figures) == 10, [f["id"] for f in check.figures]
    assert check.empty_figures == []
    assert len(check.images) == 3 and all(i["width"] == 16 for i in check.images)
    assert check.injected is None  # the planted <script> in an error and in the spec stayed text
    assert (ARTIFACTS / "report.png").stat().st_size > 50_000
    # the trial table sorts on a click: final loss, ascending; the failed trial's "–" sorts last
    before, after = sort_check(report, column=6)
    assert sorted(before) == sorted(after) and before != after
    trials = pd.read_parquet(folder / TRIALS.file).dropna(subset=[TRIALS.final_loss])
    assert after[0] == trials.sort_values(TRIALS.final_loss).iloc[0][TRIALS.trial_id]
