"""Training speed at 250 px: seconds per iteration at every scale, extrapolated total, peak RSS.

Trains the real CR chest radiograph (pydicom-data's RG1_UNCR.dcm, MONOCHROME1 inverted, centre
square resized to 250 x 250 px, i.e. the paper's 11-scale pyramid) for a few iterations per
scale with the public ``train`` function, once with the paper's hyper-parameters and once with
the fast default preset, each in a fresh process (so each peak RSS is its own). The first
iteration of every scale is a warm-up; of the others, the fastest is the figure used (other
processes on a shared machine only ever add time) and the median is shown beside it.

    python benchmarks/train_speed.py [--iters 4] [--size 250] [--configs paper fast]
        [--config NAME=PRESET,KEY=VALUE,...]

With ``--batched K [K ...]`` it measures batched multi-model training instead
(:mod:`medsingan.batched`): K crops of the chest (K different images of one size) trained
alone one after the other, then as one batch, each in a fresh process, the two right after
each other for every K; whole schedule of ``--iters`` iterations per scale; models per hour
of both and their ratio:

    python benchmarks/train_speed.py --batched 1 2 4 8 --size 64 --iters 20 --configs fast
    python benchmarks/train_speed.py --batched 1 8 32 --size 250 --iters 20 --device cuda

Prints JSON; each configuration's extrapolated total is also given as a ratio to the first
configuration's, measured in the same run (figures from different machines or days are not
comparable: these shared machines differ 4x). The official code side by side:
``benchmarks/vs_official.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from candidates import PRESETS, parse_candidate
from real_scans import chest_square

from medsingan.batched import train_batch
from medsingan.pyramid import resize
from medsingan.train import HISTORY_FILE, TrainConfig, run_summary, train


def measure(name: str, overrides: dict[str, Any], size: int, iters: int,
            threads: int | None) -> dict[str, Any]:
    """Train ``iters`` iterations per scale; per-scale median seconds per iteration."""
    if threads:
        torch.set_num_threads(threads)
    load_before = os.getloadavg()[0]
    full = TrainConfig(**(overrides | {"max_size": size, "device": "cpu"}))
    probe = TrainConfig(**(full.to_dict() | {"iters": iters, "log_every": 1,
                                            "betas": tuple(full.betas)}))
    image = chest_square(size)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        train(image, probe, Path(tmp), progress=False)
        summary = run_summary(Path(tmp))
        history = (Path(tmp) / HISTORY_FILE).read_text().splitlines()[1:]
    wall = time.perf_counter() - started
    seconds: dict[int, list[float]] = {}
    for line in history:
        scale, _, *_, cumulative = line.split(",")
        seconds.setdefault(int(scale), []).append(float(cumulative))
    scales = []
    for entry in summary["scales"]:
        times = seconds[entry["scale"]]
        steps = [b - a for a, b in zip(times, times[1:], strict=False)]  # drops the warm-up
        scales.append({
            "scale": entry["scale"], "size": [entry["height"], entry["width"]],
            "width": entry["channels"], "s_per_iter": round(min(steps), 4),
            "median_s_per_iter": round(statistics.median(steps), 4),
        })
    total_s = sum(s["s_per_iter"] for s in scales) * full.iters
    return {
        "config": name,
        "overrides": overrides,
        "iters_per_scale": full.iters,
        "scales": sorted(scales, key=lambda s: -s["scale"]),
        "extrapolated_total_hours": round(total_s / 3600, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "benchmark_wall_s": round(wall, 1),
        "threads": torch.get_num_threads(),
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def chest_crops(count: int, size: int) -> list[torch.Tensor]:
    """``count`` different squares of the chest (shifted windows of 60 % of its short side),
    each resized to ``size`` px."""
    image = chest_square(1024)
    side = 614
    crops = []
    for k in range(count):
        offset = round(k * (1024 - side) / max(count - 1, 1))
        window = image[..., offset:offset + side, (1024 - side) // 2:(1024 + side) // 2]
        crops.append(resize(window, (size, size)).clamp(-1, 1))
    return crops


def measure_batched(overrides: dict[str, Any], size: int, iters: int, k: int, batched: bool,
                    threads: int | None, device: str = "cpu") -> dict[str, Any]:
    """Train ``k`` models (alone one after the other, or as one batch); wall and peak RSS."""
    if threads:
        torch.set_num_threads(threads)
    config = TrainConfig(**(overrides | {"max_size": size, "iters": iters, "device": device}))
    images = chest_crops(k, size)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [Path(tmp) / f"m{i}" for i in range(k)]
        started = time.perf_counter()
        if batched:
            train_batch(images, [config] * k, dirs, progress=False)
        else:
            for image, run_dir in zip(images, dirs, strict=True):
                train(image, config, run_dir, progress=False)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - started
        # the training loops' own time (history's seconds at each scale's last row; a batch's
        # models share one loop), without the per-scale scoring, previews and checkpoints
        loops = [_loop_seconds(run_dir / HISTORY_FILE) for run_dir in dirs]
        loop = loops[0] if batched else sum(loops)
    return {"k": k, "batched": batched, "wall_s": round(wall, 2),
            "models_per_hour": round(k * 3600 / wall, 1), "train_loop_s": round(loop, 2),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def _loop_seconds(history: Path) -> float:
    last: dict[str, float] = {}
    for line in history.read_text().splitlines()[1:]:
        fields = line.split(",")
        last[fields[0]] = float(fields[-1])
    return sum(last.values())


def batched_main(args: argparse.Namespace) -> None:
    name = args.configs[0]
    rows = []
    for k in args.batched:
        pair = {}
        for batched in (False, True):
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                pair[batched] = pool.submit(measure_batched, PRESETS[name], args.size,
                                            args.iters, k, batched, args.threads,
                                            args.device).result()
        rows.append({"k": k, "alone": pair[False], "batched": pair[True],
                     "speedup_models_per_hour": round(pair[False]["wall_s"]
                                                      / pair[True]["wall_s"], 2),
                     "speedup_train_loop": round(pair[False]["train_loop_s"]
                                                 / pair[True]["train_loop_s"], 2)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    json.dump({"machine": {"cpus": os.cpu_count(), "torch": torch.__version__,
                           "device": args.device,
                           "gpu": (torch.cuda.get_device_name(0)
                                   if args.device.startswith("cuda") else None)},
               "config": name, "size": args.size, "iters_per_scale": args.iters,
               "threads": args.threads or torch.get_num_threads(), "results": rows},
              sys.stdout, indent=2)
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=4, help="iterations per scale (1 warm-up)")
    parser.add_argument("--size", type=int, default=250, help="max side in px")
    parser.add_argument("--configs", nargs="+", default=["paper", "fast"], choices=list(PRESETS))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--device", default="cpu",
                        help="--batched: cpu or cuda (models per GPU-hour)")
    parser.add_argument("--batched", type=int, nargs="+", default=None, metavar="K",
                        help="measure batched training of K models instead (first --configs)")
    parser.add_argument("--config", action="append", default=[], metavar="NAME=PRESET,K=V,...",
                        help="also a candidate configuration: a preset with fields changed, "
                        "e.g. balanced_c3=balanced,concurrent=3; measured after --configs")
    args = parser.parse_args()
    if args.batched:
        batched_main(args)
        return
    candidates = {name: PRESETS[name] for name in args.configs}
    for text in args.config:
        name, overrides = parse_candidate(text, set(candidates), args.size)
        candidates[name] = overrides
    results = []
    for name, overrides in candidates.items():
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            results.append(pool.submit(measure, name, overrides, args.size, args.iters,
                                       args.threads).result())
    baseline = results[0]
    for result in results:
        result[f"total_ratio_to_{baseline['config']}"] = round(
            result["extrapolated_total_hours"] / max(baseline["extrapolated_total_hours"], 1e-9), 3)
    json.dump({"machine": {"cpus": torch.get_num_threads(), "torch": torch.__version__},
               "results": results}, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
