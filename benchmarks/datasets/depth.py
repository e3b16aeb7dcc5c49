"""Zero-shot depth benchmarks in the Marigold evaluation archives (SPEC §6.1).

Archives, relative to the data root, as published at MARIGOLD_EVAL_URL (read in place; the same path
without ".tar" may be an extracted folder; an archive extracted straight into its parent folder, as
GenPercept's configs expect, e.g. `<root>/nyuv2/test/...`, also works):

    nyuv2/nyu_labeled_extracted.tar       kitti/kitti_eigen_split_test.tar     eth3d/eth3d.tar
    scannet/scannet_val_sampled_800_1.tar diode/diode_val.tar

Split lines name members relative to the archive root; the first column is the RGB image and the
sample key.

Protocols: "marigold" (the default; affine-invariant models, SPEC §6.1) and, for NYUv2 and KITTI,
"metric": the metric-depth protocol of GLPDepth / Meta Prompts (utils_depth/metrics.py there), chosen
for metric-depth models. It scores GT in (1e-3, max_depth) (NYU 10 m with the Eigen crop rows 45:471,
cols 41:601, the same as Marigold's; KITTI 80 m with the Garg crop instead of the Eigen mask, on the
352x1216 KB crop), and predictions as they are: NaN -> min_depth, inf -> max_depth, no clip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genpercept_cli.errors import DataError

from .base import (
    Archive,
    EvalDataset,
    Sample,
    check_limit,
    decode_npy,
    decode_png16,
    decode_rgb,
    open_archive,
    read_split,
)

MARIGOLD_EVAL_URL = "https://share.phys.ethz.ch/~pf/bingkedata/marigold/evaluation_dataset/"


def range_mask(depth: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Strict lo < d < hi, compared in float32 like the reference (float32 tensors vs Python floats)."""
    return (depth > np.float32(lo)) & (depth < np.float32(hi))


class DepthArchiveDataset(EvalDataset):
    """Base for the tar-backed depth splits: split file + archive path + GT decoder.

    protocol: one of `protocols` (module docstring); "metric" sets the attributes it changes."""

    task = "depth"
    archive: str = ""  # path under the data root
    split: str = ""  # path under benchmarks/splits
    protocols: tuple[str, ...] = ("marigold",)
    metric_settings: dict = {}  # the attributes the metric protocol sets

    def __init__(self, data_dir: str | Path, limit: int | None = None, split_file: str | Path | None = None,
                 protocol: str = "marigold"):
        super().__init__(data_dir, check_limit(limit))
        if protocol not in self.protocols:
            raise DataError(f"{self.name} has no {protocol!r} protocol; it has: {', '.join(self.protocols)}.")
        self.protocol = protocol
        for key, value in (self.metric_settings if protocol == "metric" else {}).items():
            setattr(self, key, value)
        rows = [r for r in read_split(self.split, split_file) if self._keep(r)]
        self._entries = rows
        self._keys = [r[0] for r in rows]
        probe = self._spellings(rows[0][0]) if rows else None
        self._archive: Archive = open_archive(
            self.data_dir / self.archive, f"The {self.name} archive", self.source, probe=probe
        )
        self._apply_limit()

    def _keep(self, row: list[str]) -> bool:
        return True

    def _spellings(self, rel: str) -> tuple[str, ...]:
        """Member paths that may hold the split line's `rel`, the split list's own spelling first."""
        return (rel,)

    def _read(self, rel: str) -> bytes:
        """The member named by a split line, under whichever of its spellings the archive has."""
        found = next((c for c in self._spellings(rel) if self._archive.exists(c)), rel)
        return self._archive.read(found)  # a missing member is named as the split list spells it

    def _name(self, rel: str) -> str:
        return f"{rel} in {self._archive.path}"

    def _rgb(self, rel: str, match_hw: tuple[int, int] | None = None) -> np.ndarray:
        return decode_rgb(self._read(rel), self._name(rel), match_hw)

    def _png_depth(self, rel: str, scale: float) -> np.ndarray:
        raw = decode_png16(self._read(rel), self._name(rel))
        return (raw.astype(np.float64) / scale).astype(np.float32)  # divide in float64, like the reference


