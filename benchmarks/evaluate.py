"""`genpercept eval`: score a checkpoint or predictions on disk with a benchmark's protocol (SPEC §6).

    dataset sample -> prediction (model or `<pred_dir>/<key stem>_pred.npy`) -> task scorer
    -> dataset metrics + per-image rows + the paper's row beside them

Every sample that cannot be scored (its prediction missing, unreadable, mis-shaped or non-finite, or
its ground truth without a valid pixel) is reported as a problem; the caller decides whether that
fails the run (`--allow-missing`).
"""

from __future__ import annotations

import csv
import json
import math
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from genpercept_cli.errors import GenPerceptError
from genpercept_cli.files import NotNumericPrediction, why_missing
from genpercept_cli.tasks import TASKS, get_task

from .datasets import EvalDataset, Sample, get_dataset
from .scorers import DISScorer, make_scorer

# dataset name -> (section, key) in paper_results.toml
PAPER_KEYS = {
    "nyu": ("depth", "nyu"), "kitti": ("depth", "kitti"), "eth3d": ("depth", "eth3d"),
    "scannet": ("depth", "scannet"), "diode": ("depth", "diode"),
    "nyu-normal": ("normal", "nyu"), "scannet-normal": ("normal", "scannet"),
    "sintel-normal": ("normal", "sintel"),
    "dis-vd": ("dis", "dis_vd"), "dis-te1": ("dis", "dis_te1"), "dis-te2": ("dis", "dis_te2"),
    "dis-te3": ("dis", "dis_te3"), "dis-te4": ("dis", "dis_te4"), "dis-te": ("dis", "dis_te_all"),
    "p3m-500-np": ("matting", "p3m_500_np"), "aim-500": ("matting", "aim_500"),
    "hypersim-seg": ("seg", "hypersim"), "ibims-normal": ("normal", "ibims"),
    "ade20k": ("semseg", "ade20k"), "cityscapes": ("semseg", "cityscapes"),
}  # fmt: skip


def __getattr__(name: str):
    if name == "CHECKPOINT_TASKS":  # benchmark task -> the checkpoint tasks it scores, from the task registry
        return {bench: tuple(t.name for t in TASKS.values() if t.benchmark == bench)
                for bench in dict.fromkeys(t.benchmark for t in TASKS.values())}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class EvalOptions:
    dataset: str
    data_dir: str | Path | None = None
    checkpoint: str | None = None
    predictions: Path | None = None
    predicted_by: str | None = None  # with predictions: the checkpoint that made them (not run; its paper row)
    save_predictions: Path | None = None
    limit: int | None = None
    processing_res: int | None = None  # None: the dataset's protocol default
    space: str = "auto"  # depth alignment: auto (from the checkpoint), depth, disparity
    eth3d_subsample: str = "reference"  # ETH3D alignment fit: "reference" (columns only) or "uniform"
    normal_mode: str = "pooled"  # DSINE pooling (paper) or "per_image" (Marigold)
    normal_flip: str = ""  # axes of the prediction to negate before scoring
    seg_convention: str = "mmseg"
    seg_metric: str = "l1"  # nearest-palette decoding of the predicted colours
    multi_scale_flip: bool = False  # semseg: the model's multi-scale + flip test-time augmentation
    with_hce: bool = True
    hce_variant: str = "line"  # approxPolyDP as OpenCV <= 4.12 (the published numbers)
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 0  # samples per model batch; 0 = automatic (1 on CPU)
    backend: str | None = None  # torch, onnxruntime, openvino, auto (genpercept_cli.backends); None: torch


@dataclass
class EvalResult:
    dataset: str
    checkpoint: str | None
    n_images: int
    metrics: dict
    protocol: dict
    rows: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one sentence per sample that was not scored
    subsets: dict = field(default_factory=dict)
    paper: dict | None = None
    paper_label: str | None = None
    paper_note: str | None = None  # why no paper row is shown beside the results, when there is none

    def to_json(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("rows", "paper_label")}
        out["paper"] = {"label": self.paper_label, "metrics": self.paper} if self.paper else None
        return _finite_or_none(out)


def _finite_or_none(obj):
    """JSON has no NaN: undefined values (e.g. IoU of an absent class) become null."""
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# -- predictions ----------------------------------------------------------------------------------
def prediction_stem(key: str) -> str:
    """`a/b/img.png` -> `a/b/img`: predictions live at `<dir>/<stem>_pred.npy` (the predict layout)."""
    return str(Path(key).with_suffix(""))


