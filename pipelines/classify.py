"""Train a MONAI 2D classifier from a manifest's training split, score it on its test split.

The question the project has to answer is whether medsingan's synthetic rows make a classifier
better. This module is the classifier: one function, :func:`train_and_evaluate`, takes a
manifest and an *arm* and writes ``results.json`` and ``roc.png``; the four arms differ only in
the training data, never in the hyper-parameters:

========== ==================================================================================
arm        training images
========== ==================================================================================
none       the real rows of the training split
classic    the same, through MONAI random transforms (:class:`ClassicAugmentation`)
medsingan  the real rows plus the synthetic rows of the training split (training subjects only)
both       the medsingan rows through the classic transforms
========== ==================================================================================

Every image is read by MONAI ``LoadImaged`` (DICOM, NIfTI, PNG, JPEG), put in display polarity
(a MONOCHROME1 DICOM is inverted), made one channel (RGB -> luminance), resized to
``size x size`` and scaled to [0, 1] per image, so that a CT in HU, a 15-bit radiograph and an
8-bit PNG reach the network on the same scale.

The evaluation is honest by construction: a manifest with a subject on both sides, a synthetic
test row, or a synthetic training row made from a test image is refused before anything is
trained or written (:class:`ClassifyError`).

Command line (``--help`` lists every option)::

    python -m pipelines.classify data_manifests/chest.csv --out results/chest_none --augment none
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import monai
import numpy as np
import pandas as pd
import torch
import typer
from monai.config import KeysCollection
from monai.data import DataLoader, Dataset, MetaTensor
from monai.networks.nets import DenseNet121, resnet18
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Resized,
    ScaleIntensityd,
)
from monai.utils import set_determinism
from PIL import Image, ImageDraw, ImageFont
from scipy.stats import rankdata

from medsingan import __version__
from medsingan.cli import run_app
from medsingan.devices import resolve_device
from medsingan.errors import MedsinganError
from medsingan.io.atomic import atomic_path
from medsingan.manifest import check_manifest, read_manifest, resolve_image, utc_timestamp

__all__ = [
    "ARMS",
    "MODELS",
    "ClassicAugmentation",
    "ClassifyError",
    "Cohort",
    "DisplayPolarityd",
    "Hyperparameters",
    "RocCurve",
    "SingleChannel2Dd",
    "classification_metrics",
    "draw_roc",
    "roc_auc",
    "roc_curve",
    "select_cohort",
    "train_and_evaluate",
]

ARMS: tuple[str, ...] = ("none", "classic", "medsingan", "both")
MODELS: tuple[str, ...] = ("densenet121", "resnet18")
# manifest check findings that make a train or test row unusable; a subject in several splits
# is judged below for the two splits compared here only
_REFUSED_PROBLEMS = ("schema", "missing_file", "duplicate_row", "duplicate_image", "leak",
                     "inheritance")

# MONAI registers an optional GPU decoder plugin and logs a warning when it is absent.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)


class ClassifyError(MedsinganError):
    """The manifest or the settings cannot give an honest train/test evaluation."""


@dataclass(frozen=True)
class ClassicAugmentation:
    """The ``classic`` arm's MONAI random transforms, on ``(1, H, W)`` images in [0, 1].

    ``flip`` (left-right, probability 0.5) is off by default: most anatomy is not mirror
    symmetric. On a chest radiograph the heart, aortic knob and gastric bubble are on the left,
    so a flipped film is situs inversus (or a mislabelled side), a scan no patient of the cohort
    has; turn it on only for mirror-symmetric tasks (e.g. a single knee or hand, a head slice).
    Vertical flips are never used.
    """

    probability: float = 0.5
    rotate_degrees: float = 10.0
    scale: float = 0.1
    translate: float = 0.05  # fraction of the image side
    flip: bool = False
    intensity_scale: float = 0.1  # x (1 + u), u uniform in [-s, s]
    intensity_shift: float = 0.05  # + u, u uniform in [-s, s]
    noise_probability: float = 0.3
    noise_std: float = 0.02

    def transform(self, size: int) -> Compose:
        """The random transforms for ``size x size`` images; seed them with
        ``set_random_state`` (the training loader does)."""
        keys = "image"
        steps: list[Callable] = [
            RandAffined(keys, prob=self.probability,
                        rotate_range=math.radians(self.rotate_degrees),
                        scale_range=(self.scale, self.scale),
                        translate_range=(self.translate * size, self.translate * size),
                        padding_mode="zeros"),
        ]
        if self.flip:
            # readers give (x, y) arrays: spatial axis 0 runs left-right
            steps.append(RandFlipd(keys, prob=0.5, spatial_axis=0))
        steps += [
            RandScaleIntensityd(keys, factors=self.intensity_scale, prob=self.probability),
            RandShiftIntensityd(keys, offsets=self.intensity_shift, prob=self.probability),
            RandGaussianNoised(keys, prob=self.noise_probability, std=self.noise_std),
            EnsureTyped(keys, dtype=torch.float32, track_meta=False),
        ]
        return Compose(steps)


@dataclass(frozen=True)
class Hyperparameters:
    """Everything that defines the classifier and its training; the same in every arm.

    The loss is cross-entropy with class weights ``n / (K * n_k)`` over the images trained on
    (real and synthetic), so that a class the augmentation made larger does not take over.
    ``synthetic_per_source`` keeps at most that many synthetic rows per source image (a seeded
    random choice; ``None`` = all): the mixing ratio, for the ``medsingan`` and ``both`` arms.
    """

    epochs: int = 20
    size: int = 128
    batch_size: int = 16
    lr: float = 1e-3
    model: str = "densenet121"
    optimizer: str = "Adam"
    synthetic_per_source: int | None = None
    classic: ClassicAugmentation = ClassicAugmentation()

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ClassifyError(f"--model must be one of {', '.join(MODELS)}, not "
                                f"{self.model!r}")
        if self.epochs < 1:
            raise ClassifyError(f"--epochs must be at least 1, not {self.epochs}")
        if self.size < 32:  # both networks downsample 32 x before pooling
            raise ClassifyError(f"--size must be at least 32 px, not {self.size}")
        if self.batch_size < 2:  # batch norm needs two images per batch
            raise ClassifyError(f"--batch-size must be at least 2, not {self.batch_size}")
        if not self.lr > 0:
            raise ClassifyError(f"--lr must be positive, not {self.lr}")
        if self.synthetic_per_source is not None and self.synthetic_per_source < 1:
            raise ClassifyError("--synthetic-per-source must be at least 1, not "
                                f"{self.synthetic_per_source}")


# --- which rows: the split checks ---------------------------------------------------------------

@dataclass(frozen=True)
class Cohort:
    """The rows of one evaluation: ``train`` (real, then the arm's synthetic rows) and ``test``
    (real only), each with the manifest's columns plus ``row`` (1-based, as ``manifest check``
    counts), ``path`` (the file) and ``target`` (the index of the label in ``classes``)."""

    classes: tuple[str, ...]
    train: pd.DataFrame
    test: pd.DataFrame

    @property
    def positive_class(self) -> str | None:
        """Binary tasks: the second label in sorted order (``pneumonia`` against ``normal``)."""
        return self.classes[1] if len(self.classes) == 2 else None


def _rows(numbers: pd.Series, limit: int = 3) -> str:
    shown = ", ".join(str(n) for n in numbers.iloc[:limit])
    more = f" and {len(numbers) - limit} more" if len(numbers) > limit else ""
    return f"row{'s' if len(numbers) > 1 else ''} {shown}{more}"


def _file_key(path: Path) -> str:
    return os.path.normcase(os.path.realpath(path))


def select_cohort(manifest: str | os.PathLike[str], *, arm: str, train_split: str = "train",
                  test_split: str = "test", synthetic_per_source: int | None = None,
                  seed: int = 0) -> Cohort:
    """The training and test rows of ``manifest`` for ``arm``, after every split check.

    Raises :class:`ClassifyError` (one line, nothing done) when an evaluation would not be
    honest or not possible: an unknown arm, an empty split, a row without label or subject, a
    subject in both splits, a synthetic test row, a synthetic training row made from a test
    image, any ``manifest check`` problem of a train or test row (missing file, leak, ...), a
    single class in training, a test label never trained on, fewer than two classes in the
    test split, or an arm using synthetic rows when the training split has none. The checks
    cover the synthetic rows whichever the arm, so all arms accept the same manifests.
    """
    if arm not in ARMS:
        raise ClassifyError(f"--augment must be one of {', '.join(ARMS)}, not {arm!r}")
    if train_split == test_split:
        raise ClassifyError(f"the train and test splits are both {train_split!r}")
    manifest = Path(manifest)
    table = read_manifest(manifest)
    table.insert(0, "row", range(1, len(table) + 1))
    table["subject_id"] = table["subject_id"].str.strip()
    table["path"] = [resolve_image(manifest, image) for image in table["image"]]
    train, test = table[table["split"] == train_split], table[table["split"] == test_split]
    for name, rows in ((train_split, train), (test_split, test)):
        if rows.empty:
            present = ", ".join(f"{split!r} ({count})" for split, count
                                in table["split"].value_counts(sort=False).items())
            raise ClassifyError(f"{manifest}: no rows in split {name!r} (splits: "
                                f"{present or 'none, the manifest is empty'})")
    _refuse_leaks(manifest, train, test, train_split, test_split)
    real_train, synthetic = train[~train["synthetic"]], train[train["synthetic"]]
    classes = _classes(manifest, real_train, synthetic, test, train_split, test_split)
    if arm in ("medsingan", "both"):
        if synthetic.empty:
            raise ClassifyError(f"{manifest}: arm {arm!r} needs synthetic rows in split "
                                f"{train_split!r}; there are none (medsingan cohort augment "
                                "writes them)")
        synthetic = _per_source(synthetic, manifest, synthetic_per_source, seed)
        train = pd.concat([real_train, synthetic])
    else:
        train = real_train
    return Cohort(classes, *(rows.assign(target=rows["label"].map(classes.index))
                             .reset_index(drop=True) for rows in (train, test)))


def _refuse_leaks(manifest: Path, train: pd.DataFrame, test: pd.DataFrame, train_split: str,
                  test_split: str) -> None:
    """Raise :class:`ClassifyError` unless every train and test row has a label and a
    subject, no subject is on both sides, the test rows are real, no synthetic training row
    was made from a test image and ``manifest check`` finds nothing wrong with these rows."""
    both = pd.concat([train, test])
    for column, why in (("label", "every train and test row needs its class"),
                        ("subject_id", "without it no one can tell whether a patient is on "
                                       "both sides")):
        blank = both[both[column] == ""]
        if not blank.empty:
            raise ClassifyError(f"{manifest}: {_rows(blank['row'])}: no {column}; {why}")
    shared = sorted(set(train["subject_id"]) & set(test["subject_id"]))
    if shared:
        subject = shared[0]
        first = {name: rows.loc[rows["subject_id"] == subject, "row"].iloc[0]
                 for name, rows in ((train_split, train), (test_split, test))}
        raise ClassifyError(
            f"{manifest}: subject {subject!r} is in both {train_split!r} (row "
            f"{first[train_split]}) and {test_split!r} (row {first[test_split]})"
            f"{f' (and {len(shared) - 1} more subject(s))' if len(shared) > 1 else ''}: a "
            "patient on both sides measures memory, not generalisation")
    synthetic_test = test[test["synthetic"]]
    if not synthetic_test.empty:
        raise ClassifyError(f"{manifest}: {_rows(synthetic_test['row'])}: synthetic image(s) "
                            f"in the test split {test_split!r}; test on real scans only")
    test_files = {_file_key(path) for path in test["path"]}
    synthetic = train[train["synthetic"]]
    from_test = synthetic[[_file_key(resolve_image(manifest, source)) in test_files
                           for source in synthetic["source_image"]]]
    if not from_test.empty:
        raise ClassifyError(f"{manifest}: {_rows(from_test['row'])}: synthetic training "
                            f"image(s) made from a test image "
                            f"({from_test['source_image'].iloc[0]}); a test patient's scan "
                            "must not reach training")
    used_rows = set(both["row"])
    problems = [problem for problem in check_manifest(manifest)
                if problem.kind in _REFUSED_PROBLEMS and problem.row in used_rows]
    if problems:
        raise ClassifyError(f"{manifest}: {problems[0]} ({len(problems)} problem(s) in the "
                            f"{train_split!r}/{test_split!r} rows; see medsingan manifest "
                            "check)")


def _classes(manifest: Path, real_train: pd.DataFrame, synthetic: pd.DataFrame,
             test: pd.DataFrame, train_split: str, test_split: str) -> tuple[str, ...]:
    """The sorted labels of the real training rows; raise :class:`ClassifyError` for a single
    one, a synthetic or test label among none of them, or a test split of one class."""
    classes = tuple(sorted(set(real_train["label"])))
    if len(classes) < 2:
        raise ClassifyError(f"{manifest}: the real rows of split {train_split!r} have one "
                            f"class only ({', '.join(classes) or 'none'}); a classifier needs "
                            "two or more")
    for name, rows in (("synthetic training", synthetic), ("test", test)):
        unknown = rows[~rows["label"].isin(classes)]
        if not unknown.empty:
            raise ClassifyError(f"{manifest}: {_rows(unknown['row'])}: {name} label "
                                f"{unknown['label'].iloc[0]!r} is not among the real training "
                                f"labels ({', '.join(classes)})")
    if test["label"].nunique() < 2:
        raise ClassifyError(f"{manifest}: split {test_split!r} has one class only "
                            f"({test['label'].iloc[0]}); AUC needs positives and negatives")
    return classes


def _per_source(synthetic: pd.DataFrame, manifest: Path, limit: int | None,
                seed: int) -> pd.DataFrame:
    """At most ``limit`` synthetic rows per source image, drawn with ``seed``, in manifest
    order."""
    if limit is None:
        return synthetic
    rng = np.random.default_rng(seed)
    sources = [_file_key(resolve_image(manifest, source)) for source in synthetic["source_image"]]
    keep: list[int] = []
    for _, positions in pd.Series(range(len(synthetic))).groupby(sources, sort=False):
        chosen = positions.to_numpy()
        if len(chosen) > limit:
            chosen = np.sort(rng.choice(chosen, size=limit, replace=False))
        keep += chosen.tolist()
    return synthetic.iloc[sorted(keep)]


# --- pixels: reading and preprocessing ----------------------------------------------------------

class DisplayPolarityd(MapTransform):
    """Invert a MONOCHROME1 DICOM (dark = dense) so that dense tissue is bright, as in every
    other format. Needs the ``MetaTensor`` ``LoadImaged`` returns (its ``filename_or_obj``);
    other inputs pass unchanged. Shape is kept: ``(C, *spatial)``.

    The negation, not ``max - x``: the per-image scaling to [0, 1] that follows makes the two
    the same."""

    def __init__(self, keys: KeysCollection) -> None:
        super().__init__(keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        import pydicom
        from pydicom.misc import is_dicom

        result = dict(data)
        for key in self.key_iterator(result):
            image = result[key]
            source = image.meta.get("filename_or_obj") if isinstance(image, MetaTensor) else None
            if not source or not is_dicom(str(source)):
                continue
            header = pydicom.dcmread(str(source), stop_before_pixels=True,
                                     specific_tags=["PhotometricInterpretation"])
            if header.get("PhotometricInterpretation") == "MONOCHROME1":
                result[key] = -image
        return result


class SingleChannel2Dd(MapTransform):
    """``(C, *spatial)`` -> a plain ``(1, X, Y)`` float tensor: size-1 spatial axes (a NIfTI
    slice stored as a one-slice volume) are dropped, RGB becomes luminance
    (ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B), an alpha channel is dropped.
    A volume, a video or an image of other channels raises ``ValueError``."""

    _LUMA = (0.299, 0.587, 0.114)

    def __init__(self, keys: KeysCollection) -> None:
        super().__init__(keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        result = dict(data)
        for key in self.key_iterator(result):
            image = torch.as_tensor(result[key]).as_subclass(torch.Tensor).float()
            spatial = [side for side in image.shape[1:] if side != 1]
            if len(spatial) != 2:
                raise ValueError(f"shape {tuple(image.shape[1:])} is not a 2D image; list one "
                                 "slice or frame per manifest row")
            image = image.reshape(image.shape[0], *spatial)
            channels = image.shape[0]
            if channels in (1, 2):  # gray, gray + alpha
                image = image[:1]
            elif channels in (3, 4):  # RGB, RGBA
                weights = torch.tensor(self._LUMA, dtype=image.dtype).view(3, 1, 1)
                image = (image[:3] * weights).sum(dim=0, keepdim=True)
            else:
                raise ValueError(f"{channels} channels: expected gray, RGB or RGBA")
            result[key] = image
        return result


def preprocessing(size: int) -> Compose:
    """File path -> ``(1, size, size)`` float32 tensor in [0, 1] (each image scaled by its own
    minimum and maximum). Resizing averages areas (anti-aliased shrinking; a scan smaller than
    ``size`` is enlarged by pixel repetition) and does not keep the aspect ratio, as
    CheXNet-style pipelines do: padding would make the aspect ratio a feature."""
    keys = "image"
    return Compose([
        LoadImaged(keys, image_only=True),
        EnsureChannelFirstd(keys),
        DisplayPolarityd(keys),
        SingleChannel2Dd(keys),
        Resized(keys, spatial_size=(size, size), mode="area"),
        ScaleIntensityd(keys, minv=0.0, maxv=1.0),
        EnsureTyped(keys, dtype=torch.float32, track_meta=False),
    ])


def _innermost(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def load_images(rows: pd.DataFrame, size: int) -> torch.Tensor:
    """The images of ``rows`` (column ``path``) as one ``(N, 1, size, size)`` tensor;
    a file that cannot be read raises :class:`ClassifyError` naming its row."""
    images = []
    # MONAI notes that its optional GPU DICOM decoder is absent and that projection images have
    # no patient-space affine: neither changes the pixels taken here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        load = preprocessing(size)
        for row, image, path in zip(rows["row"], rows["image"], rows["path"], strict=True):
            try:
                images.append(load({"image": str(path)})["image"])
            except Exception as error:
                cause = _innermost(error)
                raise ClassifyError(f"row {row}: {image} cannot be used: "
                                    f"{type(cause).__name__}: {cause}".splitlines()[0]
                                    ) from None
    return torch.stack(images)


# --- the network and its training ---------------------------------------------------------------

def build_model(name: str, n_classes: int) -> torch.nn.Module:
    """A 2D, one-channel MONAI network with ``n_classes`` outputs (logits), freshly
    initialised from torch's global generator. ``resnet18`` has the stride-2 stem of He et al.
    (MONAI's default stride 1 costs 4 x the compute for nothing on a 2D image)."""
    if name == "densenet121":
        return DenseNet121(spatial_dims=2, in_channels=1, out_channels=n_classes)
    return resnet18(spatial_dims=2, n_input_channels=1, num_classes=n_classes,
                    conv1_t_size=7, conv1_t_stride=2)


def class_weights(targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``n / (K * n_k)`` per class k: every class weighs the same in the loss."""
    counts = torch.bincount(targets, minlength=n_classes).float()
    return len(targets) / (n_classes * counts.clamp(min=1))


def train_classifier(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, *,
                     n_classes: int, hyper: Hyperparameters, augmentation: Compose | None,
                     seed: int, device: torch.device,
                     progress: Callable[[str], None] | None = None) -> list[dict[str, float]]:
    """Train ``model`` in place on ``(N, 1, S, S)`` images with class indices ``targets``;
    return the mean loss of each epoch.

    The order of the images and the random transforms are drawn from ``seed`` alone.
    """
    data = [{"image": image, "target": int(target)}
            for image, target in zip(images, targets, strict=True)]
    # batch norm cannot train on a last batch of one image
    drop_last = len(data) > hyper.batch_size and len(data) % hyper.batch_size == 1
    loader = DataLoader(Dataset(data, transform=augmentation), batch_size=hyper.batch_size,
                        shuffle=True, drop_last=drop_last, num_workers=0,
                        generator=torch.Generator().manual_seed(seed))
    loss_function = torch.nn.CrossEntropyLoss(
        weight=class_weights(targets, n_classes).to(device))
    optimiser = torch.optim.Adam(model.parameters(), lr=hyper.lr)
    history = []
    for epoch in range(1, hyper.epochs + 1):
        started = time.perf_counter()
        model.train()
        total, seen = 0.0, 0
        for batch in loader:
            inputs, labels = batch["image"].to(device), batch["target"].to(device)
            optimiser.zero_grad()
            loss = loss_function(model(inputs), labels)
            loss.backward()
            optimiser.step()
            total += loss.item() * len(labels)
            seen += len(labels)
        history.append({"epoch": epoch, "loss": total / seen})
        if progress is not None:
            progress(f"epoch {epoch}/{hyper.epochs}  loss {total / seen:.4f}  "
                     f"({time.perf_counter() - started:.1f} s)")
    return history


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, images: torch.Tensor, *, batch_size: int,
                          device: torch.device) -> np.ndarray:
    """Softmax class probabilities, ``(N, K)`` float64."""
    model.eval()
    chunks = [torch.softmax(model(chunk.to(device)), dim=1).cpu()
              for chunk in images.split(batch_size)]
    return torch.cat(chunks).double().numpy()


# --- metrics ---------------------------------------------------------------------------------

def roc_auc(scores: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray
            ) -> float:
    """Area under the ROC curve by the Mann-Whitney rank formula, ties counted half.

    AUC = (R+ - n+ (n+ + 1) / 2) / (n+ n-), R+ the sum of the positives' ranks (tied scores
    share their mean rank): the probability that a random positive scores above a random
    negative. NaN when either class is absent.

    >>> roc_auc([0.1, 0.4, 0.4, 0.8], [False, False, True, True])
    0.875
    """
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    n_positive, n_negative = int(positive.sum()), int((~positive).sum())
    if n_positive == 0 or n_negative == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_positive * (n_positive + 1) / 2)
                 / (n_positive * n_negative))


def roc_curve(scores: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold, from (0, 0) to (1, 1).

    Tied scores move both rates at once (a diagonal step), so the trapezoid area under the
    curve is :func:`roc_auc` exactly."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], positive[order]
    group_ends = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
    true_positives = np.cumsum(hits)[group_ends]
    false_positives = np.cumsum(~hits)[group_ends]
    return (np.r_[0.0, false_positives / max(int((~positive).sum()), 1)],
            np.r_[0.0, true_positives / max(int(positive.sum()), 1)])


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def classification_metrics(targets: np.ndarray, probabilities: np.ndarray,
                           classes: Sequence[str]) -> dict[str, Any]:
    """AUC, sensitivity and specificity per class (one-vs-rest, prediction = the most
    probable class), macro AUC and balanced accuracy (the mean recall of the classes present);
    a value that cannot be computed (a class absent from the test set) is ``None``.

    Binary: ``sensitivity`` and ``specificity`` are those of the positive class (the second
    label); several classes: their means over the classes present.
    """
    targets = np.asarray(targets)
    predicted = probabilities.argmax(axis=1)
    per_class = {}
    for index, name in enumerate(classes):
        actual, called = targets == index, predicted == index
        auc = roc_auc(probabilities[:, index], actual)
        per_class[name] = {
            "auc": None if math.isnan(auc) else auc,
            "sensitivity": _ratio(int((actual & called).sum()), int(actual.sum())),
            "specificity": _ratio(int((~actual & ~called).sum()), int((~actual).sum())),
            "n_test": int(actual.sum()),
        }
    present = [values for values in per_class.values() if values["n_test"]]
    if len(classes) == 2:
        positive = per_class[classes[1]]
        sensitivity, specificity = positive["sensitivity"], positive["specificity"]
    else:
        sensitivity = float(np.mean([values["sensitivity"] for values in present]))
        specificity = float(np.mean([values["specificity"] for values in present]))
    aucs = [values["auc"] for values in per_class.values() if values["auc"] is not None]
    return {
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "balanced_accuracy": float(np.mean([values["sensitivity"] for values in present])),
        "accuracy": float((predicted == targets).mean()),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "per_class": per_class,
    }


# --- the ROC figure -------------------------------------------------------------------------

@dataclass(frozen=True)
class RocCurve:
    """One curve of the figure: its legend name, the rates, the AUC and the class counts."""

    name: str
    false_positive_rate: np.ndarray
    true_positive_rate: np.ndarray
    auc: float
    positives: int
    negatives: int


# Okabe-Ito: distinguishable with every common colour-vision deficiency
PALETTE = ((0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0),
            (86, 180, 233), (0, 0, 0), (240, 228, 66))


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def draw_roc(curves: Sequence[RocCurve], title: str) -> Image.Image:
    """The ROC curves on labelled axes (rates 0..1, grid every 0.2, the chance diagonal
    dashed), with each curve's AUC in the legend; an RGB image 700 x 720 px."""
    left, top, side = 100, 60, 560
    right, bottom = left + side, top + side
    figure = Image.new("RGB", (right + 40, bottom + 100), "white")
    draw = ImageDraw.Draw(figure)
    tick_font, label_font, title_font = font(15), font(18), font(19)

    def point(fpr: float, tpr: float) -> tuple[float, float]:
        return left + fpr * side, bottom - tpr * side

    for step in range(6):
        value = step / 5
        x, y = point(value, value)
        draw.line([(x, top), (x, bottom)], fill=(225, 225, 225))
        draw.line([(left, y), (right, y)], fill=(225, 225, 225))
        draw.line([(x, bottom), (x, bottom + 6)], fill="black", width=2)
        draw.line([(left - 6, y), (left, y)], fill="black", width=2)
        draw.text((x, bottom + 10), f"{value:.1f}", font=tick_font, fill="black", anchor="mt")
        draw.text((left - 10, y), f"{value:.1f}", font=tick_font, fill="black", anchor="rm")
    for start in np.arange(0.0, 1.0, 0.04):  # the chance diagonal, dashed
        draw.line([point(start, start), point(start + 0.02, start + 0.02)], fill=(140, 140, 140),
                  width=2)
    draw.rectangle([left, top, right, bottom], outline="black", width=2)
    for index, curve in enumerate(curves):
        points = [point(float(f), float(t)) for f, t in
                  zip(curve.false_positive_rate, curve.true_positive_rate, strict=True)]
        draw.line(points, fill=PALETTE[index % len(PALETTE)], width=4, joint="curve")
    draw.text(((left + right) / 2, 22), title, font=title_font, fill="black", anchor="mm")
    draw.text(((left + right) / 2, bottom + 45), "false positive rate (1 - specificity)",
              font=label_font, fill="black", anchor="mt")
    y_label = "true positive rate (sensitivity)"
    width = int(draw.textlength(y_label, font=label_font)) + 8
    label = Image.new("L", (width, 28), 0)
    ImageDraw.Draw(label).text((4, 2), y_label, font=label_font, fill=255)
    label = label.rotate(90, expand=True)
    figure.paste((0, 0, 0), (22, int((top + bottom - width) / 2)), label)
    entries = [f"{curve.name}  AUC {curve.auc:.3f}  ({curve.positives} pos / "
               f"{curve.negatives} neg)" for curve in curves] or ["no class with positives "
                                                                  "and negatives"]
    line_height = 26
    text_width = max(draw.textlength(entry, font=tick_font) for entry in entries)
    box_left = right - 16 - 44 - text_width
    box_top = bottom - 16 - line_height * len(entries) - 8
    draw.rectangle([box_left - 10, box_top - 8, right - 8, bottom - 12], fill="white",
                   outline=(150, 150, 150))
    for index, entry in enumerate(entries):
        y = box_top + index * line_height + line_height / 2
        if index < len(curves):
            draw.line([(box_left, y), (box_left + 32, y)], fill=PALETTE[index % len(PALETTE)],
                      width=4)
        draw.text((box_left + 44, y), entry, font=tick_font, fill="black", anchor="lm")
    return figure


def _roc_curves(targets: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]
                ) -> list[RocCurve]:
    """Binary: the positive class's curve; several classes: one-vs-rest per class present."""
    indices = [1] if len(classes) == 2 else range(len(classes))
    curves = []
    for index in indices:
        actual = targets == index
        if actual.all() or not actual.any():
            continue
        name = (f"{classes[1]} vs {classes[0]}" if len(classes) == 2
                else f"{classes[index]} vs rest")
        fpr, tpr = roc_curve(probabilities[:, index], actual)
        curves.append(RocCurve(name, fpr, tpr, roc_auc(probabilities[:, index], actual),
                               int(actual.sum()), int((~actual).sum())))
    return curves