class NYUv2Depth(DepthArchiveDataset):
    """NYUv2 Eigen test split, 654 images, raw (unfilled) Kinect depth.

    Split lines are `rgb depth filled`; the third column (`filled_XXXX.png`, the colourised/inpainted
    depth) is not used: Marigold evaluates on the raw depth and its valid mask (`depth_raw_linear`,
    `valid_mask_raw`), as does GenPercept.
    """

    name = "nyu"
    archive = "nyuv2/nyu_labeled_extracted.tar"
    split = "depth/nyu_test.txt"
    processing_res = 0
    min_depth, max_depth = 1e-3, 10.0
    source = f"Marigold's evaluation data at {MARIGOLD_EVAL_URL}nyuv2/"
    eigen_crop = (slice(45, 471), slice(41, 601))  # rows, cols of the 480x640 frame
    protocols = ("marigold", "metric")  # the metric protocol's range and crop on NYU equal Marigold's

    def _load(self, row: list[str]) -> Sample:
        gt = self._png_depth(row[1], 1000.0)
        image = self._rgb(row[0], gt.shape)
        eval_mask = np.zeros(gt.shape, dtype=bool)
        eval_mask[self.eigen_crop] = True
        valid = range_mask(gt, self.min_depth, self.max_depth) & eval_mask
        return Sample(key=row[0], image=image, gt=gt, valid=valid)


class KITTIDepth(DepthArchiveDataset):
    """KITTI Eigen test split: 697 lines, the 45 without GT (`None`) skipped -> 652 samples.

    RGB and GT are cropped to the KITTI benchmark size 352x1216 (bottom rows, centred columns), then
    the Eigen evaluation mask is applied on the crop. Split lines are `rgb gt focal`.
    """

    name = "kitti"
    archive = "kitti/kitti_eigen_split_test.tar"
    split = "depth/kitti_eigen_test.txt"
    processing_res = 0
    min_depth, max_depth = 1e-5, 80.0
    source = f"Marigold's evaluation data at {MARIGOLD_EVAL_URL}kitti/"
    crop_hw = (352, 1216)
    # Eigen mask as fractions of the cropped GT size (BTS convention), evaluated on 352x1216:
    # rows int(0.3324324*352)=117 : int(0.91351351*352)=321,
    # cols int(0.0359477*1216)=43 : int(0.96405229*1216)=1172
    eigen_mask = (slice(117, 321), slice(43, 1172))
    # Garg crop of the metric protocol, same convention: rows int(0.40810811*352)=143 : int(0.99189189*352)=349
    garg_mask = (slice(143, 349), slice(43, 1172))
    eval_mask = eigen_mask
    protocols = ("marigold", "metric")
    metric_settings = {"min_depth": 1e-3, "eval_mask": garg_mask}

    def _keep(self, row: list[str]) -> bool:
        return row[1] != "None"

    def kb_crop(self, array: np.ndarray, rel: str) -> np.ndarray:
        """Bottom 352 rows, centred 1216 columns: top = H - 352, left = (W - 1216) // 2."""
        height, width = array.shape[:2]
        crop_h, crop_w = self.crop_hw
        if height < crop_h or width < crop_w:
            raise DataError(
                f"{self._name(rel)} is {height}x{width}, smaller than the KITTI crop {crop_h}x{crop_w}."
            )
        top, left = height - crop_h, (width - crop_w) // 2
        return array[top : top + crop_h, left : left + crop_w]

    def _load(self, row: list[str]) -> Sample:
        gt_full = self._png_depth(row[1], 256.0)
        gt = np.ascontiguousarray(self.kb_crop(gt_full, row[1]))
        image = np.ascontiguousarray(self.kb_crop(self._rgb(row[0], gt_full.shape), row[0]))
        eval_mask = np.zeros(gt.shape, dtype=bool)
        eval_mask[self.eval_mask] = True
        valid = range_mask(gt, self.min_depth, self.max_depth) & eval_mask
        return Sample(key=row[0], image=image, gt=gt, valid=valid, extra={"focal": float(row[2])})


