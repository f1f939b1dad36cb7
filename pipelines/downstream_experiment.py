"""Does medsingan help? The whole downstream protocol, from labelled scans to a table with CIs.

One function, :func:`run_experiment`, runs the protocol of issue 12 on an ImageFolder of real,
labelled scans (``DIR/<label>/<scan>``), or on the 16 chest films :func:`fetch_pneumonia`
extracts from the PyPI wheel ``pneumonia-model-package==0.3.0`` (Kermany et al., CC BY 4.0):

1. the real manifest (``manifest from-folder``: label = folder, subject = ``--subject-regex``);
2. patient-grouped folds: repeated stratified K-fold *by subject* (:func:`subject_folds`),
   one split manifest per fold with every subject on one side only;
3. ``cohort train`` of each fold's training rows only, into one runs folder keyed by image
   (:func:`medsingan.cohort.run_name`): a model trained for one fold is reused in every fold
   where its image is trained on, and never exists for a fold where its image is tested;
4. ``cohort augment`` per fold: ``per_scan`` samples per training image, from ``start_scale``,
   into the fold's merged manifest, which must pass ``manifest check`` and the leak audit of
   :func:`audit_fold` (no synthetic image of a test subject, no subject on both sides);
5. :func:`pipelines.classify.train_and_evaluate` for every arm on every fold, with the same
   hyper-parameters and the same seed in every arm (a paired design);
6. the mean and 95 % t-interval over folds x repeats of macro AUC and balanced accuracy per
   arm, and of each arm's paired difference from ``none`` (:func:`summarise`), written as
   ``downstream.json``, ``downstream.md`` and ``downstream.png`` (bars with CI whiskers, ROC
   curves pooled over every test prediction of an arm).

The run is seeded and resumable: the same command over the same ``--out`` reuses the trained
models, the samples and the finished evaluations; other settings over it are refused.

Command line (``--help`` lists every option and its full and ``--quick`` defaults)::

    python -m pipelines.downstream_experiment --fetch --out results/downstream
    python -m pipelines.downstream_experiment --fetch --out results/downstream_quick --quick
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer
from PIL import Image, ImageDraw
from scipy import stats

from medsingan import __version__
from medsingan.cli import run_app
from medsingan.cohort import CohortReport, Executing, cohort_augment, cohort_train
from medsingan.dataset import FolderOptions, manifest_from_folder
from medsingan.errors import MedsinganError
from medsingan.io.atomic import atomic_path
from medsingan.manifest import (
    check_manifest,
    merge_manifests,
    read_manifest,
    resolve_image,
    set_column,
    utc_timestamp,
)
from pipelines.classify import (
    ARMS,
    MODELS,
    PALETTE,
    RocCurve,
    draw_roc,
    font,
    roc_auc,
    roc_curve,
    train_and_evaluate,
)

__all__ = [
    "CREDIT",
    "FULL",
    "PNEUMONIA_SUBJECT_REGEX",
    "QUICK",
    "ExperimentError",
    "ExperimentSettings",
    "Fold",
    "audit_fold",
    "draw_downstream",
    "fetch_pneumonia",
    "markdown_report",
    "markdown_table",
    "pooled_roc",
    "run_experiment",
    "subject_folds",
    "summarise",
    "t_interval",
    "write_fold_manifest",
]

PACKAGE = "pneumonia-model-package==0.3.0"
WHEEL = "pneumonia_model_package-0.3.0-py3-none-any.whl"
WHEEL_IMAGES = "pneumonia_model_package/datasets/pneumonia-data/val/"
# ``personNNNN_bacteria_MMMM.jpeg``: patient NNNN (person1946 has two films); the normal films
# ``NORMAL2-IM-xxxx-0001.jpeg``: patient xxxx, film 0001
PNEUMONIA_SUBJECT_REGEX = r"^(person\d+|NORMAL2-IM-\d+)"
CREDIT = ("Chest X-ray images: Kermany D, Zhang K, Goldbaum M. Labeled Optical Coherence "
          "Tomography (OCT) and Chest X-Ray Images for Classification. Mendeley Data v2, 2018, "
          "doi:10.17632/rscbjbr9sj.2 (Kermany et al., Cell 172(5):1122-1131, 2018), licensed "
          "CC BY 4.0; the 16 films of the val/ split of its chest_xray distribution, as shipped "
          f"in the PyPI package {PACKAGE}")
DEFAULT_CACHE = Path("~/.cache/medsingan")
SYNTHETIC_ARMS = ("medsingan", "both")


class ExperimentError(MedsinganError):
    """The experiment cannot run, or a fold failed its leak audit."""


@dataclass(frozen=True)
class ExperimentSettings:
    """Everything that decides the experiment's numbers (not where or how fast it runs).

    SinGAN: ``size`` (longer side of the finest scale, px), ``min_size`` (shorter side of the
    coarsest), ``iters`` per scale, the ``fast`` preset otherwise; ``per_scan`` samples per
    training image from ``start_scale`` (``N`` coarsest, ``N-k``, or an index). Classifier
    (:func:`pipelines.classify.train_and_evaluate`, the same in every arm): ``model``,
    ``epochs``, ``classify_size`` (px, square), ``batch_size``, ``lr``. Protocol: ``folds`` x
    ``repeats`` patient-grouped evaluations, everything seeded from ``seed``. ``modality``:
    the preset of every scan (``None``: from the file, e.g. a DICOM's Modality tag).
    """

    folds: int = 4
    repeats: int = 5
    seed: int = 0
    size: int = 64
    min_size: int = 25
    iters: int = 400
    per_scan: int = 4
    start_scale: str = "N-1"
    epochs: int = 20
    classify_size: int = 64
    batch_size: int = 16
    lr: float = 1e-3
    model: str = "densenet121"
    modality: str | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ExperimentError(f"--folds must be at least 2, not {self.folds}")
        for name in ("repeats", "iters", "per_scan", "epochs"):
            if getattr(self, name) < 1:
                raise ExperimentError(f"--{name.replace('_', '-')} must be at least 1, not "
                                      f"{getattr(self, name)}")
        if self.min_size < 8 or self.size < self.min_size:
            raise ExperimentError(f"--size {self.size} and --min-size {self.min_size}: need "
                                  "8 <= min-size <= size")
        if self.model not in MODELS:
            raise ExperimentError(f"--model must be one of {', '.join(MODELS)}, not "
                                  f"{self.model!r}")


# The full experiment: 4 folds x 5 repeats = 20 evaluations per arm; 16 models at 64 px x 400
# iterations per scale: ~1 h 50 min on 2 cores (measured: pipelines/README.md).
FULL = ExperimentSettings()
# Minutes on 2 cores: 2 folds, 1 repeat, 32-px models, few iterations and epochs.
QUICK = ExperimentSettings(folds=2, repeats=1, size=32, min_size=16, iters=20, per_scan=2,
                           epochs=3, classify_size=32)


# --- the data -----------------------------------------------------------------------------------

def _pneumonia_label(member: str) -> str | None:
    """``normal`` or ``pneumonia`` for a JPEG of the wheel's validation split (``None`` for
    anything else), from its folder (``NORMAL/``, ``PNEUMONIA/``) or, as in 0.3.0, where the
    files lie flat in ``val/``, from its name (``NORMAL2-IM-...``, ``personNNNN_...``).

    >>> _pneumonia_label(WHEEL_IMAGES + "person1946_bacteria_4874.jpeg")
    'pneumonia'
    """
    folder, _, name = member[len(WHEEL_IMAGES):].rpartition("/")
    if not member.startswith(WHEEL_IMAGES) or not name.lower().endswith(".jpeg"):
        return None
    kind = folder.upper() or ("NORMAL" if name.startswith("NORMAL") else
                              "PNEUMONIA" if name.startswith("person") else "")
    return {"NORMAL": "normal", "PNEUMONIA": "pneumonia"}.get(kind)


def fetch_pneumonia(cache: Path = DEFAULT_CACHE, *,
                    progress: Callable[[str], None] | None = None) -> Path:
    """The 16 chest films of ``pneumonia-model-package==0.3.0`` as an ImageFolder
    (``normal/``, ``pneumonia/``) under ``cache``; returns that folder.

    The wheel is fetched with ``pip download --no-deps`` into ``cache`` (skipped when it is
    there) and never installed (it pins pillow < 11 and pulls unrelated packages); only its
    validation JPEGs are extracted, once. See :data:`CREDIT` for the data's licence.
    """
    cache = Path(cache).expanduser()
    folder = cache / "pneumonia-model-package-0.3.0" / "val"
    if folder.is_dir() and any(folder.rglob("*.jpeg")):
        return folder
    wheel = cache / WHEEL
    if not wheel.is_file():
        if progress:
            progress(f"downloading {PACKAGE} (83 MB, images only are kept) into {cache}")
        cache.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--disable-pip-version-check", PACKAGE, "-d", str(cache)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not wheel.is_file():
            last = (done.stderr.strip().splitlines() or ["no wheel written"])[-1]
            raise ExperimentError(f"pip download {PACKAGE} failed: {last}; download the "
                                  f"wheel into {cache} by hand, or use --data DIR")
    try:
        with zipfile.ZipFile(wheel) as archive:
            labelled = [(m, _pneumonia_label(m)) for m in archive.namelist()]
            members = [(m, label) for m, label in labelled if label is not None]
            if not members:
                raise ExperimentError(f"{wheel} has no JPEG under {WHEEL_IMAGES}")
            staging = Path(tempfile.mkdtemp(prefix=".val-", dir=cache))
            try:
                for member, label in members:
                    target = staging / label / member.rsplit("/", 1)[-1]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.read(member))
                folder.parent.mkdir(parents=True, exist_ok=True)
                staging.rename(folder)  # whole or not at all
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except zipfile.BadZipFile:
        raise ExperimentError(f"{wheel} is not a wheel (a broken download?); remove it and "
                              "run again") from None
    return folder


# --- the folds ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fold:
    """One train/test evaluation: repeat ``repeat`` (1-based) of the K-fold partition, fold
    ``index`` (1-based) of ``folds`` tested on ``test_subjects``, trained on the rest."""

    repeat: int
    index: int
    folds: int
    test_subjects: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"r{self.repeat}_f{self.index}"

    @property
    def tag(self) -> str:
        return f"[repeat {self.repeat} fold {self.index}/{self.folds}]"


def subject_folds(subjects: pd.DataFrame, *, folds: int, repeats: int, seed: int
                  ) -> list[Fold]:
    """Repeated stratified K-fold by subject: ``repeats`` partitions of the subjects into
    ``folds`` test sets, each drawn with seed ``seed + repeat``.

    ``subjects`` has columns ``subject_id`` and ``label`` (a subject's class is its most
    frequent label, ties to the first in sorted order). Per partition, the subjects of each
    class are shuffled and dealt round-robin to the folds, the deal going on from class to
    class so that the folds' sizes differ by one at most; every fold then tests every class
    and trains on every class. Needs at least ``folds`` subjects per class.

    >>> table = pd.DataFrame({"subject_id": list("abcdef"), "label": list("xxxyyy")})
    >>> [fold.test_subjects for fold in subject_folds(table, folds=3, repeats=1, seed=0)]
    [('a', 'f'), ('b', 'd'), ('c', 'e')]
    """
    label_of = subjects.groupby("subject_id")["label"].agg(_majority)
    by_label = {label: sorted(group.index) for label, group in label_of.groupby(label_of)}
    short = {label: len(names) for label, names in by_label.items() if len(names) < folds}
    if len(by_label) < 2:
        raise ExperimentError(f"one class only ({', '.join(by_label)}); a classifier needs two")
    if short:
        raise ExperimentError(
            f"--folds {folds} needs {folds} subjects per class; "
            + ", ".join(f"{label!r} has {n}" for label, n in sorted(short.items()))
            + " (use fewer folds)")
    result = []
    for repeat in range(1, repeats + 1):
        rng = np.random.default_rng(seed + repeat)
        members: list[list[str]] = [[] for _ in range(folds)]
        dealt = 0
        for label in sorted(by_label):
            for subject in rng.permutation(by_label[label]):
                members[dealt % folds].append(str(subject))
                dealt += 1
        result += [Fold(repeat, index + 1, folds, tuple(test))
                   for index, test in enumerate(members)]
    return result


def _majority(labels: pd.Series) -> str:
    """The most frequent label; ties go to the first in sorted order."""
    counts = labels.value_counts()
    return str(min(counts[counts == counts.max()].index))


def write_fold_manifest(real: Path, output: Path, fold: Fold) -> Path:
    """A copy of the real manifest ``real`` at ``output`` (paths rewritten, same folder as
    every other fold's so that the runs' names agree) with ``split`` = ``test`` for the
    fold's test subjects and ``train`` for every other row."""
    merge_manifests([real], output)
    table = read_manifest(output)
    tested = table["subject_id"].isin(fold.test_subjects)
    set_column(output, table.loc[~tested, "image"].astype(str), "split", "train")
    set_column(output, table.loc[tested, "image"].astype(str), "split", "test")
    return output


