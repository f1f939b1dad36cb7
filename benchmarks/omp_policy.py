"""OpenMP waiting for a lone training and for trainings that share the cores.

torch's CPU kernels run on libgomp threads. Between two parallel regions an idle thread either
spins (fast to wake, but it holds a core) or sleeps (frees the core, slower to wake). A lone
training wants spinning; processes sharing cores want sleeping, or they spin against each
other. This benchmark runs ``medsingan train`` (the CR chest's centre square, 8-bit PNG) once
alone and then as ``--jobs`` copies at the same time, under each waiting setting, and prints
the whole-process wall times as JSON:

- ``passive``: ``OMP_WAIT_POLICY=PASSIVE`` (sleep at once; medsingan's default before this
  benchmark),
- ``spin:K``: ``GOMP_SPINCOUNT=K`` (spin K rounds, about 100,000 per millisecond, then sleep;
  libgomp's own default is 300,000). medsingan sets ``OMP_WAIT_POLICY=PASSIVE`` when it is
  unset, so these runs are PASSIVE with the spin count given; libgomp then spins the count
  given (two such jobs sharing the cores measured 6.7x slower than passive ones),
- ``active``: ``OMP_WAIT_POLICY=ACTIVE`` (spin for minutes).

    python benchmarks/omp_policy.py [--size 64] [--iters 20] [--jobs 2]
        [--policies passive,spin:30000,spin:300000,active]

Run it on an otherwise idle machine; compare the times of one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from real_scans import chest_square


def environment(policy: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy in ("passive", "active"):
        env["OMP_WAIT_POLICY"] = policy.upper()
    elif policy.startswith("spin:") and policy[5:].isdigit():
        env["GOMP_SPINCOUNT"] = policy[5:]
    else:
        raise SystemExit(f"error: unknown policy {policy!r}: passive, active or spin:K")
    return env


def run_together(image: Path, folder: Path, policy: str, jobs: int, size: int,
                 iters: int) -> list[float]:
    """Start ``jobs`` trainings at once; each one's wall time (s)."""
    env = environment(policy)
    started, processes = time.perf_counter(), []
    for job in range(jobs):
        out = folder / f"{policy.replace(':', '_')}_{jobs}_{job}"
        command = [sys.executable, "-c", "from medsingan.cli import main; main()", "train",
                   str(image), "--modality", "xray", "--max-size", str(size), "--iters",
                   str(iters), "--device", "cpu", "--out", str(out), "--quiet"]
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE))
    finished: dict[int, float] = {}
    while len(finished) < len(processes):  # each one's own finish time, in whatever order
        for k, process in enumerate(processes):
            if k not in finished and process.poll() is not None:
                finished[k] = time.perf_counter() - started
                if process.returncode != 0:
                    err = process.stderr.read().decode() if process.stderr else ""
                    raise SystemExit(f"error: training failed: {err.strip()[-400:]}")
        time.sleep(0.05)
    return [round(finished[k], 1) for k in range(len(processes))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="max side, px")
    parser.add_argument("--iters", type=int, default=20, help="iterations per scale")
    parser.add_argument("--jobs", type=int, default=2, help="trainings sharing the cores")
    parser.add_argument("--policies", default="passive,spin:30000,spin:300000,active")
    args = parser.parse_args()
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    for policy in policies:
        environment(policy)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="omp_policy_") as tmp:
        folder = Path(tmp)
        unit = chest_square(args.size)[0, 0].numpy()
        image = folder / "chest.png"
        Image.fromarray(np.round((unit + 1) * 127.5).clip(0, 255).astype(np.uint8)).save(image)
        for policy in policies:
            alone = run_together(image, folder, policy, 1, args.size, args.iters)[0]
            shared = run_together(image, folder, policy, args.jobs, args.size, args.iters)
            rows.append({"policy": policy, "alone_s": alone, f"{args.jobs}_together_s": shared,
                         "together_per_run_s": round(max(shared) / args.jobs, 1)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "omp_policy", "cpus": os.cpu_count(), "size": args.size,
                      "iters_per_scale": args.iters, "jobs": args.jobs, "preset": "fast",
                      "results": rows}, indent=2))


if __name__ == "__main__":
    main()
