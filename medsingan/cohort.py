"""Many scans -> many runs -> one manifest: the fan-out behind ``medsingan cohort``.

SinGAN is one model per image, so a cohort is an embarrassingly parallel set of tasks, one per
selected row of a real-image manifest. The tasks are plain functions of a picklable spec that
return a result (workers never write the merged manifest); they run on any
``concurrent.futures.Executor``: a local process pool by default, or a Dask distributed
cluster (``Client.get_executor()``) — one code path.

``cohort augment --engine patch`` needs no ``cohort train``: each task runs the training-free
patch engine on its scan (:mod:`medsingan.engines.patch`), into the same per-scan folder under
the runs folder.

A task is idempotent: a finished run is skipped, an interrupted one resumes from its last
finished scale, and a cohort's samples are completed, never duplicated (``augment``'s own
rule). So a task lost with its worker (killed, out of memory) is simply submitted again.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from medsingan.augment import DEFAULT_MAX_COPY, AugmentRequest, ScanSource, augment, read_unit
from medsingan.batched import batch_key, train_batch, why_not_batchable
from medsingan.errors import ConfigError, MedsinganError, RunDirError, warn_user
from medsingan.io.atomic import atomic_path
from medsingan.manifest import check_manifest, merge_manifests, read_manifest, resolve_image
from medsingan.model.previews import to_uint8
from medsingan.preprocess import IntensityMapping
from medsingan.roi import region_of_run
from medsingan.runs import prepare_training, train_scan
from medsingan.train import load_run

# Presets a manifest's modality column may name; anything else is detected (auto).
_MODALITIES = ("xray", "ct", "mri", "dental", "generic")


@dataclass(frozen=True)
class Executing:
    """Where the tasks run: ``workers`` local processes, or a Dask ``scheduler`` address
    (``"local"`` for a LocalCluster of ``workers`` processes), ``gpus_per_task`` GPUs each."""

    workers: int = 1
    scheduler: str | None = None
    gpus_per_task: int = 0
    retries: int = 2
    progress: bool = True


@dataclass(frozen=True)
class TrainTask:
    """One model: a real image and the run directory it trains into."""

    image: str
    run_dir: str
    label: str
    split: str
    subject_id: str
    modality: str
    window: str | None
    speed_preset: str
    overrides: dict[str, Any]
    threads: int


@dataclass(frozen=True)
class TrainBatch:
    """Models of one pyramid geometry and one set of settings, trained together as one
    batched network (:mod:`medsingan.batched`)."""

    tasks: tuple[TrainTask, ...]

    @property
    def run_dir(self) -> str:
        """The first model's run directory, which names the batch in progress reports."""
        return self.tasks[0].run_dir


@dataclass(frozen=True)
class AugmentTask:
    """One run's samples: ``n`` of them into ``out``, listed in the run's own manifest; with
    ``engine`` patch, the samples of ``scan`` itself (read with the ``modality`` preset and
    ``window``), no run needed."""

    run_dir: str
    out: str
    manifest: str
    label: str
    split: str
    subject_id: str
    n: int
    start_scale: str
    seed: int
    output_format: str
    sifid: bool
    sifid_variant: str
    inception_weights: str | None
    device: str
    threads: int
    engine: str = "singan"
    scan: str | None = None
    modality: str = "auto"
    window: str | None = None
    max_copy: float = DEFAULT_MAX_COPY


@dataclass
class TaskResult:
    """What a task reports back to the coordinator."""

    name: str
    status: str  # trained | skipped | augmented | failed
    seconds: float = 0.0
    error: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class CohortReport:
    results: list[TaskResult]
    manifest: Path | None = None
    summary: Path | None = None
    sheet: Path | None = None

    @property
    def failed(self) -> list[TaskResult]:
        return [r for r in self.results if r.status == "failed"]


