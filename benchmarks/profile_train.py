"""Where a training iteration's time goes: the torch profiler over a short real training.

Trains the CR chest's centre square (``real_scans.chest_square``) with a speed preset for a few
iterations per scale under ``torch.profiler`` (CPU; CUDA too when training there) and prints
JSON: the operators with the most self time, and the share of the profiled time spent in
convolutions (forward and backward), normalisation, the optimiser, noise drawing, resizing,
host-device synchronisations (``.item()``) and everything else.

    python benchmarks/profile_train.py [--size 64] [--iters 5] [--config fast] [--batch-models K]
                                       [--device cuda]

With ``--batch-models K`` it profiles K crops trained as one batch (:mod:`medsingan.batched`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from real_scans import chest_square
from torch.profiler import ProfilerActivity, profile
from train_speed import PRESETS, chest_crops

from medsingan.batched import train_batch
from medsingan.train import TrainConfig, train

# operator name fragments -> the category they count towards (first match wins)
CATEGORIES = (
    ("convolution", ("conv", "mkldnn_convolution", "thnn_conv")),
    ("normalisation", ("batch_norm", "instance_norm", "native_batch_norm")),
    ("optimiser", ("adam", "_foreach", "lerp", "addcdiv", "addcmul")),
    ("noise", ("randn", "normal_", "rand")),
    ("resize", ("upsample", "interpolate", "grid_sampler")),
    ("synchronisation", ("item", "_local_scalar_dense")),
)


def category(name: str) -> str:
    lowered = name.lower()
    for label, fragments in CATEGORIES:
        if any(fragment in lowered for fragment in fragments):
            return label
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--config", default="fast", choices=list(PRESETS))
    parser.add_argument("--batch-models", type=int, default=1)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    config = TrainConfig(**(PRESETS[args.config] | {"max_size": args.size, "iters": args.iters,
                                                     "device": args.device}))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                           if args.device.startswith("cuda") else [])
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        with profile(activities=activities) as prof:
            if args.batch_models > 1:
                crops = chest_crops(args.batch_models, args.size)
                train_batch(crops, [config] * len(crops),
                            [Path(tmp) / f"m{k}" for k in range(len(crops))], progress=False)
            else:
                train(chest_square(args.size), config, Path(tmp), progress=False)
        wall = time.perf_counter() - started
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1
    shares: dict[str, float] = {}
    for event in events:
        label = category(event.key)
        shares[label] = shares.get(label, 0.0) + event.self_cpu_time_total / total
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]
    json.dump({
        "config": args.config, "size": args.size, "iters_per_scale": args.iters,
        "batch_models": args.batch_models, "wall_s": round(wall, 2),
        "threads": torch.get_num_threads(),
        "self_cpu_share": {k: round(v, 3) for k, v in sorted(shares.items(),
                                                             key=lambda kv: -kv[1])},
        "top_ops": [{"op": e.key, "calls": e.count,
                     "self_cpu_ms": round(e.self_cpu_time_total / 1000, 1),
                     "share": round(e.self_cpu_time_total / total, 3)} for e in top],
    }, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
