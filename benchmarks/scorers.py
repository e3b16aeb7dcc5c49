"""Task scorers of `genpercept eval`: one per task, each mergeable across workers (SPEC §6).

Every scorer has the same interface:

    update(index, sample, prediction) -> row   the image's metrics, with "index" (its position in the
                                               dataset) and "key" (sample.key)
    state() -> dict                            everything the dataset metrics need, as plain Python /
                                               NumPy values (picklable: all_gather_object can send it)
    merge(states) -> None                      replace this scorer's contents by the union of `states`
    compute() -> dict                          the dataset metrics
    rows() -> list[dict]                       the per-image rows, in index order

`merge` replaces rather than adds, so a worker passes every gathered state, its own included:

    scorer.merge(gathered)                     # gathered = [state of worker 0, worker 1, ...]

The parts must be disjoint (a repeated index raises ValueError) and made with the same settings. Every
per-image contribution is kept under its index and reduced in index order, so after merging, compute()
returns the same floats as one scorer that saw every sample in dataset order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .datasets import EvalDataset, Sample
from .metrics.merge import check_new_index, check_settings, union_by_index


class Scorer:
    """Per-image rows keyed by dataset index, and the state/merge protocol; subclasses score one task.

    A subclass implements `_score(index, sample, prediction) -> metrics` (raising ValueError before it
    changes anything when the sample cannot be scored) and `compute()`, and overrides `_task_state` /
    `_merge_task_states` when it accumulates more than its rows.
    """

    task = ""

    def __init__(self, **settings: Any):
        self.settings = settings  # whatever changes the numbers; states made with other settings are refused
        self._rows: dict[int, dict[str, Any]] = {}  # index -> row

    def update(self, index: int, sample: Sample, prediction: np.ndarray) -> dict[str, Any]:
        """Score one sample; returns {"index", "key", metric: value, ...}. Raises ValueError when the
        prediction cannot be scored (nothing is recorded then) or the index was already scored."""
        index = int(index)
        check_new_index(index, self._rows, f"{self.task} scorer")
        row = {"index": index, "key": sample.key, **self._score(index, sample, prediction)}
        self._rows[index] = row
        return dict(row)

    def rows(self) -> list[dict[str, Any]]:
        """The per-image rows, in dataset order."""
        return [dict(self._rows[i]) for i in sorted(self._rows)]

    def state(self) -> dict[str, Any]:
        """{"task", "settings", "rows": {index: row}, ...task data}: plain values, picklable."""
        rows = {i: dict(row) for i, row in self._rows.items()}
        return {"task": self.task, "settings": dict(self.settings), "rows": rows, **self._task_state()}

    def merge(self, states: list[dict[str, Any]]) -> None:
        """Replace this scorer's contents by the union of `states` (see the module docstring)."""
        for state in states:
            if state["task"] != self.task:
                raise ValueError(f"cannot merge a {state['task']} scorer state into a {self.task} scorer")
        check_settings(states, self.settings, f"{self.task} scorer")
        self._rows = union_by_index((s["rows"] for s in states), f"{self.task} scorer")
        self._merge_task_states(states)

    def compute(self) -> dict[str, Any]:
        raise NotImplementedError

    def _score(self, index: int, sample: Sample, prediction: np.ndarray) -> dict[str, Any]:
        raise NotImplementedError

    def _task_state(self) -> dict[str, Any]:
        return {}

    def _merge_task_states(self, states: list[dict[str, Any]]) -> None:
        pass


