"""Quality at reduced size: the paper's settings vs. the fast preset, trained to completion.

Trains the full CR chest radiograph (see ``real_scans.py``; 5 scales at 64 px) at a reduced
max side with each configuration, then reports, per configuration: wall time, reconstruction
PSNR from z*, and the patch sliced Wasserstein distance (x 1000, lower is better) between the
scan and random samples drawn from the coarsest scale (N) and from N-1, plus sample diversity
(mean per-pixel standard deviation across samples over the scan's standard deviation, as in
the paper).

    python benchmarks/train_quality.py --size 64 --configs paper fast quick [--iters 2000]
        [--runs DIR] [--jobs 2] [--config NAME=PRESET,KEY=VALUE,...]

``--config`` adds a candidate that is not a preset (yet): a preset's settings with some
TrainConfig fields changed, e.g. ``--config paper500=paper,iters=500``; repeatable.

``--runs DIR`` keeps each run directory (``DIR/<config>``, with its ``samples_scale_*.png``) and
writes ``DIR/samples_side_by_side.png``: each configuration's ``samples_scale_0.png`` in a row.
``--jobs 2`` trains two configurations at a time, one torch thread each (their wall times then
share the cores). ``--resume`` (with ``--runs``) continues a configuration whose run folder holds
an interrupted run from its last finished scale, and only scores one that is complete; its
``train_s`` is then the sum of the per-scale training seconds the run recorded, over all
sessions (``wall_s`` is this process's time).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from candidates import PRESETS, parse_candidate
from real_scans import chest_radiograph

from medsingan.generate import reconstruct, sample
from medsingan.metrics.patch_swd import patch_swd
from medsingan.train import CONFIG_FILE, TrainConfig, run_summary, train


def evaluate(name: str, overrides: dict[str, Any], size: int, iters: int | None,
             samples: int, runs: Path | None = None, threads: int | None = None,
             resume: bool = False) -> dict[str, Any]:
    """Train one configuration to completion and score it."""
    if threads:
        torch.set_num_threads(threads)
    values = overrides | {"max_size": size, "device": "cpu"}
    if iters is not None:
        values["iters"] = iters
    config = TrainConfig(**values)
    started = time.perf_counter()
    if runs is None:
        with tempfile.TemporaryDirectory() as tmp:
            pyramid = train(chest_radiograph(), config, Path(tmp), progress=False)
    else:
        resume = resume and (runs / name / CONFIG_FILE).is_file()
        if not resume:
            shutil.rmtree(runs / name, ignore_errors=True)
        pyramid = train(chest_radiograph(), config, runs / name, progress=False, resume=resume)
    wall = time.perf_counter() - started
    real = pyramid.reals[0]
    mse = float(((reconstruct(pyramid) - real) ** 2).mean())
    result: dict[str, Any] = {
        "config": name, "overrides": overrides, "iters": config.iters,
        "scales": [f"{h}x{w}" for h, w in pyramid.shapes], "wall_s": round(wall, 1),
        "train_s": round(run_summary(runs / name)["total_seconds"], 1) if runs else round(wall, 1),
        "rec_psnr_db": round(10 * math.log10(4.0 / mse), 2),
    }
    for label, start in (("N", pyramid.coarsest), ("N-1", pyramid.coarsest - 1)):
        drawn = sample(pyramid, samples, start_scale=start, seed=1)
        diversity = float(drawn.std(dim=0).mean() / real.std())
        result[f"swd_start_{label}"] = round(patch_swd(real, drawn)["mean"], 1)
        result[f"diversity_start_{label}"] = round(diversity, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="max side in px")
    parser.add_argument("--iters", type=int, default=None,
                        help="iterations per scale of every configuration, --config's too")
    parser.add_argument("--samples", type=int, default=16, help="random samples scored")
    parser.add_argument("--configs", nargs="+", default=None, choices=list(PRESETS),
                        help="presets to train (default: paper fast, none with --config)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--runs", type=Path, default=None, help="keep the run directories here")
    parser.add_argument("--jobs", type=int, default=1, help="configurations trained at a time")
    parser.add_argument("--config", action="append", default=[], metavar="NAME=PRESET,K=V,...",
                        help="a candidate configuration: a preset with fields changed")
    parser.add_argument("--resume", action="store_true",
                        help="continue interrupted runs in --runs (score complete ones)")
    args = parser.parse_args()
    if args.resume and args.runs is None:
        parser.error("--resume continues the runs kept in --runs: give --runs DIR")
    threads = args.threads or (1 if args.jobs > 1 else None)
    presets = args.configs if args.configs is not None else [] if args.config else ["paper", "fast"]
    candidates = {name: PRESETS[name] for name in presets}
    for text in args.config:
        name, overrides = parse_candidate(text, set(candidates), args.size)
        candidates[name] = overrides
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [pool.submit(evaluate, name, overrides, args.size, args.iters, args.samples,
                            args.runs, threads, args.resume)
                for name, overrides in candidates.items()]
        results = []
        for job in jobs:
            results.append(job.result())
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    if args.runs is not None:
        side_by_side(args.runs, list(candidates))
    json.dump({"size": args.size, "jobs": args.jobs, "threads": threads or torch.get_num_threads(),
               "results": results}, sys.stdout, indent=2)
    print()


def side_by_side(runs: Path, names: list[str]) -> None:
    """Each configuration's ``samples_scale_0.png`` in a row, its name above it."""
    from PIL import Image, ImageDraw

    sheets = [Image.open(runs / name / "samples_scale_0.png").convert("L") for name in names]
    width, label = max(s.width for s in sheets), 16
    canvas = Image.new("L", (width, sum(s.height + label for s in sheets)), 255)
    top = 0
    for name, sheet in zip(names, sheets, strict=True):
        ImageDraw.Draw(canvas).text((4, top + 2), name, fill=0)
        canvas.paste(sheet, (0, top + label))
        top += sheet.height + label
    canvas.save(runs / "samples_side_by_side.png")


if __name__ == "__main__":
    main()