def load_prediction(pred_dir: Path, key: str, task: str) -> np.ndarray:
    """A prediction written by `genpercept predict` for a benchmark of `task`, read as that task reads
    its files (`tasks.Task.read_saved`: npy first; float EXR for depth and normals; 8-bit PNGs for
    dis/matting, label PNG for seg).
    Raises FileNotFoundError when none exists, NotNumericPrediction for a .npy of anything but bool,
    integers or floats."""
    return get_task(task).read_saved(pred_dir / prediction_stem(key))


def check_prediction(pred: np.ndarray, sample: Sample, task: str, kind: str | None = None) -> str | None:
    """Why a prediction cannot be scored on a benchmark of `task`, or None (`tasks.Task.check_saved`).
    kind: what the prediction holds, e.g. "metric_depth" (may hold NaN); None = the task's default."""
    return get_task(task).check_saved(pred, sample.gt.shape[:2], kind)


def _prefetch(ds: EvalDataset, indices: list[int], depth: int = 4) -> Iterator[tuple[Sample | None, str | None]]:
    """Decode samples `indices` of `ds` in a background thread, `depth` ahead of the consumer: (sample, None),
    or (None, why) for a sample that cannot be read (a member missing from an incomplete archive), a problem
    of that sample as it is with a model (the runner lists it), not the end of the run."""
    with ThreadPoolExecutor(1) as pool:
        futures = [pool.submit(ds.__getitem__, i) for i in indices[:depth]]
        for k in range(len(indices)):
            try:
                item = futures[k].result(), None
            except GenPerceptError as exc:
                item = None, str(exc)
            if k + depth < len(indices):
                futures.append(pool.submit(ds.__getitem__, indices[k + depth]))
            futures[k] = None
            yield item


# -- the run --------------------------------------------------------------------------------------
def space_for(spec, requested: str = "auto") -> str:
    """Depth alignment space: as requested, or from the checkpoint's output kind (affine disparity ->
    disparity, metric depth -> metric, anything else -> depth)."""
    if requested != "auto":
        return requested
    kind = spec.kind if spec is not None else "affine_depth"
    return {"affine_disparity": "disparity", "metric_depth": "metric"}.get(kind, "depth")


def protocol_for(dataset: str, space: str) -> str | None:
    """The dataset protocol (`datasets.depth`): "metric" for metric depth where the dataset has one (NYU,
    KITTI: the GLPDepth / Meta Prompts caps and crops), else None (the dataset's default)."""
    from .datasets import DATASETS

    cls = DATASETS.get(dataset)
    return "metric" if cls is not None and space == "metric" and "metric" in cls.protocols else None


def _set_multi_scale_flip(pipe, ds: EvalDataset) -> None:
    """Switch the model to multi-scale + flip inference (Meta Prompts' --aug-test: ratios 1-1.5, each flipped)."""
    from genpercept_cli.models.metaprompts.tta import SegTTA

    if ds.task != "semseg":
        raise GenPerceptError(f"--multi-scale-flip applies to segmentation benchmarks; {ds.name} is a {ds.task} one.")
    if not isinstance(getattr(pipe.model, "tta", None), SegTTA):
        raise GenPerceptError(f"--multi-scale-flip needs a model with segmentation test-time augmentation (Meta "
                              f"Prompts); {pipe.spec.name!r} has none.")
    pipe.model.tta = SegTTA.multi_scale_flip()


