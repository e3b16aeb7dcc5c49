"""Render the README's point-cloud picture from a CONSTRUCTED scene, not a model prediction.

A room (floor, back wall, left wall) and a sphere are ray-cast through the pinhole camera `predict` uses
(`geometry.camera_for`, 60 degrees across), giving an RGB image and its exact depth in metres. Both go
through the same writer as `genpercept predict --formats ply,glb` (`outputs.write_prediction`, as a metric
depth map); the PLY is read back and drawn from the side with matplotlib (only this script needs it).

    python examples/constructed_scene.py            # writes examples/constructed_scene_cloud.png
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from genpercept_cli.geometry import SceneOptions, camera_for
from genpercept_cli.outputs import write_prediction

H, W, FOV = 180, 240, 60.0
HERE = Path(__file__).resolve().parent


def ray_cast() -> tuple[np.ndarray, np.ndarray]:
    """The scene seen by the camera: uint8 RGB [H, W, 3] and depth along the optical axis [H, W] in metres."""
    cam = camera_for(H, W, SceneOptions(fov=FOV))
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    ray = np.stack([(u - cam.cx) / cam.fx, -(v - cam.cy) / cam.fy, -np.ones_like(u)], axis=-1)  # z = -1: t = depth
    depth, rgb = np.full((H, W), np.inf), np.zeros((H, W, 3))
    with np.errstate(divide="ignore", invalid="ignore"):
        planes = [  # (axis, coordinate, colour function of the hit point)
            (1, -1.2, lambda p: np.where((np.floor(p[..., 0] * 2) + np.floor(p[..., 2] * 2)) % 2, 0.85, 0.35)[..., None]
             * np.array([0.9, 0.8, 0.6])),  # floor: a checkerboard
            (2, -6.0, lambda p: np.array([0.45, 0.6, 0.85]) * (0.8 + 0.2 * np.sin(p[..., 0] * 3))[..., None]),  # back
            (0, -2.5, lambda p: np.array([0.55, 0.8, 0.55]) * (0.7 + 0.05 * p[..., 2])[..., None]),  # left wall
        ]
        for axis, coordinate, colour in planes:
            t = coordinate / ray[..., axis]
            hit = (t > 0) & (t < depth)
            depth[hit], rgb[hit] = t[hit], colour(t[..., None] * ray)[hit]
        centre, radius = np.array([0.5, -0.4, -3.8]), 0.8  # sphere: |t r - c|^2 = R^2
        a, b = (ray**2).sum(-1), -2 * (ray @ centre)
        t = (-b - np.sqrt(b**2 - 4 * a * (centre @ centre - radius**2))) / (2 * a)
        hit = np.isfinite(t) & (t > 0) & (t < depth)
    normal = (t[..., None] * ray - centre) / radius
    shade = np.clip(normal @ np.array([-0.4, 0.7, 0.6]) / np.linalg.norm([-0.4, 0.7, 0.6]), 0, 1)
    depth[hit], rgb[hit] = t[hit], ((0.25 + 0.75 * shade)[..., None] * np.array([0.95, 0.35, 0.25]))[hit]
    return np.rint(rgb * 255).astype(np.uint8), depth.astype(np.float32)


def read_ply(path: Path) -> np.ndarray:
    """Our binary PLY's vertices (`geometry.PLY_VERTEX`), read with plyfile: a reader that is not ours."""
    import plyfile

    return plyfile.PlyData.read(path)["vertex"].data


def main(out: Path = HERE / "constructed_scene_cloud.png") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rgb, depth = ray_cast()
    with tempfile.TemporaryDirectory() as tmp:
        stem = Path(tmp) / "room"
        write_prediction(depth, "depth", stem, ["ply", "glb"], image=rgb, kind="metric_depth",
                         scene=SceneOptions(fov=FOV))
        points = read_ply(stem.parent / "room_points.ply")
    fig = plt.figure(figsize=(10, 4.2), dpi=100)
    ax = fig.add_subplot(1, 3, 1)
    ax.imshow(rgb)
    ax.set_title("constructed RGB (ray-cast)", fontsize=9)
    ax = fig.add_subplot(1, 3, 2)
    ax.imshow(depth, cmap="Spectral")
    ax.set_title(f"its exact depth, {depth.min():.1f}-{depth.max():.1f} m (near = red)", fontsize=9)
    for ax in fig.axes:
        ax.axis("off")
    ax = fig.add_subplot(1, 3, 3, projection="3d")
    keep = slice(None, None, 2)  # every second point: a lighter figure
    colours = np.stack([points["red"], points["green"], points["blue"]], -1)[keep] / 255
    ax.scatter(points["x"][keep], -points["z"][keep], points["y"][keep], c=colours, s=1.2, linewidths=0)
    ax.view_init(elev=18, azim=-35)
    ax.set_xlabel("x (m)", fontsize=8)
    ax.set_ylabel("depth (m)", fontsize=8)
    ax.set_zlabel("y (m)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(f"room_points.ply: {len(points)} points, seen from the side", fontsize=9)
    fig.suptitle("A constructed scene with known depth, written by genpercept's PLY writer (not a model prediction)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out} ({len(points)} points)")


if __name__ == "__main__":
    main(*(Path(arg) for arg in sys.argv[1:]))
