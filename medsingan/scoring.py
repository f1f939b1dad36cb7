"""``medsingan score``: the per-sample scores of ``augment`` for files on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medsingan.errors import ScanReadError
from medsingan.io import read_scan
from medsingan.metrics.diversity import diversity, similarity_to_source
from medsingan.metrics.patch_swd import PatchSWDScorer
from medsingan.metrics.sifid import DEFAULT_VARIANT, SifidScorer, find_inception_weights
from medsingan.preprocess import prepare_scan
from medsingan.presets import resolve_preset
from medsingan.pyramid import resize


def score_files(real: Path, fakes: list[Path], *, modality: str = "auto",
                window: str | None = None, sifid: bool = True,
                inception_weights: Path | None = None,
                sifid_variant: str = DEFAULT_VARIANT) -> dict[str, Any]:
    """Map every file with the real scan's preset and mapping, then score each fake.

    Each fake is compared with the real scan resized to the fake's size, as the trainer
    resizes it: for samples of a run's full size that is the run's training image, so the
    scores are those ``augment`` wrote. Returns ``{"images": [{image, sifid,
    similarity_to_source, patch_swd}], "diversity", "sifid_variant"}``; diversity needs two
    or more fakes of one size.
    """
    # the files first (a missing scan is named before missing SIFID weights), then the weights
    real_scan = read_scan(real)
    for path in fakes:
        if not Path(path).exists():
            raise ScanReadError(f"{path}: no such file")
    weights = find_inception_weights(inception_weights, sifid_variant) if sifid else None
    preset = resolve_preset(modality, real_scan.meta.modality)
    mapping, real_unit = prepare_scan(real_scan, preset, window=window)
    full_size = torch.from_numpy(real_unit)[None, None]
    scorer = SifidScorer(weights, variant=sifid_variant) if weights is not None else None
    references: dict[tuple[int, int], tuple[torch.Tensor, PatchSWDScorer]] = {}
    rows, units = [], []
    for path in fakes:
        unit = torch.from_numpy(mapping.to_unit(read_scan(path).image))[None, None]
        units.append(unit)
        shape = (unit.shape[-2], unit.shape[-1])
        if shape not in references:
            reference = resize(full_size, shape)
            references[shape] = (reference, PatchSWDScorer(reference, shape))
        reference, swd = references[shape]
        rows.append({
            "image": str(path),
            "sifid": scorer.score(reference, unit)[0] if scorer else None,
            "similarity_to_source": similarity_to_source(unit, reference)[0],
            "patch_swd": swd(unit)[0],
        })
    one_size = len(references) == 1 and len(units) >= 2
    return {
        "real": str(real),
        "images": rows,
        "diversity": diversity(torch.cat(units), next(iter(references.values()))[0])
        if one_size else None,
        "sifid_variant": scorer.variant if scorer else None,
    }
