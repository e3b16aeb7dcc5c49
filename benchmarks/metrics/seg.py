"""Semantic-segmentation metrics (SPEC §6.5, §9): dataset-wide confusion matrix, mIoU, pixel accuracy, mAcc.

Two label conventions, set by `unlabeled_id`:
- NYU40 (`unlabeled_id=0`, the default), described below.
- Label sets without an "unlabeled" class (ADE20K's 150 after reduce_zero_label, Cityscapes' 19 train ids;
  `unlabeled_id=None`): every id 0 .. num_classes - 1 is a class; GT 255 (and negative ids) are ignored.
  mmseg's metrics: per class IoU = total intersection / total union over the dataset, mIoU their mean
  over classes with a non-empty union, aAcc = correct / labelled pixels, mAcc the mean per-class recall
  over classes present in the GT.

NYU40 label handling:
- GT: ignore_index (255), 0 (NYU40 "unlabeled") and negative ids (Hypersim's raw -1) are not evaluated;
  every other GT id must be in 1 .. num_classes - 1.
- Prediction: ids in 0 .. num_classes - 1. A predicted 0 on a labelled pixel is a wrong answer: it sits
  in column 0 of the matrix, so it adds to that GT class's false negatives and lowers pixel accuracy.
- Class 0 is never an evaluated class: it has no IoU and is left out of mIoU and per_class_iou.
"""

import numpy as np

from benchmarks.metrics.merge import check_settings
from genpercept_cli.palette import NYU40_CLASSES, colors_to_labels

SEG_CONVENTIONS = ("mmseg", "detectron2")
UNLABELED_ID = 0


def decode_seg_prediction(rgb: np.ndarray, metric: str = "l1") -> np.ndarray:
    """NYU40 colour map [H, W, 3] (uint8, or float in [0, 1]) -> uint8 [H, W] ids by nearest colour."""
    return colors_to_labels(rgb, metric=metric)


def _labelled_mask(gt: np.ndarray, ignore_index: int, unlabeled_id: int | None) -> np.ndarray:
    """bool mask of GT pixels that are evaluated (not ignore_index, not unlabeled, not negative)."""
    first = 0 if unlabeled_id is None else unlabeled_id + 1
    return (gt != ignore_index) & (gt >= first)


