"""The README's region picture: a fracture line edited into a real film at its own resolution.

Trains (or reuses, with ``--work``) a region run on a 200 px square of pydicom-data's
RG3_UNCR.dcm (CR lower leg, 1760 x 1760 px) at native resolution (max size 250, so the region
is not shrunk), draws a thin radiolucent line across the tibial shaft into the full film,
edits it with ``medsingan edit --composite --mask`` (full-size composite and mask, source px),
and writes ``docs/roi_edit.png``: the full film with the region box | the region before | the
naive drawing | the edited region (the regions enlarged 2x, nearest neighbour). Prints JSON:
pixels changed, the largest difference outside the blend margin (0: bit-identical), times.

    python benchmarks/roi_picture.py [--iters 300] [--inject-scale 1] [--work DIR]
                                     [--out docs/roi_edit.png]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from pydicom.data import get_testdata_file

from medsingan.augment import source_meta
from medsingan.io import read_scan, write_scan
from medsingan.manipulate import EditRequest, edit
from medsingan.roi import blend_margin
from medsingan.runs import train_scan
from medsingan.train import load_run

FILM = "RG3_UNCR.dcm"
REGION = (760, 640, 200, 200)  # X, Y, W, H: the tibial shaft with both cortices
# the fracture: a line from (x, y) to (x, y) across the shaft, source px, and its half width
LINE = ((798, 716), (910, 770))
HALF_WIDTH = 1.2
PANEL = 400


def trained_run(work: Path, iters: int) -> tuple[Path, float]:
    run_dir = work / f"rg3_region_{iters}it"
    if (run_dir / "weights.safetensors").is_file() and load_run(run_dir).is_complete:
        return run_dir, 0.0
    started = time.perf_counter()
    train_scan(Path(get_testdata_file(FILM)), run_dir, roi=REGION, progress=False,
               overrides={"iters": iters, "seed": 0}, overwrite=True, label="normal")
    return run_dir, time.perf_counter() - started


def fracture_line(shape: tuple[int, int]) -> np.ndarray:
    """Pixels within ``HALF_WIDTH`` of the segment ``LINE``, inside the bone (full size)."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    (x0, y0), (x1, y1) = LINE
    t = np.clip(((cols - x0) * (x1 - x0) + (rows - y0) * (y1 - y0))
                / ((x1 - x0) ** 2 + (y1 - y0) ** 2), 0, 1)
    distance = np.hypot(cols - (x0 + t * (x1 - x0)), rows - (y0 + t * (y1 - y0)))
    return distance <= HALF_WIDTH


def draw_fracture(run_dir: Path, work: Path) -> tuple[Path, Path]:
    """The film with a radiolucent line (the soft tissue's level) and the line's mask."""
    film = read_scan(Path(get_testdata_file(FILM)))
    line = fracture_line(film.shape)
    x, y, w, h = REGION
    soft = float(np.median(film.image[y:y + h, x:x + 20]))  # soft tissue beside the shaft
    drawn = film.image.copy()
    drawn[line] = 0.5 * drawn[line] + 0.5 * soft
    meta = source_meta(load_run(run_dir).metadata["extra"], False)
    composite = write_scan(drawn, meta, work / "fracture_composite.dcm")
    mask = work / "fracture_mask.png"
    grown = F.max_pool2d(torch.from_numpy(line.astype(np.float32))[None, None], 3, 1, 1)
    Image.fromarray((grown[0, 0].numpy() > 0).astype(np.uint8) * 255).save(mask)
    return composite, mask


def grey(stored: np.ndarray) -> np.ndarray:
    """10-bit MONOCHROME1 stored values as 8-bit display grey (bone bright)."""
    return ((1023 - stored.astype(np.float64)) / 1023 * 255).round().astype(np.uint8)


def picture(before: np.ndarray, drawn: np.ndarray, after: np.ndarray, out: Path) -> None:
    x, y, w, h = REGION
    zoom = PANEL / before.shape[0]
    thumb = Image.fromarray(grey(before)).resize((PANEL, PANEL), Image.Resampling.LANCZOS)
    thumb = thumb.convert("RGB")
    ImageDraw.Draw(thumb).rectangle([x * zoom, y * zoom, (x + w) * zoom, (y + h) * zoom],
                                    outline=(255, 64, 64), width=2)
    panels = [thumb] + [Image.fromarray(grey(image[y:y + h, x:x + w])).resize(
        (PANEL, PANEL), Image.Resampling.NEAREST).convert("RGB") for image in (before, drawn,
                                                                              after)]
    captions = ("full film 1760 x 1760, region box", "region before (200 px, native)",
                "naive line drawn", "medsingan edit")
    sheet = Image.new("RGB", (len(panels) * PANEL + (len(panels) - 1) * 8, PANEL + 22),
                      (255, 255, 255))
    pen = ImageDraw.Draw(sheet)
    for k, (panel, caption) in enumerate(zip(panels, captions, strict=True)):
        sheet.paste(panel, (k * (PANEL + 8), 22))
        pen.text((k * (PANEL + 8) + 4, 5), caption, fill=(0, 0, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=300, help="iterations per scale")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the run and the edit (kept, run reused) "
                        "[default: a temp dir]")
    parser.add_argument("--inject-scale", default="1",
                        help="scale the drawing is injected at: a thin line needs a fine one")
    parser.add_argument("--out", type=Path, default=Path("docs/roi_edit.png"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        run_dir, train_seconds = trained_run(work, args.iters)
        composite, mask = draw_fracture(run_dir, work)
        started = time.perf_counter()
        result = edit(EditRequest(run_dir=run_dir, composite=composite, mask=mask,
                                  label="fracture", inject_scale=args.inject_scale,
                                  out=work / "edit",
                                  manifest=work / "edit" / "manifest.csv", overwrite=True))
        edit_seconds = time.perf_counter() - started
        before = pydicom.dcmread(get_testdata_file(FILM)).pixel_array.astype(np.int64)
        drawn = pydicom.dcmread(composite).pixel_array.astype(np.int64)
        after = pydicom.dcmread(result.written[0]).pixel_array.astype(np.int64)
        written_mask = np.asarray(Image.open(result.mask)) > 0
        run_size = load_run(run_dir).shapes[0]
        picture(before, drawn, after, args.out)
    margin = blend_margin(run_size, "edit")
    near = F.max_pool2d(torch.from_numpy(written_mask.astype(np.float32))[None, None],
                        2 * margin + 1, stride=1, padding=margin)[0, 0].numpy() > 0
    x, y, w, h = REGION
    in_region = np.zeros(after.shape, bool)
    in_region[y:y + h, x:x + w] = True
    difference = np.abs(after - before)
    print(json.dumps({
        "film": FILM, "region": REGION, "run_size": list(run_size), "iters": args.iters,
        "output_size": list(after.shape), "box": result.box,
        "inject_scale": result.inject_scale, "blend_margin_px": margin,
        "pixels_changed": int((difference > 0).sum()),
        "pixels_changed_outside_region": int((difference > 0)[~in_region].sum()),
        "max_abs_difference_outside_margin": int(difference[~near].max()),
        "mean_abs_difference_on_mask": round(float(difference[written_mask].mean()), 2),
        "train_seconds": round(train_seconds, 1), "edit_seconds": round(edit_seconds, 1),
        "picture": str(args.out), "picture_bytes": args.out.stat().st_size,
    }, indent=2))


if __name__ == "__main__":
    main()