def run_name(image: Path, manifest: Path) -> str:
    """A run directory name per real image: its stem and a hash of its path relative to the
    manifest (two ``scan.dcm`` in different folders get two runs).

    >>> run_name(Path("/data/a/chest.dcm"), Path("/data/real.csv"))[:6]
    'chest-'
    """
    relative = os.path.relpath(os.path.realpath(image), os.path.dirname(
        os.path.realpath(manifest)))
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", image.name.split(".")[0]) or "scan"
    return f"{stem}-{hashlib.sha256(relative.encode()).hexdigest()[:8]}"


def _selected_rows(manifest: Path, splits: Sequence[str]) -> list[dict[str, Any]]:
    """The real rows of ``splits``, their files checked; a test split is refused (its images
    must never get a model, nor its patients synthetic images)."""
    if "test" in splits:
        raise ConfigError("--split test is refused: a test image never gets a model (its "
                          "samples would be synthetic images of a test patient)")
    frame = read_manifest(manifest)
    real = frame[~frame["synthetic"]]
    if splits:
        real = real[real["split"].astype(str).isin(splits)]
    if real.empty:
        wanted = f" in split {', '.join(splits)}" if splits else ""
        raise ConfigError(f"{manifest} has no real rows{wanted}; assign splits with "
                          "medsingan manifest split")
    rows = []
    missing = []
    for record in real.to_dict("records"):
        path = resolve_image(manifest, str(record["image"]))
        if not path.is_file():
            missing.append(str(record["image"]))
        rows.append({**record, "path": path})
    if missing:
        raise ConfigError(f"{manifest}: {len(missing)} image(s) missing, e.g. {missing[0]}")
    return rows


