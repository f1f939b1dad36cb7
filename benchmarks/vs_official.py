"""medsingan's training against the official SinGAN, side by side, in one run on one machine.

Speed figures measured on different days of these shared machines differ by 4x; only a ratio
of two times measured one right after the other means anything. This benchmark trains the same
real image with the official code (tamarott/SinGAN at commit df38a42) and with medsingan's
presets, one process after the other, and prints each whole-process wall time, its peak RSS
and the ratios to the official time.

The official code is not part of medsingan and is never committed here. Get its ``.py`` files
from a clone of the public fork jrmkim50/SinGAN, which holds df38a42 in its history (``git
archive`` fails on that repository's large files)::

    git clone https://github.com/jrmkim50/SinGAN official-git
    python benchmarks/vs_official.py --extract-from official-git --official official

then run (it needs the official code's own dependencies: ``pip install scikit-image
scikit-learn imageio matplotlib``)::

    python benchmarks/vs_official.py --official official [--sizes 64,250] [--iters 50]
        [--presets paper,fast] [--omp default,active]

The copy it runs (in a temporary folder) gets only the changes current libraries need: the
generator step recomputes ``fake = netG(noise.detach(), prev)`` before ``netD(fake)`` (torch
>= 1.5 refuses the in-place update of a graph the critic's step already freed), the
``scipy.ndimage.filters/measurements/interpolation`` modules, removed from SciPy, become
``scipy.ndimage``, and ``np.int`` (removed from NumPy) becomes ``int``.

Run it on an otherwise idle machine: the official code keeps OpenMP's default busy-waiting
threads, so with any other load on the cores its time grows many-fold (on a 2-core machine
running a second training, its 32-px, 2-iteration toy had not finished scale 1 after 100 s).

The image is pydicom-data's CR chest (RG1_UNCR.dcm), its centre square in display polarity,
as an 8-bit PNG: RGB for the official code (it reads three channels), grayscale for medsingan
(same pixels). Both train with ``--max_size``/``--max-size`` = size and ``N`` iterations per
scale on the CPU; every other hyper-parameter is the program's (the official defaults: minimum
size 25, scale factor 0.75; each medsingan preset's own). "Whole process"
includes start-up, the pyramid, saving, and the official script's 50 random samples at the end.
``--omp active`` runs medsingan with ``OMP_WAIT_POLICY=ACTIVE`` (medsingan sets ``PASSIVE``
unless told otherwise, for workers sharing cores); ``default`` leaves the policy as each program
sets it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

OFFICIAL_COMMIT = "df38a4214af95462fa97a613d6ba53eb441509dd"
OFFICIAL_FILES = ("main_train.py", "config.py", "SinGAN/__init__.py", "SinGAN/functions.py",
                  "SinGAN/imresize.py", "SinGAN/manipulate.py", "SinGAN/models.py",
                  "SinGAN/training.py")
OFFICIAL_NEEDS = ("skimage", "sklearn", "imageio", "matplotlib", "scipy")
HOW_TO_GET = ("give --official DIR, a folder with the official SinGAN's .py files of commit "
              "df38a42: clone https://github.com/jrmkim50/SinGAN (it holds that commit) and run "
              "python benchmarks/vs_official.py --extract-from CLONE --official DIR")


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def extract(git_dir: Path, target: Path) -> None:
    """Copy the official ``.py`` files of df38a42 out of a git clone (``git show``)."""
    for name in OFFICIAL_FILES:
        shown = subprocess.run(["git", "-C", str(git_dir), "show", f"{OFFICIAL_COMMIT}:{name}"],
                               capture_output=True)
        if shown.returncode != 0:
            if name.endswith("__init__.py"):  # absent in some trees: a namespace package
                shown.stdout = b""
            else:
                fail(f"{git_dir} has no {name} at {OFFICIAL_COMMIT[:7]}: "
                     f"{shown.stderr.decode().strip()}")
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_bytes(shown.stdout)


def _replace(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_bytes().decode()  # as stored: the official files end lines with CRLF
    found = text.count(old)
    if found != count:
        fail(f"{path.name}: expected {count} occurrence(s) of {old.strip()!r}, found {found}; "
             f"is this the official code at {OFFICIAL_COMMIT[:7]}?")
    path.write_bytes(text.replace(old, new).encode())


def patched_copy(official: Path, folder: Path) -> Path:
    """The official code copied to ``folder`` with the three changes current libraries need."""
    missing = [name for name in OFFICIAL_FILES
               if not name.endswith("__init__.py") and not (official / name).is_file()]
    if missing:
        fail(f"{official} lacks {', '.join(missing)}: {HOW_TO_GET}")
    code = folder / "official"
    shutil.copytree(official, code, ignore=shutil.ignore_patterns("*.pyc", "__pycache__",
                                                                   "TrainedModels", "Output"))
    training = code / "SinGAN" / "training.py"
    newline = "\r\n" if b"\r\n" in training.read_bytes() else "\n"
    # the generator step: a fresh forward pass instead of the graph the critic's step used
    _replace(training, f"            output = netD(fake){newline}",
             f"            fake = netG(noise.detach(), prev){newline}"
             f"            output = netD(fake){newline}")
    _replace(code / "SinGAN" / "imresize.py",
             "from scipy.ndimage import filters, measurements, interpolation",
             "from scipy import ndimage as filters" + newline
             + "measurements = interpolation = filters")
    _replace(code / "SinGAN" / "imresize.py", "np.int(", "int(")
    return code


def chest_png(size: int, folder: Path) -> tuple[Path, Path]:
    """The CR chest's centre square at ``size`` px as 8-bit PNGs: (RGB, grayscale)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from real_scans import chest_square

    unit = chest_square(size)[0, 0].numpy()
    pixels = np.round((unit + 1) / 2 * 255).clip(0, 255).astype(np.uint8)
    rgb, gray = folder / f"chest{size}.png", folder / f"chest{size}_gray.png"
    Image.fromarray(np.stack([pixels] * 3, axis=-1), "RGB").save(rgb)
    Image.fromarray(pixels, "L").save(gray)
    return rgb, gray


