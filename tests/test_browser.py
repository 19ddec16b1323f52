"""The report in a real browser: headless Chromium loads it offline, plotly draws every plot.

Skipped only when no Chromium is found and ``CI`` is unset; in CI a missing browser fails.
Debian/Ubuntu: ``apt-get install -y chromium`` (``chromium-browser`` on some Ubuntu images).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from _report_support import HOSTILE, figures, guarded_run, read_png_rgb, require
from unstuck.record.rundata import load_run

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = (1280, 2000)


def _browser() -> str:
    explicit = os.environ.get("UNSTUCK_CHROMIUM")
    found = explicit or next((b for b in map(shutil.which, BROWSERS) if b), None)
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("no Chromium found; CI must install it (apt-get install -y chromium)")
    pytest.skip("no Chromium found (looked for chromium, chromium-browser, google-chrome)")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, np.ndarray]:
    """One browser run: the page's source, the DOM after scripts ran, and the screenshot."""
    browser = _browser()
    require("plotly", "report")
    from unstuck.record.report import write_report

    directory = tmp_path_factory.mktemp("browser")
    guarded_run(directory / "run")
    report = write_report(load_run(directory / "run"), directory / "report.html")
    shot = directory / "shot.png"
    proc = subprocess.run(
        [
            browser,
            "--headless=new",
            "--no-sandbox",  # containers and CI runners run as root
            "--disable-gpu",
            "--disable-dev-shm-usage",  # a small /dev/shm in containers
            "--no-first-run",
            f"--user-data-dir={directory / 'profile'}",
            "--hide-scrollbars",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            "--virtual-time-budget=5000",  # let scripts finish before the snapshot
            f"--screenshot={shot}",
            "--dump-dom",
            report.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.is_file(), proc.stderr[-2000:]
    return report.read_text(encoding="utf-8"), proc.stdout, read_png_rgb(shot)


def test_screenshot_is_not_blank(rendered) -> None:
    _, _, image = rendered
    assert image.shape == (WINDOW[1], WINDOW[0], 3)
    pixels = image.reshape(-1, 3)
    not_white = float((pixels.min(axis=1) < 245).mean())
    colours = np.unique(pixels[::7], axis=0).shape[0]
    assert not_white > 0.03, not_white  # text, axes, lines, the heatmap
    assert colours > 100, colours  # plot colours and anti-aliasing, not a plain page


def test_plotly_drew_every_plot(rendered) -> None:
    page, dom, _ = rendered
    expected = sorted(figures(page))
    assert len(expected) >= 5
    # plotly.newPlot marks its div and adds its SVG layers; a script error would leave it bare
    drawn = re.findall(r'<div id="(fig-\d+)" class="plot js-plotly-plot"', dom)
    assert sorted(drawn) == expected
    assert dom.count('class="main-svg"') >= 2 * len(expected)
    assert "No training or validation loss" not in dom


def test_dom_holds_the_findings_and_no_injected_script(rendered) -> None:
    page, dom, _ = rendered
    run_findings = re.findall(r"<td><code>([a-z_]+)</code></td>", page)
    assert run_findings  # the guarded run has findings
    for cause in run_findings:
        assert f"<code>{cause}</code>" in dom
    assert HOSTILE not in dom
    assert dom.count("<script") == page.count("<script")