def _threads(executing: Executing) -> int:
    """Intra-op threads per task: this machine's cores shared out among the local workers,
    so that they do not oversubscribe it; on a remote cluster one thread per task (start
    one single-threaded worker process per core there: ``--nworkers N --nthreads 1``)."""
    if executing.scheduler not in (None, "local"):
        return 1
    return max(1, len(os.sched_getaffinity(0)) // max(executing.workers, 1))


def train_tasks(manifest: Path, runs: Path, *, splits: Sequence[str] = ("train",),
                modality: str | None = None, window: str | None = None,
                speed_preset: str = "fast", overrides: dict[str, Any] | None = None,
                executing: Executing = Executing()) -> list[TrainTask]:
    """One :class:`TrainTask` per real row of ``splits`` (default: the training split only:
    a test image never gets a model)."""
    tasks = []
    for row in _selected_rows(manifest, splits):
        tasks.append(TrainTask(
            image=str(row["path"]), run_dir=str(runs / run_name(row["path"], manifest)),
            label=str(row["label"]), split=str(row["split"]),
            subject_id=str(row["subject_id"]), modality=_row_preset(row, modality),
            window=window,
            speed_preset=speed_preset,
            overrides={k: v for k, v in (overrides or {}).items() if v is not None},
            threads=_threads(executing)))
    return tasks


def _row_preset(row: dict[str, Any], modality: str | None) -> str:
    """The preset of a real row's scan: ``modality`` if given, else the row's modality column
    where it names a preset, else auto (from the DICOM Modality)."""
    return modality or (row["modality"] if row["modality"] in _MODALITIES else "auto")


def _is_complete(run_dir: Path) -> bool:
    if not (run_dir / "config.json").is_file():
        return False
    with contextlib.suppress(MedsinganError):
        return load_run(run_dir).is_complete
    return False


def _prepare(task: TrainTask) -> Any:
    return prepare_training(Path(task.image), Path(task.run_dir), modality=task.modality,
                            window=task.window, speed_preset=task.speed_preset,
                            overrides=task.overrides, label=task.label, split=task.split,
                            subject_id=task.subject_id)


def train_one(task: TrainTask) -> TaskResult:
    """Train (or resume, or skip) one model; errors come back as a one-line message."""
    torch.set_num_threads(task.threads)
    name = Path(task.run_dir).name
    started = time.perf_counter()
    run_dir = Path(task.run_dir)
    try:
        if _is_complete(run_dir):
            return TaskResult(name, "skipped")
        train_scan(Path(task.image), run_dir, modality=task.modality, window=task.window,
                   speed_preset=task.speed_preset, overrides=task.overrides,
                   resume=(run_dir / "config.json").is_file(), progress=False,
                   label=task.label, split=task.split, subject_id=task.subject_id)
    except Exception as exc:  # reported per task; the other tasks go on
        return TaskResult(name, "failed", time.perf_counter() - started, _one_line(exc))
    return TaskResult(name, "trained", time.perf_counter() - started)


def batch_train_tasks(tasks: Sequence[TrainTask], batch_models: int
                      ) -> tuple[list[TrainBatch], list[TaskResult]]:
    """Bucket ``tasks`` by pyramid geometry and settings into batches of at most
    ``batch_models`` models (a bucket's remainder makes a smaller batch); finished runs are
    skipped and scans that cannot be read reported, here, once."""
    if batch_models < 1:
        raise ConfigError(f"--batch-models must be at least 1, got {batch_models}")
    buckets: dict[Any, list[TrainTask]] = {}
    results = []
    for task in tasks:
        name = Path(task.run_dir).name
        if _is_complete(Path(task.run_dir)):
            results.append(TaskResult(name, "skipped"))
            continue
        try:
            prepared = _prepare(task)
        except Exception as exc:
            results.append(TaskResult(name, "failed", error=_one_line(exc)))
            continue
        alone = why_not_batchable(prepared.config) is not None  # such a run trains alone
        key = task.run_dir if alone else batch_key(prepared.image, prepared.config)
        buckets.setdefault(key, []).append(task)
    batches = [TrainBatch(tuple(bucket[i:i + batch_models]))
               for bucket in buckets.values() for i in range(0, len(bucket), batch_models)]
    return batches, results


def train_batch_one(batch: TrainBatch) -> TaskResult:
    """Train a batch's models together; one result whose ``details["results"]`` holds each
    model's. When the batch cannot train as one (runs stopped at different scales, one run
    trained with other settings, one scan unreadable, ...), each model trains alone, so one
    bad run fails only itself."""
    if len(batch.tasks) == 1:
        return _batch_result(batch, [train_one(batch.tasks[0])])
    torch.set_num_threads(batch.tasks[0].threads)
    started = time.perf_counter()
    names = [Path(task.run_dir).name for task in batch.tasks]
    try:
        prepared = [_prepare(task) for task in batch.tasks]
        for item in prepared:
            warn_user(item.extra["warnings"])
        train_batch([p.image for p in prepared], [p.config for p in prepared],
                    [p.run_dir for p in prepared], extras=[p.extra for p in prepared],
                    resume=True, progress=False)
    except MedsinganError:
        return _batch_result(batch, [train_one(task) for task in batch.tasks])
    except Exception as exc:  # the batch's models fail together; other batches go on
        seconds = time.perf_counter() - started
        return _batch_result(batch, [TaskResult(name, "failed", seconds, _one_line(exc))
                                     for name in names])
    seconds = (time.perf_counter() - started) / len(names)
    return _batch_result(batch, [TaskResult(name, "trained", seconds) for name in names])


def _batch_result(batch: TrainBatch, results: list[TaskResult]) -> TaskResult:
    """The batch's result: ``failed`` (for the progress bar) if any model failed."""
    failed = any(r.status == "failed" for r in results)
    return TaskResult(Path(batch.run_dir).name, "failed" if failed else "batch",
                      details={"results": [asdict(r) for r in results]})


def _unbatched(batch: TrainBatch, result: TaskResult) -> list[TaskResult]:
    """Each model's result of a batch (all failed alike when its worker died)."""
    if "results" in result.details:
        return [TaskResult(**r) for r in result.details["results"]]
    return [TaskResult(Path(task.run_dir).name, result.status, result.seconds, result.error)
            for task in batch.tasks]


def augment_tasks(manifest: Path, runs: Path, *, per_scan: int, start_scale: str = "N",
                  seed: int = 0, output_format: str = "same", sifid: bool = True,
                  sifid_variant: str = "paper", inception_weights: Path | None = None,
                  device: str = "auto", splits: Sequence[str] = ("train",),
                  engine: str = "singan", modality: str | None = None,
                  window: str | None = None, max_copy: float = DEFAULT_MAX_COPY,
                  executing: Executing = Executing()) -> list[AugmentTask]:
    """One :class:`AugmentTask` per trained run of the selected rows; a row without a
    complete run is an error (train it first). With ``engine`` patch, one task per selected
    scan, no run needed (``modality`` and ``window`` read it as ``cohort train`` would)."""
    if per_scan < 1:
        raise ConfigError(f"--per-scan must be at least 1, got {per_scan}")
    patch = engine == "patch"
    if not patch and (modality is not None or window is not None):
        raise ConfigError("--modality and --window apply to --engine patch (a run keeps its "
                          "scan's reading)")
    tasks = []
    for row in _selected_rows(manifest, splits):
        run_dir = runs / run_name(row["path"], manifest)
        if not patch:
            try:
                complete = load_run(run_dir).is_complete
            except MedsinganError:
                complete = False
            if not complete:
                raise RunDirError(f"{row['image']} has no complete run in {runs} (expected "
                                  f"{run_dir.name}); run medsingan cohort train first, or "
                                  "sample the scans with --engine patch")
        # one folder per cohort settings; its rows of these K samples in a file of their own
        prefix = "patch" if patch else "samples"
        out = run_dir / f"{prefix}_seed{seed}_{re.sub(r'[^A-Za-z0-9-]', '', start_scale)}"
        tasks.append(AugmentTask(
            run_dir=str(run_dir), out=str(out), manifest=str(out / f"samples_{per_scan}.csv"),
            label=str(row["label"]), split=str(row["split"]),
            subject_id=str(row["subject_id"]), n=per_scan,
            start_scale=start_scale, seed=seed, output_format=output_format, sifid=sifid,
            sifid_variant=sifid_variant,
            inception_weights=None if inception_weights is None else str(inception_weights),
            device=device, threads=_threads(executing), engine=engine,
            scan=str(row["path"]) if patch else None,
            modality=_row_preset(row, modality) if patch else "auto",
            window=window, max_copy=max_copy))
    return tasks


def augment_one(task: AugmentTask) -> TaskResult:
    """Generate (or complete) one run's (or scan's) samples; its rows go to its own
    manifest."""
    torch.set_num_threads(task.threads)
    name = Path(task.run_dir).name
    started = time.perf_counter()
    patch = task.engine == "patch"
    try:
        result = augment(AugmentRequest(
            run_dir=None if patch else Path(task.run_dir), engine=task.engine,
            scan=Path(task.scan) if patch and task.scan else None, modality=task.modality,
            window=task.window, max_copy=task.max_copy, n=task.n,
            start_scale=task.start_scale, seed=task.seed,
            out=Path(task.out), output_format=task.output_format, manifest=Path(task.manifest),
            label=task.label, split=task.split, subject_id=task.subject_id,
            sifid=task.sifid, sifid_variant=task.sifid_variant,
            inception_weights=None if task.inception_weights is None
            else Path(task.inception_weights), device=task.device, progress=False))
    except Exception as exc:
        return TaskResult(name, "failed", time.perf_counter() - started, _one_line(exc))
    return TaskResult(name, "augmented", time.perf_counter() - started,
                      details={"run_dir": task.run_dir, "manifest": task.manifest,
                               "engine": task.engine, "scan": task.scan,
                               "modality": task.modality, "window": task.window,
                               "summary": result.summary})


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, MedsinganError) else f"{type(exc).__name__}: {text}"[:300]