# --- the whole evaluation ---------------------------------------------------------------------

def train_and_evaluate(manifest: str | os.PathLike[str], out: str | os.PathLike[str], *,
                       arm: str, train_split: str = "train", test_split: str = "test",
                       epochs: int = 20, size: int = 128, batch_size: int = 16,
                       lr: float = 1e-3, seed: int = 0, model: str = "densenet121",
                       device: str = "auto", flip: bool = False,
                       synthetic_per_source: int | None = None,
                       progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train a classifier on ``train_split`` for ``arm``, score it on ``test_split``, write
    ``out/results.json`` and ``out/roc.png`` (each atomically); return the results.

    ``arm`` is one of :data:`ARMS`; ``flip`` allows left-right flips in the classic transforms
    (see :class:`ClassicAugmentation` for why it is off); ``progress`` receives one line per
    epoch. Nothing is written when the manifest is refused (:func:`select_cohort`) or a file
    cannot be read. The same seed gives the same numbers on the same machine and device
    (``set_determinism``; on a GPU cuDNN may still differ in the last digits).

    The result's keys: ``arm``, ``seed``, ``classes``, ``positive_class`` (binary: the second
    label, whose sensitivity and specificity are reported), ``macro_auc``,
    ``balanced_accuracy``, ``accuracy``, ``sensitivity``, ``specificity``, ``per_class``
    (label -> ``auc``, ``sensitivity``, ``specificity``, ``n_test``), ``counts``
    (``train_real``, ``train_synthetic``, ``test``, per class and subjects), ``predictions``
    (per test image: ``image``, ``subject_id``, ``label``, ``predicted``, ``probabilities``),
    ``history`` (loss per epoch), ``hyperparameters``, ``manifest``, ``train_split``,
    ``test_split``, ``device``, ``versions``, ``created_at``, ``wall_time_s``.
    """
    started = time.perf_counter()
    hyper = Hyperparameters(epochs=epochs, size=size, batch_size=batch_size, lr=lr,
                            model=model, synthetic_per_source=synthetic_per_source,
                            classic=ClassicAugmentation(flip=flip))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ClassifyError(f"--out {out} is a file; name a folder")
    cohort = select_cohort(manifest, arm=arm, train_split=train_split, test_split=test_split,
                           synthetic_per_source=synthetic_per_source, seed=seed)
    where = resolve_device(device)
    train_images = load_images(cohort.train, size)
    test_images = load_images(cohort.test, size)

    set_determinism(seed=seed)
    torch.manual_seed(seed)
    network = build_model(hyper.model, len(cohort.classes)).to(where)
    augmentation = hyper.classic.transform(size) if arm in ("classic", "both") else None
    train_targets = torch.tensor(cohort.train["target"].tolist(), dtype=torch.long)
    history = train_classifier(network, train_images, train_targets,
                               n_classes=len(cohort.classes), hyper=hyper,
                               augmentation=augmentation, seed=seed, device=where,
                               progress=progress)
    probabilities = predict_probabilities(network, test_images, batch_size=batch_size,
                                          device=where)
    test_targets = cohort.test["target"].to_numpy()
    metrics = classification_metrics(test_targets, probabilities, cohort.classes)

    results = {
        "arm": arm,
        "seed": seed,
        "classes": list(cohort.classes),
        "positive_class": cohort.positive_class,
        **metrics,
        "counts": _counts(cohort),
        "predictions": [
            {"image": image, "subject_id": subject, "label": label,
             "predicted": cohort.classes[int(row.argmax())],
             "probabilities": {name: round(float(p), 6)
                               for name, p in zip(cohort.classes, row, strict=True)}}
            for image, subject, label, row in zip(cohort.test["image"],
                                                  cohort.test["subject_id"],
                                                  cohort.test["label"], probabilities,
                                                  strict=True)],
        "history": history,
        "hyperparameters": asdict(hyper),
        "manifest": str(manifest),
        "train_split": train_split,
        "test_split": test_split,
        "device": str(where),
        "versions": {"medsingan": __version__, "torch": torch.__version__,
                     "monai": monai.__version__},
        "created_at": utc_timestamp(),
    }
    figure = draw_roc(_roc_curves(test_targets, probabilities, cohort.classes),
                      f"ROC on '{test_split}' ({len(cohort.test)} images), arm '{arm}', "
                      f"{hyper.model}, seed {seed}")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "roc.png") as tmp:
        figure.save(tmp, format="PNG")
    results["wall_time_s"] = round(time.perf_counter() - started, 3)
    with atomic_path(out / "results.json") as tmp:  # written last: its presence = a whole run
        tmp.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return results


def _counts(cohort: Cohort) -> dict[str, Any]:
    train, test = cohort.train, cohort.test
    return {
        "train_real": int((~train["synthetic"]).sum()),
        "train_synthetic": int(train["synthetic"].sum()),
        "test": len(test),
        "train_by_class": {name: int((train["label"] == name).sum()) for name in cohort.classes},
        "test_by_class": {name: int((test["label"] == name).sum()) for name in cohort.classes},
        "train_subjects": int(train["subject_id"].nunique()),
        "test_subjects": int(test["subject_id"].nunique()),
    }


# --- command line -------------------------------------------------------------------------------

class Arm(str, Enum):
    none = "none"
    classic = "classic"
    medsingan = "medsingan"
    both = "both"


class Model(str, Enum):
    densenet121 = "densenet121"
    resnet18 = "resnet18"


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@app.command()
def classify(
    manifest: Annotated[Path, typer.Argument(
        help="Manifest CSV (medsingan schema); image paths are relative to its folder.",
        show_default=False)],
    out: Annotated[Path, typer.Option(
        "--out", help="Folder for results.json and roc.png (created).", show_default=False)],
    train_split: Annotated[str, typer.Option("--train-split", help="Split trained on.")
                           ] = "train",
    test_split: Annotated[str, typer.Option("--test-split", help="Split evaluated on (real "
                                            "rows only).")] = "test",
    augment: Annotated[Arm, typer.Option(
        "--augment", help="Arm: none (real rows), classic (MONAI random transforms), medsingan "
        "(+ synthetic rows of training subjects) or both.")] = Arm.none,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Training epochs.")] = 20,
    size: Annotated[int, typer.Option("--size", min=32, help="Image side the scans are "
                                      "resized to, px.")] = 128,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2, help="Images per batch.")
                          ] = 16,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of initialisation, order "
                                      "and random transforms.")] = 0,
    model: Annotated[Model, typer.Option("--model", help="Network (MONAI, 2D, 1 channel).")
                     ] = Model.densenet121,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")
                      ] = "auto",
    flip: Annotated[bool, typer.Option(
        "--flip/--no-flip", help="Left-right flips in the classic transforms; off because "
        "most anatomy (a chest: heart on the left) is not mirror symmetric.")] = False,
    synthetic_per_source: Annotated[int | None, typer.Option(
        "--synthetic-per-source", min=1, help="At most this many synthetic rows per source "
        "image (seeded choice) [default: all].", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No per-epoch progress lines.")
                     ] = False,
) -> None:
    """Train a MONAI 2D classifier on a manifest's training split and score it on its test
    split: results.json (AUC, balanced accuracy, sensitivity, specificity) and roc.png."""
    results = train_and_evaluate(
        manifest, out, arm=augment.value, train_split=train_split, test_split=test_split,
        epochs=epochs, size=size, batch_size=batch_size, lr=lr, seed=seed, model=model.value,
        device=device, flip=flip, synthetic_per_source=synthetic_per_source,
        progress=None if quiet else (lambda line: typer.echo(line, err=True)))
    auc = results["macro_auc"]
    typer.echo(f"{out / 'results.json'}: macro AUC {auc:.3f}, balanced accuracy "
               f"{results['balanced_accuracy']:.3f} (arm {results['arm']}, "
               f"{results['counts']['train_real']} real + "
               f"{results['counts']['train_synthetic']} synthetic training images, "
               f"{results['counts']['test']} test)")


def main() -> None:
    """Entry point: a refused manifest or a bad option -> one ``error:`` line, exit code 2."""
    run_app(app)


if __name__ == "__main__":
    main()
