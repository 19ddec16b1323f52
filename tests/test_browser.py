"""The report in a real browser: headless Chromium renders it offline and draws every chart.

The report has no script; to know where each chart landed, the test renders a copy with one
small script appended that writes every chart's box into the page, then checks the pixels of
each box in the screenshot. Skipped only when no Chromium is found and ``CI`` is unset; in CI a
missing browser fails. Debian/Ubuntu: ``apt-get install -y chromium`` (``chromium-browser`` on
some Ubuntu images).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from typing import Any

import numpy as np
import pytest

from _report_support import HOSTILE, charts, guarded_run, png_indices, read_png_rgb
from unstuck.record.report import write_report
from unstuck.record.report.svg import MISSING_CELL, viridis
from unstuck.record.rundata import load_run

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = (1280, 9000)  # tall enough for the whole guarded run's report in one screenshot
# Appended to a copy of the report only: where each chart was laid out, in page pixels.
MEASURE = """<script>
addEventListener("load", function () {
  var out = {height: document.documentElement.scrollHeight, charts: []};
  document.querySelectorAll("svg.chart").forEach(function (svg) {
    var r = svg.getBoundingClientRect();
    out.charts.push({id: svg.id, kind: svg.dataset.chart, x: r.left + scrollX,
                     y: r.top + scrollY, w: r.width, h: r.height});
  });
  var pre = document.createElement("pre");
  pre.id = "chart-boxes";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""
TRAIN_BLUE = (31, 119, 180)  # the train loss line
PLATEAU_ON_WHITE = (226, 237, 245)  # rgba(31,119,180,0.13) over the white page
SATURATED = 60  # max − min channel above this: a coloured line or cell, not grey or black ink


def _browser() -> str:
    explicit = os.environ.get("UNSTUCK_CHROMIUM")
    found = explicit or next((b for b in map(shutil.which, BROWSERS) if b), None)
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("no Chromium found; CI must install it (apt-get install -y chromium)")
    pytest.skip("no Chromium found (looked for chromium, chromium-browser, google-chrome)")


@pytest.fixture(scope="module")
def rendered(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, str, np.ndarray, dict[str, Any]]:
    """One browser run: the report's source, the DOM after load, the screenshot, the boxes."""
    browser = _browser()
    directory = tmp_path_factory.mktemp("browser")
    guarded_run(directory / "run")
    report = write_report(load_run(directory / "run"), directory / "report.html")
    page = report.read_text(encoding="utf-8")
    measured = directory / "measured.html"
    measured.write_text(page.replace("</body>", MEASURE + "\n</body>"), encoding="utf-8")
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
            "--virtual-time-budget=5000",  # let the load handler run before the snapshot
            f"--screenshot={shot}",
            "--dump-dom",
            measured.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.is_file(), proc.stderr[-2000:]
    found = re.search(r'<pre id="chart-boxes">(.*?)</pre>', proc.stdout, re.S)
    assert found, "the measuring script did not run"
    boxes = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    return page, proc.stdout, read_png_rgb(shot), boxes


def _crop(image: np.ndarray, box: dict[str, float]) -> np.ndarray:
    x, y = round(box["x"]), round(box["y"])
    return image[y : y + round(box["h"]), x : x + round(box["w"])].reshape(-1, 3).astype(int)


def _near(pixels: np.ndarray, colour: tuple[int, int, int], tol: int = 12) -> int:
    return int((np.abs(pixels - np.asarray(colour)).max(axis=1) <= tol).sum())


def test_screenshot_is_not_blank(rendered) -> None:
    _, _, image, boxes = rendered
    assert image.shape == (WINDOW[1], WINDOW[0], 3)
    assert boxes["height"] <= WINDOW[1], "the report outgrew the window: raise WINDOW"
    pixels = image[: int(boxes["height"])].reshape(-1, 3)
    not_white = float((pixels.min(axis=1) < 245).mean())
    colours = np.unique(pixels[::7], axis=0).shape[0]
    assert not_white > 0.03, not_white  # text, axes, lines, the heatmap
    assert colours > 100, colours  # chart colours and anti-aliasing, not a plain page


def test_every_chart_is_laid_out_and_drawn(rendered) -> None:
    page, _, image, boxes = rendered
    expected = list(charts(page))
    assert len(expected) >= 6
    assert [c["id"] for c in boxes["charts"]] == expected
    for box in boxes["charts"]:
        assert box["w"] > 300 and box["h"] > 150, box  # laid out at a readable size
        pixels = _crop(image, box)
        ink = float((pixels.min(axis=1) < 200).mean())
        coloured = int((pixels.max(axis=1) - pixels.min(axis=1) > SATURATED).sum())
        assert ink > 0.005, (box, ink)  # frame, ticks, labels
        assert coloured > 50, (box, coloured)  # a line, a bar or heatmap cells were painted


def test_loss_chart_and_heatmap_show_their_colours(rendered) -> None:
    page, _, image, boxes = rendered
    by_kind = {c["kind"]: c for c in boxes["charts"]}
    loss = _crop(image, by_kind["loss"])
    assert _near(loss, TRAIN_BLUE) > 300  # the smoothed train loss
    assert _near(loss, PLATEAU_ON_WHITE, tol=4) > 5000  # the shaded plateau
    # the heatmap's cells: the PNG decoded and drawn where the <image> sits, in its colours
    box = by_kind["heatmap"]
    svg = charts(page)[box["id"]]
    img = svg.find("image")
    scale = box["w"] / float(svg.attrib["viewBox"].split()[2])
    inset = 3  # stay clear of the frame's anti-aliased edge
    cells = _crop(
        image,
        {
            "x": box["x"] + float(img.attrib["x"]) * scale + inset,
            "y": box["y"] + float(img.attrib["y"]) * scale + inset,
            "w": float(img.attrib["width"]) * scale - 2 * inset,
            "h": float(img.attrib["height"]) * scale - 2 * inset,
        },
    )
    index = png_indices(img.attrib["href"])
    palette = np.vstack([viridis(255), [MISSING_CELL]]).astype(int)
    wanted = palette[np.unique(index)]
    assert len(wanted) >= 8  # the guarded run's norms span many colour levels
    distance = np.abs(cells[:, None, :] - wanted[None, :, :]).max(axis=2)
    assert float((distance.min(axis=1) <= 8).mean()) > 0.9  # cell colours, not blank
    hit = np.unique(distance.argmin(axis=1)[distance.min(axis=1) <= 8])
    assert hit.size >= min(8, len(wanted))  # many levels, as many as the PNG holds


def test_dom_holds_the_findings_and_no_injected_script(rendered) -> None:
    page, dom, _, _ = rendered
    run_findings = re.findall(r"<td><code>([a-z_]+)</code></td>", page)
    assert run_findings  # the guarded run has findings
    for cause in run_findings:
        assert f"<code>{cause}</code>" in dom
    assert HOSTILE not in dom
    assert "<script" not in page  # the report itself runs nothing
    assert dom.count("<script") == 1  # only the measuring script this test appended
