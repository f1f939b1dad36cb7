"""``medsingan score``: the per-sample scores of ``augment`` for files on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medsingan.io import read_scan
from medsingan.metrics.diversity import diversity, similarity_to_source
from medsingan.metrics.patch_swd import PatchSWDScorer
from medsingan.metrics.sifid import SifidScorer, find_inception_weights
from medsingan.preprocess import prepare_scan
from medsingan.presets import resolve_preset


def score_files(real: Path, fakes: list[Path], *, modality: str = "auto",
                window: str | None = None, sifid: bool = True,
                inception_weights: Path | None = None) -> dict[str, Any]:
    """Map every file with the real scan's preset and mapping, then score each fake.

    Returns ``{"images": [{image, sifid, similarity_to_source, patch_swd}], "diversity",
    "sifid_variant"}``; diversity needs two or more fakes of the real scan's size.
    """
    weights = find_inception_weights(inception_weights) if sifid else None
    real_scan = read_scan(real)
    preset = resolve_preset(modality, real_scan.meta.modality)
    mapping, real_unit = prepare_scan(real_scan, preset, window=window)
    reference = torch.from_numpy(real_unit)[None, None]
    scorer = SifidScorer(weights) if weights is not None else None
    swd_scorers: dict[tuple[int, int], PatchSWDScorer] = {}
    rows, units = [], []
    for path in fakes:
        unit = torch.from_numpy(mapping.to_unit(read_scan(path).image))[None, None]
        units.append(unit)
        shape = tuple(unit.shape[-2:])
        if shape not in swd_scorers:
            swd_scorers[shape] = PatchSWDScorer(reference, shape)
        rows.append({
            "image": str(path),
            "sifid": scorer.score(reference, unit)[0] if scorer else None,
            "similarity_to_source": similarity_to_source(unit, reference)[0],
            "patch_swd": swd_scorers[shape](unit)[0],
        })
    same_size = len({tuple(u.shape) for u in units}) == 1
    return {
        "real": str(real),
        "images": rows,
        "diversity": diversity(torch.cat(units), reference)
        if len(units) >= 2 and same_size and units[0].shape == reference.shape else None,
        "sifid_variant": scorer.variant if scorer else None,
    }