# --- executors ------------------------------------------------------------------------------

@contextlib.contextmanager
def open_executor(executing: Executing) -> Iterator[Callable[[], futures.Executor]]:
    """A factory of the executor the tasks run on (called again after a local pool broke)."""
    if executing.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {executing.workers}")
    if executing.gpus_per_task < 0:
        raise ConfigError(f"--gpus-per-task must be 0 or more, got {executing.gpus_per_task}")
    if executing.scheduler is None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        pools: list[futures.ProcessPoolExecutor] = []

        def new_pool() -> futures.Executor:
            pools.append(futures.ProcessPoolExecutor(executing.workers, mp_context=context))
            return pools[-1]

        try:
            yield new_pool
        finally:
            for pool in pools:
                pool.shutdown(wait=False, cancel_futures=True)
        return
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError("--scheduler needs Dask: pip install 'medsingan[dask]'") from None
    cluster = None
    try:
        if executing.scheduler == "local":
            import dask

            # a task whose worker dies is run again this many times, then reported failed
            dask.config.set({"distributed.scheduler.allowed-failures": executing.retries})
            resources = {"GPU": executing.gpus_per_task} if executing.gpus_per_task else None
            cluster = LocalCluster(n_workers=executing.workers, threads_per_worker=1,
                                   processes=True, dashboard_address=None,
                                   resources=resources)
            client = Client(cluster)
        else:
            client = Client(executing.scheduler, timeout="10s")
    except (OSError, TimeoutError, ValueError) as exc:  # ValueError: a malformed address
        if cluster is not None:
            cluster.close()
        raise ConfigError(f"cannot reach the Dask scheduler {executing.scheduler} "
                          f"({_one_line(exc)})") from None
    submit_options: dict[str, Any] = {"retries": executing.retries, "pure": False}
    if executing.gpus_per_task:
        submit_options["resources"] = {"GPU": executing.gpus_per_task}
    try:
        executor = client.get_executor(**submit_options)
        yield lambda: executor
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_tasks(function: Callable[[Any], TaskResult], tasks: Sequence[Any],
              executing: Executing, title: str) -> list[TaskResult]:
    """Run every task on the executor, with one progress bar; a task whose worker died is
    submitted again (up to ``executing.retries`` times), so each task reports exactly once."""
    results: dict[int, TaskResult] = {}
    attempts = dict.fromkeys(range(len(tasks)), 0)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[failed]} failed"), TimeRemainingColumn())
    with open_executor(executing) as executor_factory, Progress(
            *columns, console=Console(stderr=True), disable=not executing.progress) as bar:
        progress = bar.add_task(title, total=len(tasks), failed=0)
        pending = list(range(len(tasks)))
        while pending:
            executor = executor_factory()
            submitted = {executor.submit(function, tasks[i]): i for i in pending}
            pending = []
            for future in futures.as_completed(submitted):
                index = submitted[future]
                try:
                    result = future.result()
                except BrokenProcessPool as exc:
                    # a worker of the pool died (killed, out of memory): the pool is gone with
                    # the tasks it ran; they run again on a new one
                    attempts[index] += 1
                    if attempts[index] <= executing.retries:
                        pending.append(index)
                        continue
                    result = TaskResult(_task_name(tasks[index]), "failed",
                                        error=f"its worker died {attempts[index]} times "
                                              f"({_one_line(exc)})")
                except Exception as exc:  # e.g. Dask's KilledWorker after its retries
                    result = TaskResult(_task_name(tasks[index]), "failed",
                                        error=_one_line(exc))
                results[index] = result
                failed = sum(r.status == "failed" for r in results.values())
                bar.update(progress, advance=1, failed=failed)
    return [results[i] for i in range(len(tasks))]


