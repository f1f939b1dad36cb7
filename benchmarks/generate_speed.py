"""Generation speed: seconds for N scored samples at 250 px, end to end through ``augment``.

A 250-px model of pydicom-data's CR chest radiograph (RG1_UNCR.dcm) is trained for ONE
iteration per scale with the chosen speed preset (sampling cost depends on the architecture,
not on how well it is trained), then ``augment`` writes N derived DICOMs with manifest rows:
once without SIFID (SSIM, patch SWD and diversity still computed) and once with SIFID. The
Inception weights cannot be downloaded here, so a weights file of the right shapes with random
values is used: timing only, the scores themselves are meaningless. Pass --inception-weights
to time with the real file. ``sampling_only`` times the pyramid's forward passes alone (no
scores, no files).

    python benchmarks/generate_speed.py [--n 500] [--preset fast] [--device auto]

Prints JSON (no ratio to the official code: a time measured on another machine or day is not
comparable, and ``vs_official.py`` times training).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from pydicom.data import get_testdata_file

from medsingan.augment import AugmentRequest, augment, default_batch_size
from medsingan.generate import sample
from medsingan.metrics.sifid import PAPER_WEIGHTS_NAME
from medsingan.runs import train_scan
from medsingan.train import load_run


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _timed_augment(run_dir: Path, folder: Path, n: int, device: str, batch_size: int | None,
                   weights: Path | None) -> dict[str, float]:
    started = time.perf_counter()
    result = augment(AugmentRequest(run_dir=run_dir, n=n, out=folder / "samples",
                                    manifest=folder / "manifest.csv", sifid=weights is not None,
                                    inception_weights=weights, device=device,
                                    batch_size=batch_size, progress=False))
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "seconds_per_sample": round(seconds / n, 4),
            "samples_written": len(result.written)}


def _timed_sampling(run_dir: Path, n: int, device: str, batch_size: int | None) -> dict[str, float]:
    pyramid = load_run(run_dir)
    if device != "auto":
        pyramid.to(device)
    elif torch.cuda.is_available():
        pyramid.to("cuda")
    started = time.perf_counter()
    batch_size = batch_size or default_batch_size(pyramid, pyramid.shapes[0])
    sample(pyramid, n, seed=0, batch_size=batch_size)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "seconds_per_sample": round(seconds / n, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--size", type=int, default=250)
    parser.add_argument("--preset", default="fast", choices=("fast", "paper"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--inception-weights", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run_dir = folder / "chest"
        started = time.perf_counter()
        train_scan(Path(get_testdata_file("RG1_UNCR.dcm")), run_dir, speed_preset=args.preset,
                   overrides={"max_size": args.size, "iters": 1, "device": args.device},
                   progress=False)
        setup = time.perf_counter() - started
        weights = args.inception_weights
        if weights is None:
            weights = folder / PAPER_WEIGHTS_NAME
            network = torchvision.models.inception_v3(weights=None, aux_logits=True,
                                                      init_weights=False)
            torch.save(network.state_dict(), weights)
        sampling = _timed_sampling(run_dir, args.n, args.device, args.batch_size)
        unscored = _timed_augment(run_dir, folder / "no_sifid", args.n, args.device,
                                  args.batch_size, None)
        scored = _timed_augment(run_dir, folder / "sifid", args.n, args.device,
                                args.batch_size, weights)
    report = {
        "benchmark": "generate_speed",
        "n": args.n, "size": args.size, "preset": args.preset,
        "device": str(torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                                   else ("cpu" if args.device == "auto" else args.device))),
        "torch_threads": torch.get_num_threads(),
        "model_setup_seconds": round(setup, 1),
        "sampling_only": sampling,
        "without_sifid": unscored,
        "with_sifid": scored,
        "sifid_weights": "given file" if args.inception_weights else "random (timing only)",
        "peak_rss_gib": round(_peak_rss_gib(), 3),
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
