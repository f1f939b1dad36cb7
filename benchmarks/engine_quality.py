"""Engines side by side on real scans: SinGAN (WGAN-GP critic, and each explicit patch loss
of ``train --loss``) and the training-free patch engine.

For each scan (pydicom-data's CR chest RG1_UNCR, the CT slice 693_UNCR, the MR slice MR2_UNCR,
each at ``--size`` px on its longer side) and each engine, through the same ``train`` and
``augment`` a user runs (files written, every score computed):

* ``first_sample_s``: wall time from the scan file to the first written, scored sample
  (SinGAN: training included, also given alone as ``train_s``; patch engine: nothing to train);
* ``per_50_s``: wall time per 50 samples (``--n`` drawn, scaled to 50), from N and N-1;
  ``first_50_s``: training plus 50 samples from N, the wall time from scan to cohort;
* medians over the samples of patch SWD (x 1000), SIFID, SSIM to the source and the copy
  score, the largest copied region, the share of samples over ``--max-copy``, and the
  cohort's diversity, from N and N-1.

SIFID uses torchvision's ImageNet InceptionV3 weights when they are found (torch hub cache,
``--inception-weights`` or ``$MEDSINGAN_INCEPTION_WEIGHTS``); otherwise a *stand-in*: the same
network with seeded random weights (every step runs, but the numbers are not the paper's
SIFID and only compare engines with each other). The JSON says which.

A contact sheet per scan (``--sheets``) has a row per engine: the scan, then samples from N.
SinGAN trains with the ``fast`` preset and ``--iters`` iterations per scale (the preset's
2000 take hours per scan on a CPU), once with the WGAN-GP critic (row ``singan``) and once per
explicit loss in ``--losses`` (rows ``singan-<loss>``, the ``engine`` column of their samples).

    python benchmarks/engine_quality.py --scans cr --size 128 --iters 150 --n 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw
from pydicom.data import get_testdata_file

from medsingan.augment import AugmentRequest, ScanSource, augment, read_unit
from medsingan.errors import MedsinganError
from medsingan.manifest import read_manifest, resolve_image
from medsingan.metrics.sifid import PAPER_WEIGHTS_NAME, find_inception_weights
from medsingan.model.previews import to_uint8
from medsingan.preprocess import IntensityMapping
from medsingan.runs import train_scan
from medsingan.train import LOSSES

SCANS = {"cr": "RG1_UNCR.dcm", "ct": "693_UNCR.dcm", "mr": "MR2_UNCR.dcm"}


def inception_weights(folder: Path) -> tuple[Path, str]:
    """The paper variant's weights, or a seeded random stand-in saved in ``folder``."""
    try:
        return Path(find_inception_weights()), "torchvision ImageNet InceptionV3"
    except MedsinganError:
        import torchvision

        with torch.random.fork_rng():
            torch.manual_seed(0)
            network = torchvision.models.inception_v3(weights=None, init_weights=True,
                                                      aux_logits=True)
        path = folder / PAPER_WEIGHTS_NAME
        torch.save(network.state_dict(), path)
        return path, "stand-in: InceptionV3 with seeded random weights (not the paper's SIFID)"


def scores(result: Any, n: int) -> dict[str, Any]:
    """Medians of one augment call's manifest rows and its summary."""
    frame = read_manifest(result.manifest)
    summary = result.summary

    def median(column: str) -> float | None:
        values = frame[column].dropna().tolist() if column in frame else []
        return round(statistics.median(values), 4) if values else None

    return {"patch_swd": median("patch_swd"), "sifid": median("sifid"),
            "ssim": median("similarity_to_source"), "copy_score": median("copy_score"),
            "copy_region_px": median("copy_region_px"),
            "over_max_copy": round(len(summary["over_max_copy"]) / n, 3),
            "diversity": None if summary["diversity"] is None
            else round(summary["diversity"], 4)}