class DepthScorer(Scorer):
    """Per-image alignment (SPEC §6.1) and metrics; the dataset score is the mean over images.

    space: "depth" or "disparity" (affine fit in that space) or "metric" (no fit, the prediction is depth
    in metres); subsample: the ETH3D fit subsample ("reference" or "uniform"). The dataset's protocol
    "metric" (`datasets.depth`) scores metric predictions as they are: NaN -> min_depth, inf -> max_depth,
    no clip to the depth range.
    """

    task = "depth"

    def __init__(self, ds: EvalDataset, space: str, subsample: str):
        super().__init__(space=space, subsample=subsample, min_depth=ds.min_depth, max_depth=ds.max_depth,
                         align_max_samples=ds.align_max_samples, pred_clip=ds.pred_clip,
                         protocol=getattr(ds, "protocol", "marigold"))

    def _score(self, index: int, sample: Sample, prediction: np.ndarray) -> dict[str, float]:
        from .metrics.depth import align_depth, depth_metrics, fill_non_finite

        s = self.settings
        if s["protocol"] == "metric" and s["space"] == "metric":
            depth = fill_non_finite(prediction, s["min_depth"], s["max_depth"])
            aligned = align_depth(depth, sample.gt, sample.valid, "metric")
        else:
            aligned = align_depth(prediction, sample.gt, sample.valid, s["space"], s["min_depth"], s["max_depth"],
                                  s["align_max_samples"], s["pred_clip"], s["subsample"])
        return depth_metrics(aligned, sample.gt, sample.valid)

    def compute(self) -> dict[str, float]:
        from .metrics.depth import DEPTH_METRIC_KEYS

        rows = self.rows()
        return {k: float(np.mean([r[k] for r in rows])) for k in DEPTH_METRIC_KEYS}


class NormalScorer(Scorer):
    """Angular errors after the prediction's axis flips; pooled over all pixels (DSINE) or per image."""

    task = "normal"

    def __init__(self, mode: str, flip: str):
        from .metrics.normal import NormalAccumulator

        super().__init__(mode=mode, flip=flip)
        self.acc = NormalAccumulator(mode)

    def _score(self, index: int, sample: Sample, prediction: np.ndarray) -> dict[str, float]:
        from .metrics.normal import angular_error_deg, apply_axis_flips, normal_metrics

        errors = angular_error_deg(apply_axis_flips(prediction, self.settings["flip"]), sample.gt, sample.valid)
        self.acc.update(errors, index=index)
        return normal_metrics(errors) if errors.size else {}

    def _task_state(self) -> dict[str, Any]:
        return {"accumulator": self.acc.state()}  # pooled: the float32 errors of every pixel, for the median

    def _merge_task_states(self, states: list[dict[str, Any]]) -> None:
        self.acc.merge([s["accumulator"] for s in states])

    def compute(self) -> dict[str, float]:
        return self.acc.compute()


class DISScorer(Scorer):
    """Per subset (DIS-TE1..4 in `dis-te`), then the overall score is the mean of the subsets."""

    task = "dis"

    def __init__(self, with_hce: bool, variant: str):
        super().__init__(with_hce=with_hce, variant=variant)
        self.accs: dict[str, Any] = {}  # subset -> DISAccumulator, in order of the subset's first image

    def _score(self, index: int, sample: Sample, prediction: np.ndarray) -> dict[str, Any]:
        from .metrics.dis import DISAccumulator

        subset = sample.extra.get("subset", "all")
        acc = self.accs.get(subset) or DISAccumulator(with_hce=self.settings["with_hce"])
        # quantised to uint8 like an 8-bit PNG
        row = acc.update(prediction, sample.gt, hce_variant=self.settings["variant"], index=index)
        self.accs.setdefault(subset, acc)  # only once it holds an image: compute() refuses an empty subset
        return row

    def _task_state(self) -> dict[str, Any]:
        return {"subsets": {name: acc.state() for name, acc in self.accs.items()}}

    def _merge_task_states(self, states: list[dict[str, Any]]) -> None:
        from .metrics.dis import DISAccumulator

        by_subset: dict[str, list[dict]] = {}
        for state in states:
            for name, acc_state in state["subsets"].items():
                by_subset.setdefault(name, []).append(acc_state)
        # the unsplit run meets the subsets in the order of their first image: keep that order for the mean
        first_index = {name: min(min(s["images"], default=np.inf) for s in parts) for name, parts in by_subset.items()}
        self.accs = {}
        for name in sorted(by_subset, key=first_index.__getitem__):
            self.accs[name] = DISAccumulator(with_hce=self.settings["with_hce"])
            self.accs[name].merge(by_subset[name])

    def subsets(self) -> dict:
        return {name: acc.compute() for name, acc in self.accs.items()} if len(self.accs) > 1 else {}

    def compute(self) -> dict:
        scores = [acc.compute() for acc in self.accs.values()]
        return {k: (None if scores[0][k] is None else float(np.mean([s[k] for s in scores]))) for k in scores[0]}


