"""The live page in a real browser: Debian's Chromium under Playwright (as test_report_browser launches it),
`seedbed serve` as a real process, a trial growing in another process.

The run appears on the runs page without a reload, its loss chart gains points while it grows, rows
appended to a run's index the way growth writes them reach the page (the latency is measured and
printed), an emergence shows the moment it is recorded, and the attention view renders at two steps.
No console error, no request beyond the server on 127.0.0.1.

SEEDBED_SERVE_SCREENSHOT=docs/figures/serve-live.png keeps a screenshot of the live page mid-growth.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time

import pytest
from conftest import tiny
from test_report_browser import chromium
from test_serve import served

from seedbed.grow import grow
from seedbed.run import Run

pytestmark = pytest.mark.slow
TRIAL_RUN = "induction-tiny-seed0/main"


def points(page, group: str = "loss") -> int:
    found = page.locator(f'.chart[data-group="{group}"]')
    return int(found.get_attribute("data-points")) if found.count() else 0


def test_live_page_in_chromium(tmp_path):
    runs = tmp_path / "runs"
    grow(tiny(), runs_dir=runs, name="echo", progress=False)  # a run whose index the test appends to
    with chromium() as browser, served(runs) as (port, _):
        base = f"http://127.0.0.1:{port}"
        page = browser.new_page(viewport={"width": 1300, "height": 1100})
        errors: list[str] = []
        foreign: list[str] = []
        watch_page(page, base, errors, foreign)
        page.goto(base + "/")
        trial = subprocess.Popen(
            [sys.executable, "-m", "seedbed", "trial", "induction", "--scale", "tiny", "--no-progress", "--runs-dir", str(runs)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            # the run appears on the runs page, no reload
            page.wait_for_selector(f'tr[data-run="{TRIAL_RUN}"]', timeout=90_000)
            page.click(f'tr[data-run="{TRIAL_RUN}"] td a')
            page.wait_for_selector('.chart[data-group="loss"]', timeout=60_000)
            first = points(page)
            page.wait_for_function(f"() => +document.querySelector('.chart[data-group=loss]').dataset.points > {first}",
                                   timeout=60_000)
            assert page.locator("#status-badge").inner_text() == "growing", "the chart moved after the run ended"
            print(f"\nloss chart: {first} points, then {points(page)} while the run grew")
            shot = os.environ.get("SEEDBED_SERVE_SCREENSHOT")
            if shot:
                page.wait_for_function("() => +document.querySelector('.chart[data-group=loss]').dataset.lastStep >= 700 ||"
                                       " document.querySelector('#status-badge').textContent !== 'growing'", timeout=120_000)
                page.wait_for_timeout(300)
                page.screenshot(path=shot)
        finally:
            os.killpg(trial.pid, signal.SIGTERM)  # the rest of the trial is not this test's business
            trial.wait(timeout=60)

        # rows landing in an index reach the page: how fast
        live = browser.new_page(viewport={"width": 1300, "height": 900})
        watch_page(live, base, errors, foreign)
        live.goto(base + "/run?path=echo")
        live.wait_for_selector('.chart[data-group="loss"]')
        writer = Run(runs / "echo")  # as growth writes: metrics buffered, then a commit
        latencies = []
        for k in range(6):
            step = 100 + k
            writer.log_metrics(step, {"train/loss": 2.0 - 0.1 * k, "watch/icl_score": -0.1 * k})
            writer.commit()
            landed = time.perf_counter()
            live.wait_for_function(f"() => +document.querySelector('.chart[data-group=loss]').dataset.lastStep === {step}",
                                   timeout=10_000, polling=20)
            latencies.append(time.perf_counter() - landed)
        writer.log_event(105, "emergence", "step 102–104: in-context-learning score fell 0.00 → -0.50")
        landed = time.perf_counter()
        live.wait_for_selector('#events li[data-kind="emergence"]', timeout=10_000)
        emergence_s = time.perf_counter() - landed
        writer.close()
        print(f"row landed → page updated: median {statistics.median(latencies):.2f} s, max {max(latencies):.2f} s; "
              f"emergence → listed: {emergence_s:.2f} s (load {os.getloadavg()[0]:.1f})")
        assert max(latencies) < 5 and emergence_s < 5
        assert "fell 0.00 → -0.50" in live.locator('#events li[data-kind="emergence"]').inner_text()

        # the attention view at two steps
        live.goto(base + "/inside?path=echo")
        live.wait_for_selector("#pattern[data-step]", timeout=60_000)
        pictures = {}
        steps = [0, 1, 2, 4, 8, 10, 20, 30, 40]  # tiny's checkpoints
        for index in (1, 5):  # steps 1 and 10
            live.eval_on_selector("#step", "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }", index)
            step = steps[index]
            live.wait_for_selector(f'#pattern[data-step="{step}"]', timeout=60_000)
            pictures[step] = live.eval_on_selector("#pattern", "c => c.toDataURL()")
            assert live.locator("#scores tbody tr").count() == 4  # 2 layers × 2 heads
        assert pictures[1] != pictures[10], "the attention pattern did not change with the step"
        live.wait_for_selector('.chart[data-group="scores"]', timeout=60_000)

        assert errors == []
        assert foreign == []
        live.close()
        page.close()


def watch_page(page, base: str, errors: list[str], foreign: list[str]) -> None:
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("request", lambda r: None if r.url.startswith((base + "/", "data:")) else foreign.append(r.url))