def _task_name(task: Any) -> str:
    return Path(task.run_dir).name


# --- the two commands ---------------------------------------------------------------------------

def cohort_train(manifest: Path, runs: Path, *, executing: Executing = Executing(),
                 batch_models: int = 1, **options: Any) -> CohortReport:
    """Train one model per selected real row (see :func:`train_tasks`); with
    ``batch_models`` K > 1, scans of one geometry train K at a time in one batched network
    per task (:func:`batch_train_tasks`)."""
    tasks = train_tasks(manifest, runs, executing=executing, **options)
    if batch_models == 1:
        return CohortReport(run_tasks(train_one, tasks, executing,
                                      f"training {len(tasks)} model(s)"))
    batches, results = batch_train_tasks(tasks, batch_models)
    done = run_tasks(train_batch_one, batches, executing,
                     f"training {len(tasks) - len(results)} model(s) in {len(batches)} "
                     "batch(es)")
    for batch, result in zip(batches, done, strict=True):
        results += _unbatched(batch, result)
    order = {Path(task.run_dir).name: i for i, task in enumerate(tasks)}
    return CohortReport(sorted(results, key=lambda r: order[r.name]))


def cohort_augment(manifest: Path, runs: Path, output: Path, *, per_scan: int,
                   executing: Executing = Executing(), **options: Any) -> CohortReport:
    """Sample every run, then write one manifest: the real rows (every split) and each run's
    synthetic rows, which inherit their source's label, split and subject. Only this
    coordinator writes ``output``; it must pass ``manifest check``."""
    if output.resolve() == manifest.resolve():
        raise ConfigError("-o must differ from the real manifest (it is read, never rewritten)")
    tasks = augment_tasks(manifest, runs, per_scan=per_scan, executing=executing, **options)
    results = run_tasks(augment_one, tasks, executing,
                        f"sampling {per_scan} x {len(tasks)} run(s)")
    report = CohortReport(results)
    done = [r for r in results if r.status == "augmented"]
    if not done:
        raise RunDirError(f"every run failed ({results[0].error}); {output} not written")
    with atomic_path(output) as merged:  # checked before it takes the output's name
        merge_manifests([manifest, *(r.details["manifest"] for r in done)], merged)
        problems = check_manifest(merged)
        if problems:
            raise ConfigError(f"the merged manifest would have {len(problems)} problem(s), "
                              f"e.g. {problems[0]}; {output} not written")
    report.manifest = output
    report.summary = output.with_name(f"{output.stem}_summary.json")
    report.sheet = output.with_name(f"{output.stem}_summary.png")
    _write_summary(report.summary, results, output)
    _write_sheet(report.sheet, done)
    return report


