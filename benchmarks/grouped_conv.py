"""Why batching K models gains little on a CPU: one grouped 3x3 convolution against K separate ones.

Batched training (:mod:`medsingan.batched`) turns the K models' convolutions at a scale into
one convolution with ``groups=K``. This times, in one process, one after the other, a SinGAN
block's convolution (``C`` channels in and out, 3x3, one image) for K models both ways:
forward only and forward plus backward (the weights' and the input's gradients), at each
``--sizes`` side, and prints JSON with the milliseconds per call (median of ``--repeats``), the
ratio separate / grouped and the GFLOPS reached, beside a large matrix product's GFLOPS (what
this CPU's BLAS reaches at best). A ratio near 1 with GFLOPS near the matrix product's means
the convolutions are compute-bound: grouping them removes launch overhead, not arithmetic.

    python benchmarks/grouped_conv.py [--k 8] [--channels 32] [--sizes 25 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F


def _median_ms(step: Callable[[], None], repeats: int) -> float:
    step()  # warm-up: oneDNN picks its kernels on the first call
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def measure(k: int, channels: int, size: int, repeats: int) -> dict[str, float]:
    """Grouped against separate, forward and forward+backward, at one side."""
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(channels, channels, 3, 3, generator=gen, requires_grad=True)
               for _ in range(k)]
    images = [torch.randn(1, channels, size, size, generator=gen, requires_grad=True)
              for _ in range(k)]
    grouped_w = torch.cat([w.detach() for w in weights]).requires_grad_(True)
    grouped_x = torch.cat([x.detach() for x in images], 1).requires_grad_(True)

    def separate(backward: bool) -> Callable[[], None]:
        def step() -> None:
            outs = [F.conv2d(x, w, padding=1) for x, w in zip(images, weights, strict=True)]
            if backward:
                torch.autograd.backward([o.sum() for o in outs])
        return step

    def grouped(backward: bool) -> Callable[[], None]:
        def step() -> None:
            out = F.conv2d(grouped_x, grouped_w, padding=1, groups=k)
            if backward:
                out.sum().backward()
        return step

    flops = 2 * k * channels * channels * 9 * size * size  # one forward, all K models
    row: dict[str, float] = {"size": size}
    for label, backward, passes in (("forward", False, 1), ("forward_backward", True, 3)):
        with torch.set_grad_enabled(backward):
            alone = _median_ms(separate(backward), repeats)
            together = _median_ms(grouped(backward), repeats)
        row[f"{label}_separate_ms"] = round(alone, 3)
        row[f"{label}_grouped_ms"] = round(together, 3)
        row[f"{label}_ratio"] = round(alone / together, 2)
        row[f"{label}_grouped_gflops"] = round(passes * flops / together / 1e6, 1)
    return row


def matmul_gflops(repeats: int) -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    return round(2 * 1024 ** 3 / _median_ms(lambda: torch.mm(a, b), repeats) / 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=8, help="models grouped")
    parser.add_argument("--channels", type=int, default=32, help="channels in and out")
    parser.add_argument("--sizes", type=int, nargs="+", default=[25, 64], help="sides in px")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [measure(args.k, args.channels, size, args.repeats) for size in args.sizes]
    json.dump({"benchmark": "grouped_conv", "k": args.k, "channels": args.channels,
               "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
               "torch": torch.__version__, "matmul_1024_gflops": matmul_gflops(args.repeats),
               "results": rows}, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