class MattingScorer(Scorer):
    """Whole-image matting metrics (plus trimap variants when the sample has a trimap), mean over images."""

    task = "matting"

    def __init__(self):
        from .metrics.matting import MattingAccumulator

        super().__init__()
        self.acc = MattingAccumulator()

    def _score(self, index: int, sample: Sample, prediction: np.ndarray) -> dict[str, float]:
        return self.acc.update(prediction.astype(np.float64), sample.gt, sample.extra.get("trimap"), index=index)

    def _task_state(self) -> dict[str, Any]:
        return {"accumulator": self.acc.state()}

    def _merge_task_states(self, states: list[dict[str, Any]]) -> None:
        self.acc.merge([s["accumulator"] for s in states])

    def compute(self) -> dict[str, float]:
        return self.acc.compute()


class SegScorer(Scorer):
    """NYU40 ids (decoded from colours by nearest palette entry) into a dataset-wide confusion matrix."""

    task = "seg"

    def __init__(self, convention: str, metric: str):
        from .metrics.seg import SegAccumulator

        super().__init__(convention=convention, metric=metric)
        self.acc = SegAccumulator(convention=convention)

    def _ids(self, prediction: np.ndarray) -> np.ndarray:
        from .metrics.seg import decode_seg_prediction

        return prediction if prediction.ndim == 2 else decode_seg_prediction(prediction, self.settings["metric"])

    def _score(self, index: int, sample: Sample, prediction: np.ndarray) -> dict[str, float]:
        from .metrics.seg import iou_per_class

        matrix = self.acc.update(self._ids(prediction), sample.gt)
        labelled = matrix.sum()
        iou = iou_per_class(matrix, self.acc.convention, self.acc.unlabeled_id)  # NaN at unlabeled: not averaged
        return {"miou": 100.0 * float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
                "pixel_acc": 100.0 * float(np.trace(matrix)) / labelled if labelled else float("nan")}

    def _task_state(self) -> dict[str, Any]:
        return {"accumulator": self.acc.state()}

    def _merge_task_states(self, states: list[dict[str, Any]]) -> None:
        self.acc.merge([s["accumulator"] for s in states])

    def compute(self) -> dict:
        return self.acc.compute()


class SemsegScorer(SegScorer):
    """Class ids of a label set into a dataset-wide confusion matrix (mmseg's mIoU, aAcc, mAcc)."""

    task = "semseg"

    def __init__(self, ds: EvalDataset, convention: str):
        from genpercept_cli.palette import get_label_set

        from .metrics.seg import SegAccumulator

        label_set = get_label_set(ds.labels)
        Scorer.__init__(self, convention=convention, labels=label_set.name)
        self.acc = SegAccumulator(label_set.num_classes, convention=convention, unlabeled_id=None,
                                  class_names=label_set.classes)

    def _ids(self, prediction: np.ndarray) -> np.ndarray:
        return np.rint(prediction).astype(np.int64)

def make_scorer(ds: EvalDataset, opts, space: str) -> Scorer:
    """The scorer of `ds.task` with the options of `opts` (an `evaluate.EvalOptions`); `space` is the
    resolved depth space."""
    if ds.task == "depth":
        return DepthScorer(ds, space, opts.eth3d_subsample)
    if ds.task == "normal":
        return NormalScorer(opts.normal_mode, opts.normal_flip)
    if ds.task == "dis":
        return DISScorer(opts.with_hce, opts.hce_variant)
    if ds.task == "matting":
        return MattingScorer()
    if ds.task == "semseg":
        return SemsegScorer(ds, opts.seg_convention)
    return SegScorer(opts.seg_convention, opts.seg_metric)