def _write_summary(path: Path, results: list[TaskResult], manifest: Path) -> None:
    data = {"manifest": str(manifest), "runs": [asdict(r) for r in results]}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))


def _training_image(details: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """The training image ``(1, C, h, w)`` of an augment task and its source description: a
    run's, or the scan's as the patch engine reads it."""
    if details.get("engine") == "patch":
        source = ScanSource(Path(details["scan"]), modality=details["modality"],
                            window=details["window"])
        return source.real, source.extra
    pyramid = load_run(Path(details["run_dir"]))
    return pyramid.reals[0], pyramid.metadata["extra"]


def _write_sheet(path: Path, done: list[TaskResult], samples: int = 4) -> None:
    """Per run: the training image and the first samples, with the run's mean scores."""
    tile, gap, caption = 96, 4, 28
    rows = []
    for result in done:
        real, extra = _training_image(result.details)
        mapping = IntensityMapping.from_dict(extra["intensity_mapping"])
        pictures = [to_uint8(real[0, 0])]
        manifest = result.details["manifest"]
        for image in read_manifest(manifest).sort_values("image")["image"].head(samples):
            unit = read_unit(resolve_image(manifest, str(image)), mapping,
                             tuple(real.shape[-2:]), region_of_run(extra))
            pictures.append(to_uint8(unit[0, 0]))
        summary = result.details.get("summary") or {}
        scores = ", ".join(f"{key.replace('_mean', '')} {summary[key]:.3g}" for key in
                           ("sifid_mean", "patch_swd_mean", "similarity_mean", "diversity",
                            "copy_score_mean") if summary.get(key) is not None)
        rows.append((result.name, scores, pictures))
    if not rows:
        return
    sheet = Image.new("L", ((samples + 1) * (tile + gap), len(rows) * (tile + caption + gap)),
                      255)
    draw = ImageDraw.Draw(sheet)
    for k, (name, scores, pictures) in enumerate(rows):
        top = k * (tile + caption + gap)
        draw.text((2, top + 1), name, fill=0)
        draw.text((2, top + 13), scores or "no scores", fill=80)
        for j, picture in enumerate(pictures):
            thumb = Image.fromarray(picture).resize((tile, tile), Image.Resampling.BILINEAR)
            sheet.paste(thumb, (j * (tile + gap), top + caption))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