def run_engine(engine: str, scan: Path, work: Path, args: argparse.Namespace,
               weights: Path, loss: str | None = None) -> tuple[dict[str, Any], Path]:
    """Scores and times of one engine on one scan; the folder of its start-N samples."""
    name = engine if loss is None else f"{engine}-{loss}"
    prepare = 0.0
    common: dict[str, Any] = {"sifid": True, "inception_weights": weights, "progress": False,
                              "device": "cpu", "max_copy": args.max_copy}
    if engine == "singan":
        overrides: dict[str, Any] = {"max_size": args.size, "iters": args.iters,
                                     "device": "cpu"}
        if loss is not None:
            overrides["loss"] = loss
        started = time.perf_counter()
        run_dir, _ = train_scan(scan, work / name / "run", overrides=overrides,
                                progress=False)
        prepare = time.perf_counter() - started
        source: dict[str, Any] = {"run_dir": run_dir}
    else:
        source = {"run_dir": None, "engine": "patch", "scan": scan, "max_size": args.size}
    started = time.perf_counter()
    augment(AugmentRequest(n=1, out=work / name / "first", manifest=work / name / "first.csv",
                           **source, **common))
    result: dict[str, Any] = {"engine": name,
                              "first_sample_s": round(prepare + time.perf_counter() - started,
                                                      2)}
    if engine == "singan":
        result["train_s"] = round(prepare, 1)
    for start in ("N", "N-1"):
        out = work / name / start
        started = time.perf_counter()
        drawn = augment(AugmentRequest(n=args.n, start_scale=start, out=out,
                                       manifest=work / name / f"{start}.csv", **source,
                                       **common))
        wall = time.perf_counter() - started
        result[start] = {"per_50_s": round(wall / args.n * 50, 1), **scores(drawn, args.n)}
    result["first_50_s"] = round(prepare + result["N"]["per_50_s"], 1)
    return result, work / name / "N.csv"


def contact_sheet(path: Path, scan: Path, size: int, rows: list[tuple[str, Path]],
                  samples: int = 6, tile: int = 128) -> None:
    """A row per engine: the scan as every engine sees it, then its first samples from N."""
    source = ScanSource(scan, max_size=size)
    mapping = IntensityMapping.from_dict(source.extra["intensity_mapping"])
    label = 110
    sheet = Image.new("L", (label + (samples + 1) * (tile + 4), len(rows) * (tile + 4)), 255)
    draw = ImageDraw.Draw(sheet)
    for k, (name, manifest) in enumerate(rows):
        top = k * (tile + 4)
        draw.text((4, top + tile // 2 - 6), name, fill=0)
        pictures = [to_uint8(source.real[0, 0])]
        for image in read_manifest(manifest).sort_values("image")["image"].head(samples):
            unit = read_unit(resolve_image(manifest, str(image)), mapping, source.shapes[0])
            pictures.append(to_uint8(unit[0, 0]))
        for j, picture in enumerate(pictures):
            thumb = Image.fromarray(picture).resize((tile, tile), Image.Resampling.BILINEAR)
            sheet.paste(thumb, (label + j * (tile + 4), top))
    sheet.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", nargs="+", choices=sorted(SCANS), default=sorted(SCANS))
    parser.add_argument("--engines", nargs="+", choices=("singan", "patch"),
                        default=["singan", "patch"])
    explicit = [loss for loss in LOSSES if loss != "wgan-gp"]
    parser.add_argument("--losses", nargs="*", choices=explicit, default=explicit,
                        help="SinGAN's explicit losses to train besides WGAN-GP")
    parser.add_argument("--size", type=int, default=128, help="longer side, px")
    parser.add_argument("--iters", type=int, default=2000, help="SinGAN iterations per scale")
    parser.add_argument("--n", type=int, default=50, help="samples per engine and start")
    parser.add_argument("--max-copy", type=float, default=0.5)
    parser.add_argument("--sheets", type=Path, default=None, help="folder for contact sheets")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    report: dict[str, Any] = {"size": args.size, "singan_iters": args.iters,
                              "singan_preset": "fast", "n": args.n,
                              "threads": torch.get_num_threads(), "scans": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weights, report["sifid_weights"] = inception_weights(work)
        for key in args.scans:
            scan = Path(get_testdata_file(SCANS[key]))
            results, rows = [], []
            runs = [(engine, None) for engine in args.engines]
            runs += [("singan", loss) for loss in args.losses]
            for engine, loss in runs:
                result, manifest = run_engine(engine, scan, work / key, args, weights, loss)
                results.append(result)
                rows.append((result["engine"], manifest))
                print(json.dumps({"scan": SCANS[key], **result}), flush=True)
            report["scans"][SCANS[key]] = results
            if args.sheets is not None:
                args.sheets.mkdir(parents=True, exist_ok=True)
                contact_sheet(args.sheets / f"engines_{key}.png", scan, args.size, rows)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