def evaluate(opts: EvalOptions, progress=None, pipe=None, dist=None) -> EvalResult:
    """Run one benchmark; `pipe` (a loaded GenPerceptPipeline) is used instead of loading one.

    With a model, samples go through the one runner (`genpercept_cli.runtime.runner`), batched by
    processed size `opts.batch_size` at a time (0: automatic); the scores equal batch 1's.
    `dist` (`genpercept_cli.runtime.distributed.Dist`, under torchrun): this rank scores samples rank,
    rank + world, ...; the scorer states and problems of every rank are merged, so every rank returns
    the result of the whole dataset, equal to a single-process run. `progress` must then be a
    `GlobalProgress` on every rank.
    """
    from genpercept_cli.runtime.distributed import Dist

    dist = dist or Dist()
    if (opts.checkpoint is None) == (opts.predictions is None) and pipe is None:
        raise GenPerceptError("pass either --checkpoint (run the model) or --predictions DIR (score files).")
    if opts.predictions is not None and not Path(opts.predictions).is_dir():
        found = Path(opts.predictions).exists()
        raise GenPerceptError(f"--predictions {opts.predictions} is a file; give the folder `predict` or "
                              "--save-predictions wrote." if found else
                              f"predictions folder {opts.predictions} {why_missing(Path(opts.predictions))}.")
    if opts.batch_size < 0:
        raise GenPerceptError("--batch-size must be 0 (automatic) or positive.")
    if opts.processing_res is not None:  # before the data is read and the model runs, not once per sample
        from genpercept_cli.resize import check_processing_res

        check_processing_res(opts.processing_res, "--processing-res")
    spec = None
    if opts.checkpoint is not None or pipe is not None:
        from genpercept_cli.checkpoints import resolve_checkpoint

        spec = pipe.spec if pipe is not None else resolve_checkpoint(opts.checkpoint)
    space = space_for(spec, opts.space)
    ds = get_dataset(opts.dataset, opts.data_dir, opts.limit, protocol_for(opts.dataset, space))
    if spec is not None and (spec.task not in TASKS or TASKS[spec.task].benchmark != ds.task):
        raise GenPerceptError(
            f"{opts.dataset} is a {ds.task} benchmark; checkpoint {spec.name!r} predicts {spec.task}."
        )
    if opts.multi_scale_flip and opts.predictions is not None:
        raise GenPerceptError("--multi-scale-flip changes how the model runs; it does not apply to --predictions.")
    res = ds.processing_res if opts.processing_res is None else opts.processing_res
    if opts.predictions is None and pipe is None:
        from genpercept_cli.pipeline import GenPerceptPipeline

        pipe = GenPerceptPipeline.from_checkpoint(spec, device=opts.device, dtype=opts.dtype, backend=opts.backend)
    if opts.multi_scale_flip:
        _set_multi_scale_flip(pipe, ds)
    scorer = make_scorer(ds, opts, space)
    indices = dist.shard(list(range(len(ds))))
    task_id = progress.add_task(f"eval {opts.dataset}", total=len(indices)) if progress else None
    if opts.predictions is not None:
        problems = _score_files(ds, indices, opts, scorer, progress, task_id)
    else:
        problems = _score_model(ds, indices, opts, pipe, res, scorer, progress, task_id)
    if dist.active:  # every rank's states and problems, merged in dataset order
        gathered = dist.gather((scorer.state(), problems))
        scorer.merge([state for state, _ in gathered])
        problems = sorted(problem for _, part in gathered for problem in part)
    problems = [message for _index, message in problems]
    rows = [{k: v for k, v in row.items() if k not in ("index", "name")} for row in scorer.rows()]
    if not rows:
        first = problems[0] if problems else "none"
        raise GenPerceptError(f"no sample of {opts.dataset} could be scored ({len(problems)} problems; {first}).")
    metrics = scorer.compute()
    protocol = _protocol(ds, opts, space, res, spec, pipe)
    section, key = PAPER_KEYS.get(opts.dataset, (None, None))
    made_by = spec
    if spec is None and opts.predicted_by is not None:  # saved predictions: the row of the model that made them
        from genpercept_cli.checkpoints import resolve_checkpoint

        made_by = resolve_checkpoint(opts.predicted_by)
    label, paper, paper_note = paper_row(section, key, made_by, res, "ms_flip" if opts.multi_scale_flip else "single")
    return EvalResult(
        dataset=opts.dataset, checkpoint=spec.name if spec else None, n_images=len(rows), metrics=metrics,
        protocol=protocol, rows=rows, problems=problems,
        subsets=scorer.subsets() if isinstance(scorer, DISScorer) else {}, paper=paper, paper_label=label,
        paper_note=paper_note,
    )


_NO_VALID_GT = "the ground truth has no valid pixel, so there is nothing to score"


def _score_files(ds: EvalDataset, indices: list[int], opts: EvalOptions, scorer, progress,
                 task_id) -> list[tuple[int, str]]:
    """Score the prediction files of samples `indices`; returns (index, problem) in dataset order."""
    problems = []
    for index, (sample, unreadable) in zip(indices, _prefetch(ds, indices)):
        if unreadable is not None:
            problems.append((index, unreadable))
            problem = None
        elif ds.task in ("depth", "normal") and not sample.valid.any():
            problem = _NO_VALID_GT
        else:
            pred, problem = _prediction_file(sample, ds, Path(opts.predictions), _saved_kind(ds))
            if problem is None:
                problem = _score(scorer, index, sample, pred, ds.task)
        if problem is not None:
            problems.append((index, f"{sample.key}: {problem}"))
        if progress is not None:
            progress.advance(task_id)
    return problems


