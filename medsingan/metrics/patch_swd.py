"""Multi-scale sliced Wasserstein distance between patch distributions (weight-free).

After Karras et al., *Progressive Growing of GANs* (ICLR 2018): each image set is decomposed
into a Laplacian pyramid; at every level, 7 x 7 patches are taken as descriptors; the distance
between the two descriptor sets is the sliced Wasserstein distance, i.e. the mean over random
unit directions of the 1-D Wasserstein-1 distance of the projections (sorted and compared).

Unlike ProGAN, both sets are normalised with the *reference* set's per-channel mean and standard
deviation, so a generator that shifts contrast or brightness is penalised instead of forgiven.
All functions are pure and deterministic for a given ``seed``.

>>> real = torch.rand(1, 1, 64, 64) * 2 - 1
>>> result = patch_swd(real, real.clone())
>>> result["mean"] == 0.0
True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(images: torch.Tensor) -> torch.Tensor:
    kernel = (_BINOMIAL[:, None] * _BINOMIAL[None, :]).to(images)
    channels = images.shape[1]
    weight = kernel.expand(channels, 1, 5, 5)
    return F.conv2d(F.pad(images, [2] * 4, mode="reflect"), weight, groups=channels)


def laplacian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Band-pass levels of ``(N, C, H, W)`` images, finest first; the last is the low-pass rest.

    Level ``k`` is ``g_k - up(g_{k+1})`` with ``g_{k+1} = down2(blur(g_k))``.
    """
    bands = []
    current = images
    for _ in range(levels - 1):
        low = _blur(current)[..., ::2, ::2]
        up = F.interpolate(low, size=current.shape[-2:], mode="bilinear", align_corners=False)
        bands.append(current - up)
        current = low
    bands.append(current)
    return bands


def patch_descriptors(images: torch.Tensor, max_count: int, generator: torch.Generator,
                      patch_size: int = 7) -> torch.Tensor:
    """Every ``patch_size``-square patch of ``(N, C, H, W)`` as ``(M, C*p*p)`` rows, or a random
    subset of ``max_count`` of them (without replacement) when there are more."""
    patches = F.unfold(images, patch_size)  # (N, C*p*p, L)
    flat = patches.permute(0, 2, 1).reshape(-1, patches.shape[1])
    if flat.shape[0] <= max_count:
        return flat
    index = torch.randperm(flat.shape[0], generator=generator)[:max_count]
    return flat[index.to(flat.device)]


def _quantiles(sorted_values: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` evenly spaced quantiles (rows) of column-wise sorted values."""
    if sorted_values.shape[0] == count:
        return sorted_values
    positions = ((torch.arange(count) + 0.5) * sorted_values.shape[0] / count).long()
    return sorted_values[positions.to(sorted_values.device)]


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, directions: int,
                       generator: torch.Generator) -> float:
    """Mean 1-D Wasserstein-1 distance of ``(M, D)`` and ``(K, D)`` point sets along random unit
    directions (sets of different sizes are compared through their quantiles)."""
    projection = torch.randn(a.shape[1], directions, generator=generator).to(a)
    projection = projection / projection.norm(dim=0, keepdim=True)
    count = max(a.shape[0], b.shape[0])
    proj_a = _quantiles(torch.sort(a @ projection, dim=0).values, count)
    proj_b = _quantiles(torch.sort(b @ projection, dim=0).values, count)
    return float((proj_a - proj_b).abs().mean())


def _normalise(descriptors: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
               channels: int) -> torch.Tensor:
    grouped = descriptors.reshape(descriptors.shape[0], channels, -1)
    return ((grouped - mean[:, None]) / std[:, None]).reshape(descriptors.shape[0], -1)


@torch.no_grad()
def patch_swd(
    reference: torch.Tensor,
    candidates: torch.Tensor,
    *,
    levels: int | None = None,
    patches: int = 4096,
    directions: int = 512,
    patch_size: int = 7,
    seed: int = 0,
) -> dict[str, float | list[float]]:
    """SWD between the patch statistics of ``reference`` and ``candidates`` (``(N, C, H, W)``).

    Args:
        reference: real image(s), e.g. the training scan ``(1, 1, H, W)`` in [-1, 1].
        candidates: generated images of the same channel count (any size >= the patch).
        levels: Laplacian levels; default: as many as keep the coarsest side >= 2 patches.
        patches: at most this many descriptors per set and level (all when fewer).
        directions: random projection directions.
        seed: seeds patch and direction draws.

    Returns:
        ``{"levels": [swd per level, finest first], "mean": mean over levels}`` (x 1000 as in
        ProGAN's tables). Lower is better; 0 for identical patch distributions.
    """
    smallest = min(*reference.shape[-2:], *candidates.shape[-2:])
    if smallest < patch_size:
        raise ValueError(f"images of {smallest} px are smaller than the {patch_size} px patch")
    if levels is None:
        levels = 1
        while smallest // 2**levels >= 2 * patch_size:
            levels += 1
    generator = torch.Generator().manual_seed(seed)
    channels = reference.shape[1]
    per_level = []
    for ref_band, cand_band in zip(laplacian_pyramid(reference.float(), levels),
                                   laplacian_pyramid(candidates.float(), levels), strict=True):
        ref = patch_descriptors(ref_band, patches, generator, patch_size)
        cand = patch_descriptors(cand_band, patches, generator, patch_size)
        grouped = ref.reshape(ref.shape[0], channels, -1)
        mean = grouped.mean(dim=(0, 2))
        std = grouped.std(dim=(0, 2)).clamp_min(1e-8)
        ref, cand = (_normalise(d, mean, std, channels) for d in (ref, cand))
        per_level.append(1e3 * sliced_wasserstein(ref, cand, directions, generator))
    return {"levels": per_level, "mean": sum(per_level) / len(per_level)}
