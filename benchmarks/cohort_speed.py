"""Cohort throughput: one model per scan, sequentially, on a local pool and on a Dask cluster.

Eight real scans of pydicom/pydicom-data (and nibabel), ``--size`` px, ``--iters`` per scale.
Each mode runs ``medsingan cohort train`` in a process of its own, one after the other on this
machine, from empty run folders:

- ``sequential``: one worker process using every core (intra-op threads);
- ``pool``: ``--workers 2``, one thread each;
- ``dask``: ``--scheduler local --workers 2`` (a LocalCluster, one thread per worker);
- ``pool_killed``: as ``pool``, with one worker SIGKILLed once the first model is under way;
  the pool is rebuilt, the lost models resume from their last finished scale.

Prints JSON: wall time, models per hour, peak RSS of the largest worker, speed-up against
sequential (ratios within one run only), and the time a killed worker cost.

    python benchmarks/cohort_speed.py --size 64 --iters 200
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel
from pydicom.data import get_testdata_file

SCANS = {"normal": ("CT_small.dcm", "RG1_UNCR.dcm", "RG3_UNCR.dcm", "693_UNCR.dcm"),
         "abnormal": ("MR_small.dcm", "MR2_UNCR.dcm", "emri_small.dcm")}
NIFTI = Path(os.path.dirname(nibabel.__file__)) / "tests" / "data" / "anatomical.nii"
# Measures the peak RSS of the workers (children) of the cohort process it wraps.
_WRAPPER = ("import resource, runpy, sys; sys.argv = ['medsingan', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('medsingan.cli', run_name='__main__')\n"
            "finally:\n    print('PEAK_RSS_KIB', resource.getrusage("
            "resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n")


def build_cohort(folder: Path) -> Path:
    data = folder / "data"
    for label, names in SCANS.items():
        (data / label).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copyfile(get_testdata_file(name), data / label / name)
    shutil.copyfile(NIFTI, data / "abnormal" / "anatomical.nii")
    manifest = folder / "real.csv"
    subprocess.run([sys.executable, "-m", "medsingan.cli", "manifest", "from-folder", str(data),
                    "-o", str(manifest)], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "medsingan.cli", "manifest", "split", str(manifest),
                    "--test", "0"], check=True, capture_output=True)
    return manifest


def _workers(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if parent == pid and b"spawn_main" in command and b"resource_tracker" not in command:
            found.append(int(entry.name))
    return found


def run_mode(manifest: Path, runs: Path, args: argparse.Namespace, extra: list[str],
             kill: bool = False) -> dict[str, float]:
    command = [sys.executable, "-c", _WRAPPER, "cohort", "train", str(manifest), "--runs",
               str(runs), "--max-size", str(args.size), "--iters", str(args.iters), "--quiet",
               *extra]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    killed_at = None
    if kill:
        while not list(runs.glob("*/weights.safetensors")) and process.poll() is None:
            time.sleep(0.2)
        victims = _workers(process.pid)
        if victims:
            os.kill(victims[0], signal.SIGKILL)
            killed_at = round(time.perf_counter() - started, 1)
    out, err = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(extra)} failed: {err.strip().splitlines()[-3:]}")
    peak = next((int(line.split()[1]) for line in err.splitlines()
                 if line.startswith("PEAK_RSS_KIB")), 0)
    models = len(list(runs.glob("*/weights.safetensors")))
    result = {"seconds": round(seconds, 1), "models": models,
              "models_per_hour": round(models * 3600 / seconds, 1),
              "peak_worker_rss_mib": round(peak / 1024, 1), "report": out.strip()}
    if killed_at is not None:
        result["killed_at_s"] = killed_at
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--modes", default="sequential,pool,dask,pool_killed")
    args = parser.parse_args()
    modes = {"sequential": ["--workers", "1"], "pool": ["--workers", "2"],
             "dask": ["--scheduler", "local", "--workers", "2"],
             "pool_killed": ["--workers", "2"]}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = build_cohort(folder)
        results = {}
        for mode in args.modes.split(","):
            results[mode] = run_mode(manifest, folder / f"runs_{mode}", args, modes[mode],
                                     kill=mode == "pool_killed")
    base = results.get("sequential", {}).get("seconds")
    for result in results.values():
        if base:
            result["speedup_vs_sequential"] = round(base / result["seconds"], 2)
    if "pool" in results and "pool_killed" in results:
        results["pool_killed"]["seconds_lost"] = round(
            results["pool_killed"]["seconds"] - results["pool"]["seconds"], 1)
    print(json.dumps({"benchmark": "cohort_speed", "size": args.size, "iters": args.iters,
                      "cores": os.cpu_count(), "scans": 8, "modes": results}, indent=2))


if __name__ == "__main__":
    main()
