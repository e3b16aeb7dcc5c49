"""Depth and disparity (SPEC §4).

Affine-invariant (the GenPercept models, output kinds affine_depth / affine_disparity): float32 [H, W] in
[0, 1]; depth: 0 = near, 1 = far; disparity: 1 = near. Files: <stem>_pred.npy (float32), <stem>_pred.png
(16-bit, round(v * 65535)), <stem>_colored.png (Spectral colour map, near = red).

Metric (output kind metric_depth, e.g. Meta Prompts): float32 [H, W] in metres, >= 0, NaN where the model
made no prediction. Files: <stem>_pred.npy (metres as predicted, NaN kept), <stem>_pred.png (16-bit
millimetres: round(d * 1000) clipped to 65535, 0 = no prediction), <stem>_colored.png (Spectral, near =
red, stretched over the image's own finite depth range, black = no prediction).

Both also write <stem>_pred.exr (the .npy's float32 values, channel Y) and, as 3D files (`geometry`: camera,
units, depth range), <stem>_points.ply (coloured point cloud), <stem>_mesh.glb (textured mesh) and the camera
they used, <stem>_camera.json (written with either of them).

Both are scored by the depth benchmarks.
"""

from __future__ import annotations

import numpy as np

from ..colormap import colorize_depth, colorize_metric_depth, finite_range
from ..files import bytes_writer
from ..geometry import SceneOptions, camera_for, glb_bytes, grid_mesh, ply_bytes, point_cloud
from .base import EXR, NPY, Encoder, Format, Task, to_uint16

METRIC = "metric_depth"


def to_millimetres(depth: np.ndarray, image: np.ndarray | None = None) -> np.ndarray:
    """Metric depth [H, W] in metres -> uint16 millimetres round(d * 1000), clipped to 0..65535 (65.535 m);
    NaN/inf (no prediction) -> 0, the usual "no data" of depth PNGs."""
    depth = np.asarray(depth, dtype=np.float64)
    mm = np.clip(np.rint(np.where(np.isfinite(depth), depth, 0.0) * 1000.0), 0, 65535)
    return mm.astype(np.uint16)


def _formats(name: str) -> dict[str, Format]:
    def color(pred, image=None):  # uint8 [H, W, 3], near = red for both tasks
        return colorize_depth(pred, name)

    return {"npy": NPY, "png16": Format("_pred.png", to_uint16), "color": Format("_colored.png", color), "exr": EXR,
            **GEOMETRY_FORMATS}


# The 3D files: encoded from the whole image at once into the file's bytes (`DepthTask.encoder`).
GEOMETRY_FORMATS = {
    "ply": Format("_points.ply", needs_image=True, writer=bytes_writer, per_pixel=False),
    "glb": Format("_mesh.glb", needs_image=True, writer=bytes_writer, per_pixel=False),
    "camera": Format("_camera.json", writer=bytes_writer, per_pixel=False),  # chosen with ply or glb
}


class DepthTask(Task):
    """Depth-like tasks; metric depth (kind "metric_depth") is kept in metres (module docstring)."""

    def postprocess(self, p, kind: str | None = None):
        """p [1, H, W]: affine outputs clipped to [0, 1]; metric depth only to >= 0 (NaN stays: no prediction)."""
        return p.clamp_min(0.0) if kind == METRIC else p.clamp(0.0, 1.0)

    def encoder(self, name: str, pred: np.ndarray, kind: str | None = None,
                labels: str | None = None, scene: SceneOptions | None = None) -> Encoder | None:
        if name in GEOMETRY_FORMATS:
            return _geometry_encoder(name, kind or self.output_kind, scene or SceneOptions())
        if kind != METRIC or name in ("npy", "exr"):
            return super().encoder(name, pred, kind, labels)
        if name == "png16":
            return to_millimetres
        near, far = finite_range(pred)  # one range for the whole image, so the stripes agree
        return lambda rows, image=None: colorize_metric_depth(rows, near, far)

    def value_problem(self, pred: np.ndarray, kind: str | None = None) -> str | None:
        """Metric depth may hold NaN (no prediction); inf is refused everywhere."""
        if kind == METRIC:
            return "contains inf" if np.isinf(pred).any() else None
        return super().value_problem(pred, kind)


def distance(pred: np.ndarray, kind: str, depth_range: tuple[float, float]) -> np.ndarray:
    """pred: float32 [H, W] of output kind `kind` -> float32 [H, W] depth along the optical axis for the 3D
    files, NaN where there is none. Metric depth: metres (NaN and <= 0: none). Affine-invariant outputs have
    no scale, so they are mapped onto depth_range (NEAR, FAR): depth v -> NEAR + v (FAR - NEAR); disparity
    v -> 1 / (1/FAR + v (1/NEAR - 1/FAR)), linear in inverse depth; the result is right up to scale and shift."""
    pred = pred.astype(np.float64)
    near, far = depth_range
    if kind == METRIC:
        depth = np.where(pred > 0, pred, np.nan)
    elif kind == "affine_disparity":
        depth = 1.0 / (1.0 / far + pred * (1.0 / near - 1.0 / far))
    else:
        depth = near + pred * (far - near)
    return depth.astype(np.float32)


def _geometry_encoder(name: str, kind: str, scene: SceneOptions) -> Encoder:
    """The whole prediction [H, W] (and uint8 image [H, W, 3]) -> the bytes of its 3D file `name`."""
    if name == "ply":
        return lambda pred, image: ply_bytes(
            point_cloud(distance(pred, kind, scene.depth_range), image, scene))
    if name == "glb":
        return lambda pred, image: glb_bytes(
            grid_mesh(distance(pred, kind, scene.depth_range), image, scene))
    near, far = scene.depth_range
    units = "metres" if kind == METRIC else f"up to scale and shift: {kind} mapped onto --depth-range {near:g},{far:g}"
    return lambda pred, image=None: camera_for(*pred.shape, scene).to_json(units)


DEPTH = DepthTask(
    "depth", channels=1, output="affine-invariant depth in [0,1], 0 = near, 1 = far", output_kind="affine_depth",
    formats=_formats("depth"), default_formats=("npy", "png16", "color"), benchmark="depth",
    aliases={"png": "png16"},
)
DISPARITY = DepthTask(
    "disparity", channels=1, output="affine-invariant disparity in [0,1], 1 = near", output_kind="affine_disparity",
    formats=_formats("disparity"), default_formats=("npy", "png16", "color"), benchmark="depth",
    aliases={"png": "png16"},
)