def _file_key(manifest: Path, relative: str) -> str:
    return os.path.normcase(os.path.realpath(resolve_image(manifest, relative)))


def audit_fold(manifest: Path, fold: Fold) -> dict[str, Any]:
    """Raise :class:`ExperimentError` unless the fold's manifest is honest; return its counts.

    Honest: ``manifest check`` finds nothing; no subject has a real row on both sides; the
    test split is exactly the fold's test subjects, real rows only; every synthetic row is in
    ``train``, of a training subject, made from a real training image of its own subject.
    """
    problems = check_manifest(manifest)
    if problems:
        raise ExperimentError(f"{fold.tag} {manifest}: manifest check: {problems[0]} "
                              f"({len(problems)} problem(s))")
    table = read_manifest(manifest)
    real, synthetic = table[~table["synthetic"]], table[table["synthetic"]]
    train, test = real[real["split"] == "train"], real[real["split"] == "test"]
    shared = set(train["subject_id"]) & set(test["subject_id"])
    if shared or set(test["subject_id"]) != set(fold.test_subjects):
        raise ExperimentError(f"{fold.tag} {manifest}: subjects on both sides or not the "
                              f"fold's: {sorted(shared) or sorted(set(test['subject_id']))}")
    if len(train) + len(test) != len(real):
        raise ExperimentError(f"{fold.tag} {manifest}: real rows outside train and test")
    subject_of = {_file_key(manifest, image): subject
                  for image, subject in zip(train["image"], train["subject_id"], strict=True)}
    bad = [image for image, split, subject, source in
           zip(synthetic["image"], synthetic["split"], synthetic["subject_id"],
               synthetic["source_image"], strict=True)
           if split != "train" or subject in fold.test_subjects
           or subject_of.get(_file_key(manifest, source)) != subject]
    if bad:
        raise ExperimentError(f"{fold.tag} {manifest}: synthetic row {bad[0]} is not of a "
                              f"training image's subject ({len(bad)} such row(s))")
    return {
        "check": "passed",
        "train_images": len(train), "test_images": len(test),
        "train_subjects": int(train["subject_id"].nunique()),
        "test_subjects": sorted(fold.test_subjects),
        "synthetic_rows": len(synthetic),
        "synthetic_of_test_subjects": int(synthetic["subject_id"].isin(
            fold.test_subjects).sum()),
    }