def confusion_matrix(
    pred_ids: np.ndarray, gt_ids: np.ndarray, num_classes: int = 41, ignore_index: int = 255,
    unlabeled_id: int | None = UNLABELED_ID,
) -> np.ndarray:
    """Confusion counts of one image over labelled pixels.

    pred_ids, gt_ids: integer [H, W] class ids (see the module docstring for what is ignored).
    Returns int64 [num_classes, num_classes], rows = GT id, columns = predicted id; row `unlabeled_id`
    (NYU40: 0) is all zero.
    """
    pred, gt = np.asarray(pred_ids), np.asarray(gt_ids)
    if pred.shape != gt.shape:
        raise ValueError(
            f"prediction and ground truth must have the same shape, got {pred.shape} and {gt.shape}"
        )
    labelled = _labelled_mask(gt, ignore_index, unlabeled_id)
    g = gt[labelled].astype(np.int64)
    p = pred[labelled].astype(np.int64)
    if g.size and g.max() >= num_classes:
        raise ValueError(f"ground-truth id {g.max()} is outside 0..{num_classes - 1} and not {ignore_index}")
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"predicted ids must lie in 0..{num_classes - 1}, got {p.min()}..{p.max()}")
    counts = np.bincount(g * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_per_class(matrix: np.ndarray, convention: str = "mmseg", unlabeled_id: int | None = UNLABELED_ID) -> np.ndarray:
    """IoU = TP / (GT + pred - TP) per class of a confusion matrix (rows GT, columns prediction).

    convention "mmseg": NaN where the union is empty (class neither in GT nor predicted on labelled
    pixels); a class predicted but absent from GT scores 0.
    convention "detectron2": NaN where the class has no GT pixel, even if it was predicted.
    Returns float64 [C] fractions in [0, 1]; entry `unlabeled_id` (NYU40: 0) is always NaN.
    """
    if convention not in SEG_CONVENTIONS:
        raise ValueError(f"convention must be one of {SEG_CONVENTIONS}, got {convention!r}")
    matrix = matrix.astype(np.float64)
    tp = np.diag(matrix)
    gt_count = matrix.sum(axis=1)
    union = gt_count + matrix.sum(axis=0) - tp
    scored = union > 0 if convention == "mmseg" else gt_count > 0
    iou = np.full(len(tp), np.nan)
    iou[scored] = tp[scored] / union[scored]
    if unlabeled_id is not None:
        iou[unlabeled_id] = np.nan
    return iou


def accuracy_per_class(matrix: np.ndarray) -> np.ndarray:
    """Recall TP / GT pixels per class (mmseg's per-class "Acc"); NaN for classes without GT pixels."""
    matrix = matrix.astype(np.float64)
    gt_count = matrix.sum(axis=1)
    return np.divide(np.diag(matrix), gt_count, out=np.full(len(matrix), np.nan), where=gt_count > 0)


class SegAccumulator:
    """Dataset-wide confusion matrix; mIoU and pixel accuracy over all images together.

    compute() returns {"miou": %, "pixel_acc": %, "per_class_iou": {name: % or NaN}}, percentages in
    0..100, plus "macc" (mean per-class accuracy, mmseg's mAcc) for label sets without an unlabeled id.
    mIoU is the mean over the classes (all but `unlabeled_id`) whose IoU is not NaN under `convention`
    (see `iou_per_class`); pixel_acc (mmseg's aAcc) = correct labelled pixels / labelled pixels. Class
    names: `class_names`, else NYU40_CLASSES when num_classes is 41, else "class_<id>"; the unlabeled class
    is not listed.
    The matrix holds integer counts, so `merge` of the states of accumulators that saw disjoint images is
    exactly the matrix of one accumulator that saw them all.
    """

    def __init__(self, num_classes: int = 41, ignore_index: int = 255, convention: str = "mmseg",
                 unlabeled_id: int | None = UNLABELED_ID, class_names: tuple[str, ...] | None = None):
        if convention not in SEG_CONVENTIONS:
            raise ValueError(f"convention must be one of {SEG_CONVENTIONS}, got {convention!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.convention = convention
        self.unlabeled_id = unlabeled_id
        self.class_names = class_names
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred_ids: np.ndarray, gt_ids: np.ndarray) -> np.ndarray:
        """Add one image: integer [H, W] predicted and GT ids. Returns the image's int64 [C, C] matrix."""
        matrix = confusion_matrix(pred_ids, gt_ids, self.num_classes, self.ignore_index, self.unlabeled_id)
        self.matrix += matrix
        return matrix

    def _settings(self) -> dict:
        settings = {"num_classes": self.num_classes, "ignore_index": self.ignore_index, "convention": self.convention}
        if self.unlabeled_id != UNLABELED_ID:  # NYU40 states keep their historical form
            settings["unlabeled_id"] = self.unlabeled_id
        return settings

    def state(self) -> dict:
        """{"settings": {...}, "matrix": int64 [C, C]}: picklable, for `merge`."""
        return {"settings": self._settings(), "matrix": self.matrix.copy()}

    def merge(self, states: list[dict]) -> None:
        """Replace the matrix by the sum of the `states`' matrices (from `state()` of accumulators with the
        same settings that saw disjoint images; integer sums, so exact in any order)."""
        check_settings(states, self._settings(), "segmentation accumulator")
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        for state in states:
            self.matrix += state["matrix"]

    def _class_names(self) -> tuple[str, ...]:
        if self.class_names is not None:
            return self.class_names
        if self.num_classes == len(NYU40_CLASSES):
            return NYU40_CLASSES
        return tuple(f"class_{i}" for i in range(self.num_classes))

    def scored_classes(self) -> list[int]:
        """The class ids that have an IoU: all but the unlabeled one."""
        return [c for c in range(self.num_classes) if c != self.unlabeled_id]

    def compute(self) -> dict:
        labelled = int(self.matrix.sum())
        if labelled == 0:
            raise ValueError("cannot compute segmentation metrics: no labelled ground-truth pixel was seen")
        classes = self.scored_classes()
        iou = iou_per_class(self.matrix, self.convention, self.unlabeled_id)
        # never all-NaN here: a labelled pixel gives its GT class a non-empty union under both conventions
        miou = 100.0 * float(np.nanmean(iou[classes]))
        correct = int(np.trace(self.matrix))  # the unlabeled row is empty, so that class adds nothing
        names = self._class_names()
        per_class = {names[c]: 100.0 * float(iou[c]) for c in classes}
        result = {"miou": miou, "pixel_acc": 100.0 * correct / labelled}
        if self.unlabeled_id is None:
            result["macc"] = 100.0 * float(np.nanmean(accuracy_per_class(self.matrix)))
        return {**result, "per_class_iou": per_class}