def _score_model(ds: EvalDataset, indices: list[int], opts: EvalOptions, pipe, res: int, scorer, progress,
                 task_id) -> list[tuple[int, str]]:
    """Run the model on samples `indices` through the runner and score them; returns (index, problem)
    in dataset order."""
    from genpercept_cli.predict import auto_batch_size
    from genpercept_cli.runtime.runner import Job, Loaded, SkipJob, run

    keys = ds.keys()

    def load(job: Job) -> Loaded:
        sample = ds[job.index]
        if ds.task in ("depth", "normal") and not sample.valid.any():
            raise SkipJob(f"{sample.key}: {_NO_VALID_GT}")  # the model is not run
        try:
            size = pipe.processed_size(*sample.image.shape[:2], res)
        except GenPerceptError as exc:
            raise SkipJob(f"{sample.key}: prediction failed ({exc})") from None
        return Loaded(job, pipe.model_input(sample.image, size), sample.image.shape[:2], sample)

    def score(loaded: Loaded, pred) -> str | None:
        sample = loaded.context
        if opts.save_predictions is not None:
            from genpercept_cli.outputs import write_prediction

            write_prediction(pred, pipe.task, Path(opts.save_predictions) / prediction_stem(sample.key), ("npy",),
                             kind=pipe.spec.kind, labels=pipe.spec.labels)
        problem = check_prediction(pred, sample, ds.task, _saved_kind(ds))
        problem = f"prediction {problem}" if problem else _score(scorer, loaded.job.index, sample, pred, ds.task)
        return None if problem is None else f"{sample.key}: {problem}"

    batch_size = opts.batch_size or auto_batch_size(pipe, res)
    report = run(pipe, [Job(i) for i in indices], load, score, batch_size=batch_size, workers=1,
                 sink_workers=1, describe=lambda job: f"{keys[job.index]}: prediction failed", progress=progress,
                 task_id=task_id)
    return [(job.index, message) for job, message in report.failed]


def _score(scorer, index: int, sample: Sample, pred: np.ndarray, task: str) -> str | None:
    """Add one prediction to `scorer`; returns why it could not be scored, or None."""
    try:
        scorer.update(index, sample, pred)
    except ValueError as exc:  # e.g. no positive prediction to fit in disparity space
        return f"prediction cannot be scored ({exc})"
    return None


def _saved_kind(ds: EvalDataset) -> str | None:
    """What predictions hold for `check_prediction`: metric depth (NaN allowed: no prediction) under the
    metric protocol, which fills NaN; otherwise the task's default."""
    return "metric_depth" if ds.protocol == "metric" else None


def _prediction_file(sample: Sample, ds: EvalDataset, pred_dir: Path, kind: str | None = None):
    """(prediction, None) or (None, why it cannot be scored) for a prediction file on disk."""
    try:
        pred = load_prediction(pred_dir, sample.key, ds.task)
    except NotNumericPrediction as exc:
        return None, f"prediction {exc}"
    except FileNotFoundError as exc:
        return None, f"prediction is missing ({exc})"
    except (OSError, ValueError) as exc:
        return None, f"prediction cannot be read ({exc})"
    problem = check_prediction(pred, sample, ds.task, kind)
    return (None, f"prediction {problem}") if problem else (pred, None)


def _protocol(ds: EvalDataset, opts: EvalOptions, space: str, res: int, spec, pipe) -> dict:
    protocol: dict = {"task": ds.task, "processing_res": res, "source": "predictions" if opts.predictions else "model"}
    if ds.task == "depth":
        protocol.update(alignment="none" if space == "metric" else "least_squares", space=space)
        if ds.protocol != "marigold":  # Marigold's is the default; reports of it keep their historical form
            protocol.update(protocol=_DEPTH_PROTOCOLS[ds.protocol])
        protocol.update(min_depth=ds.min_depth, max_depth=ds.max_depth, pred_clip=ds.pred_clip,
                        align_max_samples=ds.align_max_samples,
                        align_subsample=opts.eth3d_subsample if ds.align_max_samples else None)
    elif ds.task == "normal":
        protocol.update(aggregation=opts.normal_mode, frame="x right, y up, z toward camera",
                        prediction_flip=opts.normal_flip or None)
    elif ds.task == "dis":
        protocol.update(gt_threshold="> 128", f_beta2=0.3, thresholds=256, hce=opts.with_hce,
                        hce_poly=f"approxPolyDP {opts.hce_variant} distance")
    elif ds.task == "matting":
        protocol.update(region="whole image", sad_scale="/1000", conn="step 0.1, 4-connectivity, /1000")
    elif ds.task == "semseg":
        protocol.update(labels=ds.labels, classes=ds.num_classes, miou=opts.seg_convention, ignore_index=255,
                        inference=_seg_inference(pipe, opts))
    else:
        protocol.update(decode=f"nearest NYU40 colour ({opts.seg_metric})", miou=opts.seg_convention)
    if spec is not None:
        protocol.update(checkpoint_task=spec.task)
    if pipe is not None and opts.predictions is None:
        protocol.update(device=str(pipe.device), dtype=str(pipe.dtype).removeprefix("torch."))
    return protocol