# --- statistics ---------------------------------------------------------------------------------

def t_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean and Student-t confidence interval of ``values`` (``None`` entries left out):
    mean ± t(1 - (1 - c) / 2, n - 1) · s / √n, with s the sample standard deviation; the
    interval is ``None`` for fewer than two values.

    >>> [round(bound, 4) for bound in t_interval([0.5, 0.7, 0.9])["ci"]]
    [0.2032, 1.1968]
    """
    kept = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = len(kept)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "ci": None}
    mean = float(kept.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "sd": None, "ci": None}
    sd = float(kept.std(ddof=1))
    half = float(stats.t.ppf(1 - (1 - confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci": [mean - half, mean + half]}


def summarise(evaluations: Sequence[dict[str, Any]], arms: Sequence[str]) -> dict[str, Any]:
    """Per arm: the t-interval of macro AUC and of balanced accuracy over its evaluations, and
    of its paired difference from arm ``none`` (same fold, same classifier seed)."""
    by_arm = {arm: [e for e in evaluations if e["arm"] == arm] for arm in arms}
    baseline = {(e["repeat"], e["fold"]): e for e in by_arm.get("none", [])}
    summary = {}
    for arm, rows in by_arm.items():
        entry = {metric: t_interval([e[metric] for e in rows])
                 for metric in ("macro_auc", "balanced_accuracy")}
        if arm != "none" and baseline:
            for metric in ("macro_auc", "balanced_accuracy"):
                pairs = [(e[metric], baseline[(e["repeat"], e["fold"])][metric]) for e in rows
                         if (e["repeat"], e["fold"]) in baseline]
                entry[f"{metric}_minus_none"] = t_interval(
                    [a - b for a, b in pairs if a is not None and b is not None])
        summary[arm] = {"evaluations": len(rows), **entry}
    return summary


def pooled_roc(evaluations: Sequence[dict[str, Any]], arm: str) -> RocCurve | None:
    """One ROC curve of every test prediction of ``arm`` over all folds and repeats: of the
    positive class for a binary task, micro-averaged one-vs-rest for more classes."""
    scores: list[float] = []
    positive: list[bool] = []
    for evaluation in evaluations:
        if evaluation["arm"] != arm:
            continue
        classes = evaluation["classes"]
        wanted = [classes[1]] if len(classes) == 2 else classes
        for prediction in evaluation["predictions"]:
            for name in wanted:
                scores.append(prediction["probabilities"][name])
                positive.append(prediction["label"] == name)
    if not any(positive) or all(positive):
        return None
    fpr, tpr = roc_curve(scores, positive)
    return RocCurve(arm, fpr, tpr, roc_auc(scores, positive), int(sum(positive)),
                    len(positive) - int(sum(positive)))


# --- the figure ---------------------------------------------------------------------------------

_METRICS = (("macro_auc", "macro AUC"), ("balanced_accuracy", "balanced accuracy"))


def _draw_bars(summary: dict[str, Any], title: str) -> Image.Image:
    """Mean macro AUC and balanced accuracy per arm as bars, 95 % CIs as whiskers, on a
    0..1 axis with the chance level (0.5) dashed; an RGB image 760 x 720 px."""
    left, top, width, height = 90, 60, 640, 500
    right, bottom = left + width, top + height
    figure = Image.new("RGB", (right + 30, bottom + 160), "white")
    draw = ImageDraw.Draw(figure)
    tick_font, label_font, title_font = font(15), font(18), font(19)

    def y_of(value: float) -> float:
        return bottom - value * height

    for step in range(6):
        value = step / 5
        draw.line([(left, y_of(value)), (right, y_of(value))], fill=(225, 225, 225))
        draw.line([(left - 6, y_of(value)), (left, y_of(value))], fill="black", width=2)
        draw.text((left - 10, y_of(value)), f"{value:.1f}", font=tick_font, fill="black",
                  anchor="rm")
    for start in range(left, right, 14):  # chance level
        draw.line([(start, y_of(0.5)), (min(start + 7, right), y_of(0.5))],
                  fill=(140, 140, 140), width=2)
    arms = list(summary)
    group = width / len(_METRICS)
    bar = min(60.0, (group - 40) / max(len(arms), 1))
    for g, (metric, name) in enumerate(_METRICS):
        first = left + g * group + (group - bar * len(arms)) / 2
        for a, arm in enumerate(arms):
            values = summary[arm][metric]
            x0 = first + a * bar
            colour = PALETTE[a % len(PALETTE)]
            if values["mean"] is not None:
                draw.rectangle([x0 + 4, y_of(values["mean"]), x0 + bar - 4, bottom], fill=colour)
                mid = x0 + bar / 2
                low, high = values["ci"] or (values["mean"], values["mean"])
                low, high = max(low, 0.0), min(high, 1.0)  # a t-interval may pass the bounds
                draw.line([(mid, y_of(low)), (mid, y_of(high))], fill="black", width=2)
                for end in (low, high):
                    draw.line([(mid - 8, y_of(end)), (mid + 8, y_of(end))], fill="black",
                              width=2)
                # the mean on the bar's foot, over the whisker (which may reach 0)
                text = f"{values['mean']:.2f}"
                box = draw.textbbox((mid, bottom - 8), text, font=tick_font, anchor="mb")
                draw.rectangle([box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2], fill=colour)
                draw.text((mid, bottom - 8), text, font=tick_font, fill="white", anchor="mb")
        draw.text((left + (g + 0.5) * group, bottom + 12), name, font=label_font, fill="black",
                  anchor="mt")
    draw.rectangle([left, top, right, bottom], outline="black", width=2)
    draw.text(((left + right) / 2, 22), title, font=title_font, fill="black", anchor="mm")
    y_label = "mean over evaluations, 95% CI (t)"
    text_width = int(draw.textlength(y_label, font=label_font)) + 8
    label = Image.new("L", (text_width, 28), 0)
    ImageDraw.Draw(label).text((4, 2), y_label, font=label_font, fill=255)
    label = label.rotate(90, expand=True)
    figure.paste((0, 0, 0), (18, int((top + bottom - text_width) / 2)), label)
    legend_top = bottom + 50
    x = left
    for a, arm in enumerate(arms):  # the legend, in the ROC panel's colours
        entry = f"{arm} (n = {summary[arm]['evaluations']})"
        draw.rectangle([x, legend_top, x + 24, legend_top + 16], fill=PALETTE[a % len(PALETTE)])
        draw.text((x + 32, legend_top + 8), entry, font=tick_font, fill="black", anchor="lm")
        x += 32 + draw.textlength(entry, font=tick_font) + 28
    draw.text((left, legend_top + 40), "dashed: chance (0.5); whiskers clipped to [0, 1]",
              font=tick_font, fill=(90, 90, 90), anchor="lm")
    return figure


def draw_downstream(summary: dict[str, Any], curves: Sequence[RocCurve | None],
                    title: str) -> Image.Image:
    """The experiment's figure: the bar chart of :func:`_draw_bars` (left) beside the pooled
    ROC curves of :func:`pipelines.classify.draw_roc` (right), one colour per arm in both."""
    bars = _draw_bars(summary, title)
    shown = [curve for curve in curves if curve is not None]
    roc = draw_roc(shown, "ROC pooled over every test prediction, per arm")
    figure = Image.new("RGB", (bars.width + roc.width, max(bars.height, roc.height)), "white")
    figure.paste(bars, (0, 0))
    figure.paste(roc, (bars.width, 0))
    return figure


# --- the protocol -------------------------------------------------------------------------------

def _claim(out: Path, record: dict[str, Any]) -> None:
    """Write ``out/settings.json``, or refuse when ``out`` holds an experiment made with other
    settings (its models and evaluations would be reused)."""
    path = out / "settings.json"
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in record if previous.get(k) != record[k])
        if changed:
            raise ExperimentError(f"{out} holds an experiment made with other settings "
                                  f"({', '.join(changed)}); use another --out")
        return
    if out.is_dir() and any(out.iterdir()):
        raise ExperimentError(f"{out} is not empty and holds no settings.json; use another "
                              "--out")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _reported(report: CohortReport, what: str, fold: Fold) -> dict[str, int]:
    if report.failed:
        first = report.failed[0]
        raise ExperimentError(f"{fold.tag} {what}: {len(report.failed)} run(s) failed, e.g. "
                              f"{first.name}: {first.error}")
    counts: dict[str, int] = {}
    for result in report.results:
        counts[result.status] = counts.get(result.status, 0) + 1
    return counts


@dataclass
class _Stages:
    """The stages of a fold after its split, run with one experiment's settings, and the
    time they take."""

    settings: ExperimentSettings
    out: Path
    executing: Executing
    say: Callable[[str], None]
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("singan_train_s", "augment_s", "classify_s"), 0.0))
    model_seconds: list[float] = field(default_factory=list)

    def augment(self, manifest: Path, fold: Fold) -> Path:
        """``cohort train`` of the fold's training rows (models of other folds reused), then
        ``cohort augment`` of them into the fold's merged manifest, returned."""
        settings, runs = self.settings, self.out / "runs"
        tic = time.perf_counter()
        report = cohort_train(manifest, runs, executing=self.executing, splits=("train",),
                              modality=settings.modality, speed_preset="fast",
                              overrides={"iters": settings.iters, "max_size": settings.size,
                                         "min_size": settings.min_size, "seed": settings.seed,
                                         "device": settings.device})
        counts = _reported(report, "cohort train", fold)
        self.model_seconds += [r.seconds for r in report.results if r.status == "trained"]
        self.timings["singan_train_s"] += time.perf_counter() - tic
        self.say(f"{fold.tag} SinGAN: {counts.get('trained', 0)} model(s) trained, "
                 f"{counts.get('skipped', 0)} reused ({time.perf_counter() - tic:.0f} s)")
        tic = time.perf_counter()
        merged = manifest.with_name(f"{fold.name}_augmented.csv")
        report = cohort_augment(manifest, runs, merged, per_scan=settings.per_scan,
                                executing=self.executing, start_scale=settings.start_scale,
                                seed=settings.seed, sifid=False, device=settings.device,
                                splits=("train",))
        _reported(report, "cohort augment", fold)
        self.timings["augment_s"] += time.perf_counter() - tic
        return merged

    def evaluate(self, manifest: Path, fold: Fold, arm: str, seed: int) -> dict[str, Any]:
        """classify's ``train_and_evaluate`` for ``arm`` (a finished one is reused); the
        evaluation's record, with its test predictions."""
        settings = self.settings
        finished = self.out / "evaluations" / fold.name / arm / "results.json"
        if finished.is_file():
            results = json.loads(finished.read_text(encoding="utf-8"))
            how = "reused"
        else:
            results = train_and_evaluate(
                manifest, finished.parent, arm=arm, epochs=settings.epochs,
                size=settings.classify_size, batch_size=settings.batch_size, lr=settings.lr,
                seed=seed, model=settings.model, device=settings.device)
            self.timings["classify_s"] += results["wall_time_s"]
            how = f"{results['wall_time_s']:.0f} s"
        counts = results["counts"]
        self.say(f"{fold.tag} {arm}: macro AUC {results['macro_auc']:.3f}, balanced accuracy "
                 f"{results['balanced_accuracy']:.3f} ({counts['train_real']} real + "
                 f"{counts['train_synthetic']} synthetic, {how})")
        keep = ("arm", "seed", "classes", "positive_class", "macro_auc", "balanced_accuracy",
                "sensitivity", "specificity", "counts", "predictions", "wall_time_s")
        return {"repeat": fold.repeat, "fold": fold.index, **{k: results[k] for k in keep},
                "results": finished.relative_to(self.out).as_posix()}