def timed(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> dict[str, Any]:
    """Wall time (s) and peak RSS (MiB) of one process; its output goes to ``log``."""
    with log.open("wb") as sink:
        tic = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=sink,
                                   stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - tic
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        fail(f"{' '.join(command[:3])} ... exited {process.returncode}:\n" + "\n".join(tail))
    return {"seconds": round(seconds, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024)}


def medsingan_command(image: Path, out: Path, preset: str, size: int, iters: int) -> list[str]:
    return [sys.executable, "-c", "from medsingan.cli import main; main()", "train", str(image),
            "--modality", "xray", "--preset", preset, "--max-size", str(size),
            "--iters", str(iters), "--device", "cpu",
            "--out", str(out), "--quiet"]


def official_command(image: Path, size: int, iters: int) -> list[str]:
    return [sys.executable, "main_train.py", "--input_dir", str(image.parent), "--input_name",
            image.name, "--max_size", str(size), "--niter", str(iters), "--not_cuda"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, help="folder of the official .py files")
    parser.add_argument("--extract-from", type=Path,
                        help="a git clone holding df38a42: write its .py files to --official")
    parser.add_argument("--sizes", default="64,250", help="max sides, px (comma-separated)")
    parser.add_argument("--iters", type=int, default=50, help="iterations per scale")
    parser.add_argument("--presets", default="paper,fast", help="medsingan speed presets")
    parser.add_argument("--omp", default="default",
                        help="medsingan's OpenMP wait policies to run: default, active")
    args = parser.parse_args()
    if args.official is None:
        fail(HOW_TO_GET)
    if args.extract_from is not None:
        if args.official.exists() and any(args.official.iterdir()):
            fail(f"{args.official} exists and is not empty; give a new folder to extract to")
        extract(args.extract_from, args.official)
        print(json.dumps({"extracted": str(args.official), "commit": OFFICIAL_COMMIT}))
        return
    if not args.official.is_dir():
        fail(f"{args.official} is not a folder: {HOW_TO_GET}")
    lacking = [name for name in OFFICIAL_NEEDS if _missing(name)]
    if lacking:
        fail(f"the official code needs {', '.join(lacking)}: pip install scikit-image "
             "scikit-learn imageio matplotlib scipy")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    policies = [p.strip() for p in args.omp.split(",") if p.strip()]
    if any(p not in ("default", "active") for p in policies):
        fail("--omp takes default and/or active")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vs_official_") as tmp:
        folder = Path(tmp)
        code = patched_copy(args.official, folder)
        base_env = {**os.environ, "MPLBACKEND": "Agg"}
        base_env.pop("OMP_WAIT_POLICY", None)
        for size in sizes:
            rgb, gray = chest_png(size, folder)
            official = timed(official_command(rgb, size, args.iters), code, base_env,
                             folder / f"official{size}.log")
            entry: dict[str, Any] = {"size": size, "iters_per_scale": args.iters,
                                     "official": official, "medsingan": {}}
            for preset in presets:
                for policy in policies:
                    env = dict(base_env)
                    if policy == "active":
                        env["OMP_WAIT_POLICY"] = "ACTIVE"
                    name = preset if policy == "default" else f"{preset}+omp_active"
                    run = timed(medsingan_command(gray, folder / f"run_{size}_{name}", preset,
                                                  size, args.iters),
                                folder, env, folder / f"medsingan_{size}_{name}.log")
                    run["ratio_to_official"] = round(run["seconds"] / official["seconds"], 3)
                    run["speedup_vs_official"] = round(official["seconds"] / run["seconds"], 2)
                    entry["medsingan"][name] = run
            results.append(entry)
            print(json.dumps(entry), file=sys.stderr, flush=True)
    import torch

    print(json.dumps({"benchmark": "vs_official", "official_commit": OFFICIAL_COMMIT,
                      "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "cpus": os.cpu_count(), "machine": platform.machine(),
                      "results": results}, indent=2))


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


if __name__ == "__main__":
    main()