def _seg_inference(pipe, opts: EvalOptions) -> str:
    """The model's segmentation test-time setting, in words ("single-scale", "multi-scale x1/1.125/... + flip")."""
    if opts.predictions is not None:
        return "as the saved predictions were made"
    tta = getattr(pipe.model, "tta", None) if pipe is not None else None
    if tta is None or not hasattr(tta, "scales"):
        return "single-scale" if not opts.multi_scale_flip else "multi-scale + flip"
    scales = "single-scale" if tuple(tta.scales) == (1.0,) else "multi-scale x" + "/".join(map(str, tta.scales))
    return scales + (" + flip" if tta.flip else "")


_DEPTH_PROTOCOLS = {
    "marigold": "marigold",
    "metric": "metric (GLPDepth/Meta Prompts: NaN -> min_depth, inf -> max_depth, no clip; KITTI Garg crop)",
}


def paper_results() -> dict:
    return tomllib.loads(resources.files("benchmarks").joinpath("paper_results.toml").read_text(encoding="utf-8"))


def paper_row(section: str | None, key: str | None, spec, res: int,
              tta: str = "single") -> tuple[str | None, dict | None, str | None]:
    """The paper's numbers beside this run: the row of the released model `spec` loads (by identity,
    `checkpoints.released_as`: a hub id of a registry entry is that entry, a local folder or fine-tune has no
    row), at this processing resolution where rows differ by it; for saved predictions of no named model
    (`spec` None) the first row of the benchmark. tta: "single" or "ms_flip"; a row with a `tta` entry only
    stands for runs with that inference. Returns (label, metrics, None), or (None, None, why there is no row)."""
    from genpercept_cli.checkpoints import released_as

    if section is None:
        return None, None, "the papers report no result on this benchmark"
    rows = paper_results().get(section, {})
    candidates = [r for r in rows.values() if key in r and "checkpoint" in r and r.get("tta", "single") == tta]
    same_res = [r for r in candidates if r.get("processing_res", 768) == res] or candidates
    if spec is None:
        chosen = same_res[0] if same_res else None
        return (chosen["label"], dict(chosen[key]), None) if chosen else (None, None, "no row for this benchmark")
    release = released_as(spec)
    if release is None:
        return None, None, ("a local checkpoint, not a released model" if spec.is_local
                            else f"{spec.name} is not a released model of the registry")
    chosen = next((r for r in same_res if r["checkpoint"] == release), None)
    if chosen is None:
        inference = " with multi-scale + flip" if tta == "ms_flip" else ""
        return None, None, f"the papers report no result of {release}{inference} on this benchmark"
    return chosen["label"], dict(chosen[key]), None


def write_outputs(result: EvalResult, json_path: Path | None, csv_path: Path | None) -> None:
    """results JSON (atomic) and the per-image CSV."""
    try:
        _write_outputs(result, json_path, csv_path)
    except OSError as exc:
        raise GenPerceptError(f"cannot write the results ({exc.strerror}: {exc.filename}).") from None


def _write_outputs(result: EvalResult, json_path: Path | None, csv_path: Path | None) -> None:
    from genpercept_cli.outputs import atomic_write

    if json_path is not None:
        text = json.dumps(result.to_json(), indent=2)
        atomic_write(Path(json_path), lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
    if csv_path is not None and result.rows:
        fields = list(dict.fromkeys(k for row in result.rows for k in row))

        def write_csv(tmp):
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, fieldnames=fields)
                writer.writeheader()
                writer.writerows(result.rows)

        atomic_write(Path(csv_path), write_csv)
