"""Shared by the report, browser and sink tests: a real guarded run, a hostile string, and
readers for what the report and screenshots hold (no test collected here)."""

from __future__ import annotations

import base64
import json
import pathlib
import re
import struct
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


_FIGURE = re.compile(r"var f = (\{.*?\});\nPlotly\.newPlot\(\"(fig-\d+)\"", re.S)


def figures(page: str) -> dict[str, dict[str, Any]]:
    """Every plot's JSON in a report, by div id."""
    return {fig_id: json.loads(body) for body, fig_id in _FIGURE.findall(page)}


def array(value: Any) -> np.ndarray:
    """A trace's x / y / z as numpy: plotly writes numpy arrays as base64 typed arrays."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        if shape:
            dims = [int(d) for d in str(shape).split(",")]
            return flat.reshape(dims)
        return flat
    return np.asarray(value, dtype=np.float64)


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
