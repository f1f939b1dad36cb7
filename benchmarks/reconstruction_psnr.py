"""How closely a run directory redraws its scan: the PSNR of the z* reconstruction.

A trained SinGAN fed its fixed reconstruction noise z* (coarsest scale, zeros above) redraws
the training image; ``weights.safetensors`` holds both, so anyone with the run has the scan.
This prints, as JSON, the PSNR (peak: the [-1, 1] range, 2) of that reconstruction against
the training image at the finest scale, and for comparison against a blurred copy (the
training image down to the coarsest scale and back up), and the sizes of scales 0 and N.

    medsingan train "$(python -c 'from pydicom.data import get_testdata_file as g;
        print(g("RG1_UNCR.dcm"))')" --max-size 64 --iters 300 --out runs/psnr --quiet
    python benchmarks/reconstruction_psnr.py runs/psnr
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from medsingan.pyramid import resize
from medsingan.train import load_run


def psnr(image: torch.Tensor, reference: torch.Tensor, peak: float = 2.0) -> float:
    """10 log10(peak² / MSE) in dB (inf when identical)."""
    mse = float(torch.mean((image.double() - reference.double()) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args()
    pyramid = load_run(args.run_dir)
    with torch.no_grad():
        reconstruction = pyramid.reconstruct(0).clamp(-1, 1)
    real = pyramid.reals[0]
    blurred = resize(pyramid.reals[pyramid.coarsest], real.shape[-2:])
    print(json.dumps({
        "run_dir": str(args.run_dir),
        "finest_size": list(real.shape[-2:]),
        "coarsest_size": list(pyramid.reals[pyramid.coarsest].shape[-2:]),
        "scales": pyramid.num_scales,
        "iters_per_scale": pyramid.metadata["train"]["iters"],
        "reconstruction_psnr_db": round(psnr(reconstruction, real), 2),
        "coarsest_upsampled_psnr_db": round(psnr(blurred, real), 2),
    }, indent=2))


if __name__ == "__main__":
    main()
