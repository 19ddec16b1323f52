"""Shared by the report, browser and sink tests: a real guarded run, a hostile string, and
readers for what the report and screenshots hold (no test collected here)."""

from __future__ import annotations

import base64
import pathlib
import re
import struct
import xml.etree.ElementTree as ET
import zlib
from typing import Any

import numpy as np
import torch

import unstuck
from conftest import regression_batch, require, tiny_mlp  # noqa: F401 (require is re-exported)

HOSTILE = "</script><script>alert(1)</script>"
RUN_STEPS = 600
VAL_EVERY = 50


def guarded_run(run_dir: pathlib.Path | None, **guard_kw: Any) -> unstuck.Guard:
    """A tiny regression at a far too small LR under policy='rescue': the loss plateaus, rules
    fire, the LR is raised and verified, the curvature probe runs. About a second.
    ``guard_kw`` go to the Guard (sinks, ``report=``)."""
    torch.manual_seed(0)
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5)
    x, y = regression_batch(64)
    guard = unstuck.Guard(
        model,
        optimizer,
        policy="rescue",
        run_dir=run_dir,
        console=False,
        loss_fn=torch.nn.functional.mse_loss,
        meta={"note": HOSTILE},
        **guard_kw,
    )
    for step in range(RUN_STEPS):
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        # a loss component named with the hostile string: a series name the report must escape
        guard.step(loss, batch=(x, y), components={HOSTILE: loss.detach()})
        if (step + 1) % VAL_EVERY == 0:
            guard.validate(loss.item() + 0.1)
    guard.close()
    return guard


_SVG = re.compile(r"<svg\b.*?</svg>", re.S)


def charts(page: str) -> dict[str, ET.Element]:
    """Every chart (an inline ``<svg>``) of a report, parsed as XML, by id, in page order."""
    out = {}
    for text in _SVG.findall(page):
        svg = ET.fromstring(text)
        out[svg.attrib["id"]] = svg
    return out


def of_kind(page: str, kind: str) -> list[ET.Element]:
    """The charts whose ``data-chart`` is ``kind`` ("loss", "lr", "heatmap", ...)."""
    return [c for c in charts(page).values() if c.attrib.get("data-chart") == kind]


def groups(svg: ET.Element, cls: str) -> list[ET.Element]:
    """The ``<g>`` elements of ``svg`` whose class list holds ``cls``."""
    return [g for g in svg.iter("g") if cls in g.attrib.get("class", "").split()]


def series(svg: ET.Element, label: str) -> ET.Element:
    """The line (a ``<g class="series ...">``) labelled ``label``."""
    found = [g for g in groups(svg, "series") if g.attrib.get("data-label") == label]
    assert len(found) == 1, [g.attrib.get("data-label") for g in groups(svg, "series")]
    return found[0]


def points(line: ET.Element) -> list[np.ndarray]:
    """Each polyline of a line as an (n, 2) array of positions (a gap starts a new one)."""
    return [
        np.asarray([[float(v) for v in p.split(",")] for p in poly.attrib["points"].split()])
        for poly in line.iter("polyline")
    ]


class Axes:
    """Positions in a chart back to data: the frame's box and the svg's ``data-x``/``data-y``
    ranges (``"lo hi linear|log"``)."""

    def __init__(self, svg: ET.Element) -> None:
        frame = next(r for r in svg.iter("rect") if r.attrib.get("class") == "frame")
        self.left = float(frame.attrib["x"])
        self.top = float(frame.attrib["y"])
        self.right = self.left + float(frame.attrib["width"])
        self.bottom = self.top + float(frame.attrib["height"])
        self.svg = svg

    def _range(self, name: str) -> tuple[float, float, bool]:
        lo, hi, kind = self.svg.attrib[f"data-{name}"].split()
        return float(lo), float(hi), kind == "log"

    def log(self, name: str) -> bool:
        return self._range(name)[2]

    def _back(self, pos: np.ndarray, name: str, a: float, b: float) -> np.ndarray:
        lo, hi, log = self._range(name)
        if log:
            lo, hi = np.log10(lo), np.log10(hi)
        t = lo + (np.asarray(pos, dtype=np.float64) - a) / (b - a) * (hi - lo)
        return np.power(10.0, t) if log else t

    def x(self, pos: np.ndarray) -> np.ndarray:
        return self._back(pos, "x", self.left, self.right)

    def y(self, pos: np.ndarray, name: str = "y") -> np.ndarray:
        return self._back(pos, name, self.bottom, self.top)


def title(element: ET.Element) -> str:
    """An element's hover text (its ``<title>`` child)."""
    found = element.find("title")
    return "" if found is None or found.text is None else found.text


def png_indices(uri: str) -> np.ndarray:
    """A palette PNG data URI (the heatmap's) as its rows × columns of palette indices."""
    data = base64.b64decode(uri.removeprefix("data:image/png;base64,"))
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks = 8, []
    width = height = 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            width, height, depth, colour, *_ = struct.unpack(">IIBBBBB", body)
            assert (depth, colour) == (8, 3), (depth, colour)
        elif kind == b"IDAT":
            chunks.append(body)
    raw = np.frombuffer(zlib.decompress(b"".join(chunks)), dtype=np.uint8)
    rows = raw.reshape(height, width + 1)
    assert (rows[:, 0] == 0).all()  # the writer uses filter type 0 (none) on every row
    return rows[:, 1:]


def read_png_rgb(path: pathlib.Path) -> np.ndarray:
    """Decode an 8-bit RGB/RGBA, non-interlaced PNG (what Chromium writes) to an (h, w, 3)
    array: zlib and the five PNG row filters, no imaging library needed."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks = 8, []
    width = height = depth = colour = interlace = 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
    assert depth == 8 and interlace == 0 and colour in (2, 6), (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(b"".join(chunks))
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        kind_byte = raw[y * (stride + 1)]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=y * (stride + 1) + 1)
        if kind_byte == 0:  # None
            cur = line.copy()
        elif kind_byte == 1:  # Sub: a running sum per channel
            cur = np.cumsum(line.reshape(width, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif kind_byte == 2:  # Up
            cur = line + prev
        else:  # Average (3) or Paeth (4): sequential within the row
            buf, up = bytearray(line.tobytes()), prev.tobytes()
            for i in range(stride):
                a = buf[i - bpp] if i >= bpp else 0
                b = up[i]
                if kind_byte == 3:
                    buf[i] = (buf[i] + ((a + b) >> 1)) & 255
                    continue
                c = up[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                buf[i] = (buf[i] + pred) & 255
            cur = np.frombuffer(bytes(buf), dtype=np.uint8)
        out[y] = cur
        prev = out[y]
    return out.reshape(height, width, bpp)[:, :, :3]