class ETH3DDepth(DepthArchiveDataset):
    """ETH3D high-res DSLR images, 454 samples; GT is a raw little-endian float32 buffer (no header).

    Split lines are `rgb depth` (the depth member keeps a .JPG name but holds the raw buffer).
    Non-finite depth (inf = no measurement) becomes 0.
    """

    name = "eth3d"
    archive = "eth3d/eth3d.tar"
    split = "depth/eth3d.txt"
    processing_res = 756
    min_depth, max_depth = 1e-5, float("inf")
    align_max_samples = 1024
    source = f"Marigold's evaluation data at {MARIGOLD_EVAL_URL}eth3d/"
    depth_shape = (4032, 6048)  # (H, W) of the raw buffer; fixed by the archive format

    def _load(self, row: list[str]) -> Sample:
        data = self._read(row[1])
        height, width = self.depth_shape
        if len(data) != height * width * 4:
            raise DataError(
                f"{self._name(row[1])} has {len(data)} bytes, expected a {height}x{width} float32 buffer."
            )
        gt = np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(height, width)
        gt[~np.isfinite(gt)] = 0.0
        image = self._rgb(row[0], gt.shape)
        valid = range_mask(gt, self.min_depth, self.max_depth)
        return Sample(key=row[0], image=image, gt=gt, valid=valid)


class ScanNetDepth(DepthArchiveDataset):
    """ScanNet validation, 800 frames sampled by Marigold; uint16 PNG depth in millimetres."""

    name = "scannet"
    archive = "scannet/scannet_val_sampled_800_1.tar"
    split = "depth/scannet_val_800.txt"
    processing_res = 0
    min_depth, max_depth = 1e-3, 10.0
    source = f"Marigold's evaluation data at {MARIGOLD_EVAL_URL}scannet/"

    def _load(self, row: list[str]) -> Sample:
        gt = self._png_depth(row[1], 1000.0)
        image = self._rgb(row[0], gt.shape)
        valid = range_mask(gt, self.min_depth, self.max_depth)
        return Sample(key=row[0], image=image, gt=gt, valid=valid)


def _drop_channel(array: np.ndarray) -> np.ndarray:
    """[H, W, 1] -> [H, W]; anything else unchanged."""
    return array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array


class DIODEDepth(DepthArchiveDataset):
    """DIODE validation, 771 images (325 indoors + 446 outdoors); split lines `png depth.npy mask.npy`.

    GT is float32 metres ([H, W, 1] on disk, squeezed); validity is the mask file alone. Aligned
    predictions are clipped to [0.6, 350] m (Marigold's DIODE range). Our split list spells the
    outdoor folder `outdoors/`, Marigold's list and the public archive `outdoor/`: either spelling is
    found in the archive or folder, and the sample key stays as the split list spells it.
    """

    name = "diode"
    archive = "diode/diode_val.tar"
    split = "depth/diode_val_all.txt"
    processing_res = 640
    min_depth, max_depth = 0.6, 350.0
    pred_clip = (0.6, 350.0)
    source = f"Marigold's evaluation data at {MARIGOLD_EVAL_URL}diode/"
    scenes: tuple[str, ...] = ("indoors", "outdoors")
    folder_spellings = {"outdoors": "outdoor", "outdoor": "outdoors"}

    def _keep(self, row: list[str]) -> bool:
        top = row[0].split("/", 1)[0]
        return top in self.scenes or self.folder_spellings.get(top) in self.scenes

    def _spellings(self, rel: str) -> tuple[str, ...]:
        top, slash, rest = rel.partition("/")
        other = self.folder_spellings.get(top)
        return (rel, f"{other}/{rest}") if other and slash else (rel,)

    def _load(self, row: list[str]) -> Sample:
        gt = decode_npy(self._read(row[1]), self._name(row[1])).astype(np.float32)
        mask = _drop_channel(decode_npy(self._read(row[2]), self._name(row[2])))
        gt = _drop_channel(gt)
        if gt.ndim != 2 or mask.shape != gt.shape:
            raise DataError(f"{self._name(row[1])} and its mask have shapes {gt.shape} and {mask.shape}.")
        image = self._rgb(row[0], gt.shape)
        return Sample(key=row[0], image=image, gt=gt, valid=mask.astype(bool))


class DIODEIndoorDepth(DIODEDepth):
    name = "diode-indoor"
    scenes = ("indoors",)


class DIODEOutdoorDepth(DIODEDepth):
    name = "diode-outdoor"
    scenes = ("outdoors",)