def run_experiment(data: Path, out: Path, settings: ExperimentSettings = FULL, *,
                   arms: Sequence[str] = ARMS, workers: int = 2,
                   subject_regex: str | None = None, command: str = "",
                   credit: str | None = None,
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the protocol (module docstring) on the ImageFolder ``data``; write
    ``out/downstream.{json,md,png}`` and return the JSON's content.

    ``arms`` are classify's arms (synthetic ones need SinGAN: without them nothing is
    trained); ``workers`` local processes train and sample the models; ``subject_regex``
    groups the files into patients (``manifest from-folder --subject-regex``: its first group
    on the file name); ``command`` and ``credit`` (the data's licence) go into the report.
    Raises :class:`ExperimentError` when the data cannot give the folds or a fold fails its
    audit (nothing of that fold is evaluated).
    """
    started = time.perf_counter()
    say = progress or (lambda line: None)
    arms = list(dict.fromkeys(arms))
    unknown = [arm for arm in arms if arm not in ARMS]
    if not arms or unknown:
        raise ExperimentError(f"--arms must be some of {', '.join(ARMS)}, not "
                              f"{','.join(unknown) or 'none given'}")
    data, out = Path(data).resolve(), Path(out)
    if not data.is_dir():
        raise ExperimentError(f"--data {data} is not a folder")
    _claim(out, {"settings": asdict(settings), "data": str(data),
                 "subject_regex": subject_regex})
    real = out / "folds" / "real.csv"
    if not real.is_file():
        manifest_from_folder(data, real, FolderOptions(subject_regex=subject_regex,
                                                       modality=settings.modality or ""))
    table = read_manifest(real)
    folds = subject_folds(table, folds=settings.folds, repeats=settings.repeats,
                          seed=settings.seed)
    by_label = {str(k): int(v) for k, v in table["label"].value_counts().sort_index().items()}
    say(f"{len(table)} real images of {table['subject_id'].nunique()} subjects ("
        + ", ".join(f"{label} {n}" for label, n in by_label.items())
        + f"); {settings.folds}-fold x {settings.repeats} repeat(s) = {len(folds)} "
        f"evaluations per arm, arms {', '.join(arms)}")
    stages = _Stages(settings, out, Executing(workers=workers, progress=False), say)
    fold_records, evaluations = [], []
    for number, fold in enumerate(folds):
        split = write_fold_manifest(real, real.with_name(f"{fold.name}.csv"), fold)
        manifest = (stages.augment(split, fold) if any(arm in SYNTHETIC_ARMS for arm in arms)
                    else split)
        record = {"name": fold.name, "repeat": fold.repeat, "fold": fold.index,
                  "split_manifest": split.relative_to(out).as_posix(),
                  "manifest": manifest.relative_to(out).as_posix(),
                  **audit_fold(manifest, fold)}
        fold_records.append(record)
        say(f"{fold.tag} manifest check passed: train {record['train_images']} real + "
            f"{record['synthetic_rows']} synthetic ({record['train_subjects']} subjects), "
            f"test {record['test_images']} ({', '.join(record['test_subjects'])})")
        # the same classifier seed in every arm of a fold: the arms are paired
        evaluations += [stages.evaluate(manifest, fold, arm, settings.seed + number)
                        for arm in arms]

    summary = summarise(evaluations, arms)
    curves = [pooled_roc(evaluations, arm) for arm in arms]
    document = {
        "summary": summary,
        "pooled_auc": {arm: None if c is None else c.auc for arm, c in zip(arms, curves,
                                                                              strict=True)},
        "arms": arms,
        "settings": asdict(settings),
        "data": {"folder": str(data), "images": len(table),
                 "subjects": int(table["subject_id"].nunique()),
                 "by_label": by_label,
                 "subject_regex": subject_regex, "credit": credit},
        "folds": fold_records,
        "evaluations": [{k: v for k, v in e.items() if k != "predictions"}
                        for e in evaluations],
        "timings": {**{k: round(v, 1) for k, v in stages.timings.items()},
                    "models_trained": len(stages.model_seconds),
                    "seconds_per_model": round(float(np.mean(stages.model_seconds)), 1)
                    if stages.model_seconds else None},
        "workers": workers,
        "command": command,
        "versions": {"medsingan": __version__},
        "created_at": utc_timestamp(),
    }
    document["wall_time_s"] = round(time.perf_counter() - started, 1)
    title = (f"{settings.folds}-fold x {settings.repeats} by patient: "
             f"{len(folds)} evaluations per arm")
    with atomic_path(out / "downstream.png") as tmp:
        draw_downstream(summary, curves, title).save(tmp, format="PNG")
    with atomic_path(out / "downstream.md") as tmp:
        tmp.write_text(markdown_report(document), encoding="utf-8")
    with atomic_path(out / "downstream.json") as tmp:
        tmp.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return document


# --- the report ---------------------------------------------------------------------------------

def _cell(values: dict[str, Any], signed: bool = False) -> str:
    if values["mean"] is None:
        return "n/a"
    form = "{:+.3f}" if signed else "{:.3f}"
    if values["ci"] is None:
        return form.format(values["mean"])
    low, high = values["ci"]
    return f"{form.format(values['mean'])} [{form.format(low)}, {form.format(high)}]"


def markdown_table(document: dict[str, Any]) -> str:
    """The results table of ``downstream.md``: per arm, the mean and 95 % t-interval of macro
    AUC and balanced accuracy, their paired differences from ``none``, the pooled AUC."""
    summary = document["summary"]
    lines = [
        "| arm | evaluations | macro AUC [95% CI] | balanced accuracy [95% CI] | "
        "AUC − none [95% CI] | bal. acc. − none [95% CI] | pooled AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, entry in summary.items():
        deltas = [_cell(entry[key], signed=True) if key in entry else "—"
                  for key in ("macro_auc_minus_none", "balanced_accuracy_minus_none")]
        pooled = document["pooled_auc"][arm]
        lines.append(f"| {arm} | {entry['evaluations']} | {_cell(entry['macro_auc'])} | "
                     f"{_cell(entry['balanced_accuracy'])} | {' | '.join(deltas)} | "
                     f"{'n/a' if pooled is None else f'{pooled:.3f}'} |")
    return "\n".join(lines)


def markdown_report(document: dict[str, Any]) -> str:
    """``downstream.md``: the table (:func:`markdown_table`), the protocol and settings, the
    wall time, the command and the data's credit."""
    settings, data, timings = document["settings"], document["data"], document["timings"]
    per_model = timings["seconds_per_model"]
    return "\n".join([
        "# Downstream experiment: does medsingan help?", "",
        f"Data: {data['images']} real images of {data['subjects']} subjects ("
        + ", ".join(f"{k} {v}" for k, v in data["by_label"].items()) + f") in {data['folder']}.",
        f"Protocol: stratified {settings['folds']}-fold cross-validation by subject x "
        f"{settings['repeats']} repeat(s) (seeds {settings['seed'] + 1}.."
        f"{settings['seed'] + settings['repeats']}); every fold's manifest passed "
        "`manifest check` and the leak audit (no synthetic image of a test subject, no "
        "subject on both sides).", "",
        markdown_table(document), "",
        "Means over the evaluations with 95 % Student-t intervals; the differences from "
        "`none` are paired (same fold, same classifier seed). Pooled AUC: every test "
        "prediction of an arm in one ROC curve.", "",
        f"SinGAN: `fast` preset, {settings['size']} px (min {settings['min_size']}), "
        f"{settings['iters']} iterations per scale, {settings['per_scan']} samples per "
        f"training image from scale {settings['start_scale']}. Classifier (every arm): "
        f"{settings['model']}, {settings['classify_size']} px, {settings['epochs']} epochs, "
        f"batch {settings['batch_size']}, lr {settings['lr']:g}.", "",
        f"Wall time: {document['wall_time_s'] / 60:.1f} min ({document['workers']} worker(s); "
        f"SinGAN {timings['singan_train_s'] / 60:.1f} min for {timings['models_trained']} "
        f"model(s)"
        + (f", {per_model:.0f} s each" if per_model is not None else "")
        + f"; sampling {timings['augment_s'] / 60:.1f} min; classifiers "
        f"{timings['classify_s'] / 60:.1f} min).", "",
        f"Command: `{document['command'] or 'run_experiment(...)'}`", "",
        *([f"Data credit: {data['credit']}.", ""] if data["credit"] else []),
    ])


# --- command line -------------------------------------------------------------------------------

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


def _both(name: str) -> str:
    full, quick = getattr(FULL, name), getattr(QUICK, name)
    return f"[default: {full}; --quick {quick}]" if full != quick else f"[default: {full}]"


@app.command()
def downstream(
    out: Annotated[Path, typer.Option("--out", help="Folder of the experiment (created; "
                                      "the same command over it resumes).",
                                      show_default=False)],
    data: Annotated[Path | None, typer.Option(
        "--data", help="ImageFolder of real labelled scans: DIR/<label>/<scan>.",
        show_default=False)] = None,
    fetch: Annotated[bool, typer.Option(
        "--fetch", help=f"Use the 16 chest films of {PACKAGE} (Kermany et al., CC BY 4.0), "
        "pip-downloaded once into --cache.")] = False,
    cache: Annotated[Path, typer.Option("--cache", help="Where --fetch keeps the wheel and "
                                        "its images.")] = DEFAULT_CACHE,
    quick: Annotated[bool, typer.Option("--quick", help="Minutes, not hours: the QUICK "
                                        "defaults below.")] = False,
    folds: Annotated[int | None, typer.Option("--folds", help="K of the K-fold by subject "
                                              + _both("folds"), show_default=False)] = None,
    repeats: Annotated[int | None, typer.Option(
        "--repeats", help="Partitions, each with its own seed " + _both("repeats"),
        show_default=False)] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of everything "
                                             + _both("seed"), show_default=False)] = None,
    size: Annotated[int | None, typer.Option(
        "--size", help="SinGAN: longer side of the finest scale, px " + _both("size"),
        show_default=False)] = None,
    min_size: Annotated[int | None, typer.Option(
        "--min-size", help="SinGAN: shorter side of the coarsest scale, px "
        + _both("min_size"), show_default=False)] = None,
    iters: Annotated[int | None, typer.Option(
        "--iters", help="SinGAN iterations per scale " + _both("iters"),
        show_default=False)] = None,
    per_scan: Annotated[int | None, typer.Option(
        "--per-scan", help="Synthetic samples per training image " + _both("per_scan"),
        show_default=False)] = None,
    start_scale: Annotated[str | None, typer.Option(
        "--start-scale", help="Scale sampling starts at: N (coarsest), N-k or an index "
        + _both("start_scale"), show_default=False)] = None,
    epochs: Annotated[int | None, typer.Option(
        "--epochs", help="Classifier epochs " + _both("epochs"), show_default=False)] = None,
    classify_size: Annotated[int | None, typer.Option(
        "--classify-size", help="Classifier input side, px " + _both("classify_size"),
        show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", help="Classifier batch " + _both("batch_size"),
        show_default=False)] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Classifier Adam learning rate "
                                             + _both("lr"), show_default=False)] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help=f"Classifier: {' or '.join(MODELS)} " + _both("model"),
        show_default=False)] = None,
    modality: Annotated[str | None, typer.Option(
        "--modality", help="SinGAN modality preset of every scan [default: xray with "
        "--fetch, else from each file].", show_default=False)] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N "
                                               + _both("device"), show_default=False)] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Processes training and "
                                         "sampling the models (one thread each on 2 cores).")
                       ] = 2,
    arms: Annotated[str, typer.Option("--arms", help="Comma-separated arms of classify.")
                    ] = ",".join(ARMS),
    subject_regex: Annotated[str | None, typer.Option(
        "--subject-regex", help="Subject = first group of this regex on the file name "
        f"[default: {PNEUMONIA_SUBJECT_REGEX} with --fetch; else from-folder's: DICOM "
        "Patient ID, else one subject per file].", show_default=False)] = None,
) -> None:
    """Real labelled scans -> patient-grouped folds -> one SinGAN per training image ->
    synthetic rows -> the four classify arms -> downstream.{json,md,png}: mean and 95% CI
    of macro AUC and balanced accuracy per arm."""
    if fetch == (data is not None):
        raise ExperimentError("give exactly one of --data DIR and --fetch")
    given = {"folds": folds, "repeats": repeats, "seed": seed, "size": size,
             "min_size": min_size, "iters": iters, "per_scan": per_scan,
             "start_scale": start_scale, "epochs": epochs, "classify_size": classify_size,
             "batch_size": batch_size, "lr": lr, "model": model, "device": device,
             "modality": modality or ("xray" if fetch else None)}
    settings = replace(QUICK if quick else FULL,
                       **{k: v for k, v in given.items() if v is not None})

    def say(line: str) -> None:
        typer.echo(line, err=True)

    if fetch:
        data = fetch_pneumonia(cache, progress=say)
        subject_regex = subject_regex or PNEUMONIA_SUBJECT_REGEX
    assert data is not None
    document = run_experiment(
        data, out, settings, arms=[arm.strip() for arm in arms.split(",") if arm.strip()],
        workers=workers, subject_regex=subject_regex, credit=CREDIT if fetch else None,
        command=" ".join(shlex.quote(a) for a in ["python", "-m",
                                                   "pipelines.downstream_experiment",
                                                   *sys.argv[1:]]),
        progress=say)
    typer.echo(markdown_table(document))
    typer.echo(f"{out / 'downstream.md'}, {out / 'downstream.png'}, {out / 'downstream.json'}"
               f" ({document['wall_time_s'] / 60:.1f} min)")


def main() -> None:
    """Entry point: errors -> one ``error:`` line, exit code 2 (as ``pipelines.classify``)."""
    run_app(app, "interrupted (run the same command again to resume)")


if __name__ == "__main__":
    main()
