"""Training samples: a generic paired folder, mixed sampling by ratio, flip augmentation, a resumable plan.

Sources (`make_source`): a generic paired folder, Virtual KITTI 2 and Hypersim as published
(`VKITTISource`, `HypersimSource`).
Folder layout (one label folder per task; files paired by stem):

    root/rgb/<stem>.png|jpg|...            the image
    root/depth/<stem>.npy|exr|png          depth and disparity tasks: depth in any unit, valid inside the
                                           source's depth_range (default 0 < d < 1e8, the reference's)
    root/normal/<stem>.npy|exr|png         normals in [-1, 1] (PNG: p / peak · 2 − 1), x right, y up, z out; a
                                           depth/ folder beside it, if any, blanks normals at invalid depth
    root/mask/<stem>.png|npy               dis: foreground in [0, 1] (PNG / 255); DIS5K-TR's im/ + gt/ too
    root/alpha/<stem>.png|npy              matting: alpha in [0, 1]; P3M-10k's blurred_image/ + mask/ too
    root/seg/<stem>.png|npy                seg: NYU40 colour map (RGB PNG) or class ids (1-channel)

Every sample is resized to its source's size (`data.size` unless the source sets its own; image: the tool's
one uint8 resize; labels: nearest, after normalisation, so the valid mask stays exact). What each step draws
is a function of (seed, step) and the per-source positions only (`BatchPlan`), so a resumed run and a run on
N processes see the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from ..images import IMAGE_SUFFIXES, read_exr_channels, read_rgb
from ..resize import model_input
from . import targets

# Folder names tried in order: ours first, then the published layouts DIS5K-TR (im/ + gt/) and P3M-10k train
# (blurred_image/ + mask/, where mask holds the alpha matte), so those unpack as folder sources unchanged.
IMAGE_FOLDERS = ("rgb", "im", "blurred_image")
LABEL_FOLDERS = {"depth": ("depth",), "disparity": ("depth",), "normal": ("normal",), "dis": ("mask", "gt"),
                 "matting": ("alpha", "mask"), "seg": ("seg",)}
LABEL_SUFFIXES = (".npy", ".exr", ".png")


def _one_of(names: tuple[str, ...]) -> str:
    """("rgb", "im", "blurred_image") -> "rgb/, im/ or blurred_image/"."""
    folders = [f"{n}/" for n in names]
    return folders[0] if len(folders) == 1 else f"{', '.join(folders[:-1])} or {folders[-1]}"


@dataclass
class Sample:
    rgb: torch.Tensor  # float32 [3, H, W] in [-1, 1]
    target: torch.Tensor  # float32 [3, H, W] in [-1, 1]
    mask: torch.Tensor  # bool [1, H, W], valid pixels


class FolderSource:
    """A paired folder (module docstring) for one task; refuses a folder with unpaired or no images."""

    DEPTH_RANGE = (0.0, 1e8)  # the reference's base dataset: any positive depth

    def __init__(self, root: str | Path, task: str, size: tuple[int, int], quantile: float = 0.02,
                 depth_range: tuple[float, float] | None = None, normal_mask: str = "nonzero"):
        self.root, self.task, self.size, self.quantile = Path(root), task, tuple(size), quantile
        self.depth_range, self.normal_mask = tuple(depth_range or self.DEPTH_RANGE), normal_mask
        rgb_dir, label_dir = self._folder(IMAGE_FOLDERS, "image"), self._folder(LABEL_FOLDERS[task], "label")
        self.images = sorted(p for p in rgb_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.images:
            raise DataError(f"{rgb_dir} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
        self.labels = [self._label_path(label_dir, p.stem) for p in self.images]
        # normals with the release's mask: the depth beside them (if any) blanks those at invalid depth
        depth_dir = self.root / "depth"
        blanking = task == "normal" and normal_mask == "nonzero" and depth_dir.is_dir()
        self.depths = [self._label_path(depth_dir, p.stem) for p in self.images] if blanking else []

    def _folder(self, names: tuple[str, ...], kind: str) -> Path:
        """The first of root/`names` that is a folder; `kind` ("image" or "label") names it when none is."""
        found = next((self.root / n for n in names if (self.root / n).is_dir()), None)
        if found is None:
            raise DataError(f"{self.root} has no {kind} folder: a {self.task} training folder holds its images in "
                            f"{_one_of(IMAGE_FOLDERS)} and its labels in {_one_of(LABEL_FOLDERS[self.task])}.")
        return found

    @staticmethod
    def _label_path(folder: Path, stem: str) -> Path:
        for suffix in LABEL_SUFFIXES:
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
        raise DataError(f"{folder / stem}.* is missing: every image needs a label ({', '.join(LABEL_SUFFIXES)}).")

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> Sample:
        """Sample `index`, resized to `size`."""
        target, valid = label_target(self.task, read_label(self.labels[index]), self.quantile, self.depth_range,
                                     self.normal_mask)
        if self.depths:
            depth = read_label(self.depths[index])
            target = _blank_normals(target, depth if depth.ndim == 2 else depth[..., 0], self.depth_range,
                                    self.depths[index])
        return make_sample(read_rgb(self.images[index]), target, valid, self.size)


def make_sample(rgb: np.ndarray, target: np.ndarray, valid: np.ndarray, size: tuple[int, int]) -> Sample:
    """uint8 [H, W, 3] image + normalised label [H, W] or [H, W, 3] + valid [H, W] -> a Sample at `size`
    (image: the tool's uint8 resize; label and mask: nearest, so no invalid value leaks into a valid one).
    Invalid pixels keep the label's value there (depth: −1 or 1, `targets.normalize_depth`): the latent
    target encodes them as the reference's does."""
    image = model_input(rgb, size)[0].float() / 127.5 - 1.0  # [3,h,w]
    label = F.interpolate(targets.to_tensor(target)[None], size=size, mode="nearest")[0]
    mask = F.interpolate(torch.from_numpy(valid)[None, None].float(), size=size, mode="nearest")[0] > 0
    return Sample(image, label, mask)


class VKITTISource:
    """Virtual KITTI 2 as published: <scene>/<variation>/frames/rgb/Camera_<k>/rgb_<n>.jpg beside
    .../frames/depth/Camera_<k>/depth_<n>.png (uint16 centimetres). Depth and disparity only; valid where
    1e-5 < d < 80 m (the reference's range: farther is sky, stored as 655.35 m); both cropped to the KITTI
    benchmark window (the bottom 352 rows, the middle 1216 columns), as the reference does."""

    DEPTH_RANGE = (1e-5, 80.0)
    CROP = (352, 1216)

    def __init__(self, root: str | Path, task: str, size: tuple[int, int], quantile: float = 0.02,
                 depth_range: tuple[float, float] | None = None, normal_mask: str = "nonzero"):
        self.root, self.task, self.size, self.quantile = Path(root), task, tuple(size), quantile
        self.depth_range = tuple(depth_range or self.DEPTH_RANGE)
        if task not in ("depth", "disparity"):
            raise DataError(f"Virtual KITTI 2 trains depth or disparity, not {task}.")
        self.images = sorted(self.root.glob("*/*/frames/rgb/Camera_*/rgb_*.jpg"))
        if not self.images:
            raise DataError(f"{self.root} holds no Virtual KITTI 2 frames (<scene>/<variation>/frames/rgb/Camera_0/"
                            "rgb_00000.jpg).")
        self.labels = [self._depth_path(p) for p in self.images]

    @staticmethod
    def _depth_path(rgb: Path) -> Path:
        path = rgb.parents[2] / "depth" / rgb.parent.name / rgb.with_suffix(".png").name.replace("rgb_", "depth_")
        if not path.is_file():
            raise DataError(f"{path} is missing: every Virtual KITTI 2 frame needs its depth PNG.")
        return path

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> Sample:
        depth = read_label(self.labels[index]).astype(np.float64) / 100.0  # cm -> m
        depth = depth if depth.ndim == 2 else depth[..., 0]
        window = _benchmark_window(*depth.shape, *self.CROP)  # crop first: the quantiles are the window's
        depth = depth[window]
        valid = targets.depth_valid(depth, self.depth_range)
        target = targets.normalize_depth(depth, valid, self.quantile, disparity=self.task == "disparity")
        return make_sample(read_rgb(self.images[index])[window], target, valid, self.size)


def _benchmark_window(height: int, width: int, crop_h: int, crop_w: int) -> tuple[slice, slice]:
    """The bottom `crop_h` rows and the centred `crop_w` columns (the whole side when smaller)."""
    top, left = max(height - crop_h, 0), max((width - crop_w) // 2, 0)
    return slice(top, top + crop_h), slice(left, left + crop_w)


class HypersimSource:
    """Hypersim as published: <scene>/images/scene_cam_<k>_final_preview/frame.<n>.tonemap.jpg beside
    scene_cam_<k>_geometry_hdf5/frame.<n>.{depth_meters,normal_cam,semantic}.hdf5 (key "dataset").

    depth_meters is the distance to the optical centre: made planar with the focal length 886.81 px at
    1024 px width (scaled with the width); valid where 1e-5 < d < 65 m (the reference's range). normal_cam is
    in camera space (x right, y up, z toward the camera: our frame); normals facing away from the camera
    are negated. semantic holds NYU40 ids (-1 unlabeled). Frames without the task's file are left out.
    """

    LABELS = {"depth": "depth_meters", "disparity": "depth_meters", "normal": "normal_cam", "seg": "semantic"}
    FOCAL_AT_1024 = 886.81
    DEPTH_RANGE = (1e-5, 65.0)

    def __init__(self, root: str | Path, task: str, size: tuple[int, int], quantile: float = 0.02,
                 depth_range: tuple[float, float] | None = None, normal_mask: str = "nonzero"):
        self.root, self.task, self.size, self.quantile = Path(root), task, tuple(size), quantile
        self.depth_range, self.normal_mask = tuple(depth_range or self.DEPTH_RANGE), normal_mask
        if task not in self.LABELS:
            raise DataError(f"Hypersim trains {', '.join(self.LABELS)}, not {task}.")
        frames = sorted(self.root.glob("*/images/*_final_preview/*.tonemap.jpg"))
        pairs = [(rgb, label) for rgb in frames if (label := self._label_path(rgb)).is_file()]
        if not pairs:
            raise DataError(f"{self.root} holds no Hypersim frames with {self.LABELS[task]}.hdf5 (<scene>/images/"
                            "scene_cam_00_final_preview/frame.0000.tonemap.jpg + scene_cam_00_geometry_hdf5/).")
        self.images, self.labels = [p[0] for p in pairs], [p[1] for p in pairs]

    def _label_path(self, rgb: Path, task: str | None = None) -> Path:
        folder = rgb.parent.name.replace("_final_preview", "_geometry_hdf5")
        frame = rgb.name.replace(".tonemap.jpg", f".{self.LABELS[task or self.task]}.hdf5")
        return rgb.parent.parent / folder / frame

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> Sample:
        label = _read_hdf5(self.labels[index])
        if self.task == "seg":
            target, valid = targets.seg_to_target(label), np.ones(label.shape, bool)
        elif self.task == "normal":
            stored = targets.nonzero_normals(label) if self.normal_mask == "nonzero" else None
            target, valid = targets.unit_normals(_face_camera(label, self._focal(label.shape[1])), stored)
            depth_path = self._label_path(self.images[index], "depth")
            if self.normal_mask == "nonzero" and depth_path.is_file():  # the release: its frames' depth
                depth = _planar_depth(_read_hdf5(depth_path), self._focal(label.shape[1]))
                target = _blank_normals(target, depth, self.depth_range, depth_path)
        else:
            depth = _planar_depth(label, self._focal(label.shape[1]))
            valid = targets.depth_valid(depth, self.depth_range)
            target = targets.normalize_depth(depth, valid, self.quantile, disparity=self.task == "disparity")
        return make_sample(read_rgb(self.images[index]), target, valid, self.size)

    def _focal(self, width: int) -> float:
        return self.FOCAL_AT_1024 * width / 1024


def _read_hdf5(path: Path) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            return np.asarray(fh["dataset"][()])
    except (OSError, KeyError) as exc:
        raise DataError(f"{path} is not a Hypersim HDF5 file with a 'dataset' array ({exc}).") from None


def _rays(shape: tuple[int, int], focal: float) -> np.ndarray:
    """Camera rays through pixel centres, float64 [H, W, 3], x right, y up, z toward the camera (image at z = −f)."""
    h, w = shape
    x = np.arange(w) + 0.5 - w / 2
    y = h / 2 - (np.arange(h) + 0.5)
    return np.stack(np.broadcast_arrays(x[None, :], y[:, None], np.full((1, 1), -focal)), axis=-1).astype(np.float64)


def _planar_depth(distance: np.ndarray, focal: float) -> np.ndarray:
    """Distance to the optical centre [H, W] -> depth along the optical axis: d · f / |ray|."""
    return distance * focal / np.linalg.norm(_rays(distance.shape, focal), axis=-1)


def _face_camera(normals: np.ndarray, focal: float) -> np.ndarray:
    """Negate normals pointing away from the camera (n · ray > 0), so every surface faces the viewer."""
    away = (normals * _rays(normals.shape[:2], focal)).sum(-1, keepdims=True) > 0
    return np.where(away, -normals, normals)


def _blank_normals(normals: np.ndarray, depth: np.ndarray, depth_range: tuple[float, float], path: Path) -> np.ndarray:
    """Normal target [H, W, 3] with 0 where `depth` [H, W] (read from `path`) is outside `depth_range`, as the
    release's dataset does (`targets.blank_normals`); refuses a depth map of another size."""
    if depth.shape != normals.shape[:2]:
        raise DataError(f"{path} is {depth.shape[1]}x{depth.shape[0]}, its normals {normals.shape[1]}x"
                        f"{normals.shape[0]}: the depth beside the normals must have their size.")
    return targets.blank_normals(normals, targets.depth_valid(depth, depth_range))


SOURCES = {"folder": FolderSource, "vkitti": VKITTISource, "hypersim": HypersimSource}


def make_source(kind: str, path: str | Path, task: str, size: tuple[int, int], quantile: float,
                depth_range: tuple[float, float] | None = None, normal_mask: str = "nonzero"):
    """The source of `kind` (config.SOURCE_KINDS) at `path`; refuses a missing or malformed layout.
    `depth_range` (min, max): valid depth, exclusive; None = the kind's (the reference's per dataset).
    `normal_mask`: config.NORMAL_MASKS (normals: the release's mask and blanking, or |n| > 0.5)."""
    return SOURCES[kind](path, task, size, quantile, depth_range, normal_mask)


def label_target(task: str, label: np.ndarray, quantile: float,
                 depth_range: tuple[float, float] = FolderSource.DEPTH_RANGE,
                 normal_mask: str = "nonzero") -> tuple[np.ndarray, np.ndarray]:
    """A label array as read -> (float32 [H, W] or [H, W, 3] in [-1, 1], valid bool [H, W]); normals valid
    by `normal_mask` (config.NORMAL_MASKS; "nonzero" judges the label as stored, before the PNG mapping)."""
    if task in ("depth", "disparity"):
        depth = label if label.ndim == 2 else label[..., 0]
        valid = targets.depth_valid(depth, depth_range)
        return targets.normalize_depth(depth, valid, quantile, disparity=task == "disparity"), valid
    if task == "normal":
        stored = targets.nonzero_normals(label) if normal_mask == "nonzero" else None
        if label.dtype.kind in "ui":  # PNG: [0, peak] -> [-1, 1]
            label = label.astype(np.float64) / np.iinfo(label.dtype).max * 2.0 - 1.0
        return targets.unit_normals(label, stored)
    if task == "seg":
        return targets.seg_to_target(label), np.ones(label.shape[:2], bool)
    alpha = label if label.ndim == 2 else label[..., 0]
    return targets.alpha_to_target(alpha), np.ones(alpha.shape, bool)  # min-maxed: PNG or [0, 1] alike


def read_label(path: Path) -> np.ndarray:
    """A label file as stored: .npy (numbers), .exr (float, 1 or 3 channels), .png (8/16-bit, 1 or 3 channels)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        from ..files import NotNumericPrediction, read_numeric_npy

        try:
            return read_numeric_npy(path)
        except (NotNumericPrediction, OSError, ValueError) as exc:
            raise DataError(f"{path} {exc}.") from None
    if suffix == ".exr":
        return _read_exr(path)
    import cv2  # PIL truncates 16-bit colour PNGs to 8 bits

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"{path} is not a readable PNG.")
    return image[..., 2::-1] if image.ndim == 3 else image  # BGR(A) -> RGB


def _read_exr(path: Path) -> np.ndarray:
    """EXR -> float32 [H, W] (one channel: Y, Z, R or the only one) or [H, W, 3] (R, G, B)."""
    channels = read_exr_channels(path)
    if all(c in channels for c in "RGB") and not path.parent.name == "depth":
        return np.stack([channels[c] for c in "RGB"], axis=-1)
    for name in ("Y", "Z", "R", *channels):
        if name in channels:
            return channels[name]
    raise DataError(f"{path} holds no channels.")


def flip_sample(sample: Sample, task: str) -> Sample:
    """Left-right flip; a normal's x component changes sign with it."""
    target = sample.target.flip(-1)
    if task == "normal":
        target = target * torch.tensor([-1.0, 1.0, 1.0]).view(3, 1, 1)
    return Sample(sample.rgb.flip(-1), target, sample.mask.flip(-1))


@dataclass(frozen=True)
class Draw:
    source: int
    index: int
    flip: bool
    timestep: int


class BatchPlan:
    """Which samples each optimiser step uses: for step s, a generator seeded (seed, s) picks each micro-batch's
    source by `ratios`, and each sample's flip and timestep; each source is walked without replacement
    through a permutation per epoch seeded (seed, source, epoch). State: the step and per-source positions."""

    def __init__(self, lengths: list[int], ratios: list[float], seed: int, flip_p: float, timestep: int | None):
        self.lengths, self.seed, self.flip_p, self.timestep = lengths, seed, flip_p, timestep
        total = float(sum(ratios))
        self.probs = [r / total for r in ratios]
        self.step, self.positions = 0, [0] * len(lengths)

    def next_batch(self, batch: int, group: int = 1, num_timesteps: int = 1000) -> list[Draw]:
        """The `batch` draws of the next step (the same on every process); each run of `group` consecutive
        draws (a micro-batch) comes from one source, as the reference's mixed sampler, so sources may differ
        in size."""
        rng = np.random.default_rng([self.seed, self.step])
        sources = np.repeat(rng.choice(len(self.lengths), size=batch // group, p=self.probs), group)
        flips = rng.random(batch) < self.flip_p
        steps = rng.integers(0, num_timesteps, batch) if self.timestep is None else [self.timestep] * batch
        draws = [Draw(int(k), self._take(int(k)), bool(f), int(t)) for k, f, t in zip(sources, flips, steps)]
        self.step += 1
        return draws

    def _take(self, source: int) -> int:
        n, pos = self.lengths[source], self.positions[source]
        perm = np.random.default_rng([self.seed, 1 + source, pos // n]).permutation(n)
        self.positions[source] += 1
        return int(perm[pos % n])

    def state_dict(self) -> dict:
        return {"step": self.step, "positions": list(self.positions)}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.positions = int(state["step"]), [int(p) for p in state["positions"]]


def load_batch(sources: list, draws: list[Draw], task: str, pool=None) -> dict:
    """Stack the drawn samples: rgb, target [B, 3, H, W], mask [B, 1, H, W], timesteps int64 [B];
    decoded in `pool`'s threads when given (image decoding and resizing release the GIL)."""

    def load(d: Draw) -> Sample:
        sample = sources[d.source].load(d.index)
        return flip_sample(sample, task) if d.flip else sample

    samples = list(pool.map(load, draws) if pool is not None else map(load, draws))
    return {"rgb": torch.stack([s.rgb for s in samples]), "target": torch.stack([s.target for s in samples]),
            "mask": torch.stack([s.mask for s in samples]),
            "timesteps": torch.tensor([d.timestep for d in draws], dtype=torch.int64)}
