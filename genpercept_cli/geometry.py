"""Depth maps as 3D files: the pinhole camera, PLY point clouds and GLB meshes (`--formats ply,glb`).

Camera: a pinhole at the origin with square pixels and the principal point at the image centre
(cx = (W - 1) / 2, cy = (H - 1) / 2, pixel centres at integer coordinates). Its horizontal field of view
(across the image's width) is `--fov`, else the one the photo's EXIF 35 mm-equivalent focal length gives
(35 mm equivalence is by the diagonal: f_px = f35 / 43.27 mm * sqrt(W^2 + H^2)), else DEFAULT_FOV.

Frame: x right, y up, z toward the camera (the normals' frame, and glTF's); the camera looks down -z.
Pixel (u, v) with depth d (the distance along the optical axis) is the point
x = (u - cx) / fx * d, y = -(v - cy) / fy * d, z = -d.

Normals (a normal model run beside the depth model, `SceneOptions.normals`): already in this frame, so the
PLY's nx, ny, nz and the GLB's vertex normals are the predicted vectors at the points' pixels as they are.

Depth: in the units of the depth maps given here (NaN = none: no point); `tasks.depth.DepthTask.distance`
makes them from predictions: metres for metric models, the affine-invariant ones mapped onto
`--depth-range NEAR,FAR` (default DEFAULT_DEPTH_RANGE).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field, replace

import numpy as np

from .errors import GenPerceptError

DEFAULT_FOV = 55.0  # degrees across the width: a typical phone or kit-lens photo (about 35 mm equivalent)
DEFAULT_DEPTH_RANGE = (1.0, 10.0)  # NEAR, FAR for affine-invariant outputs, in the cloud's (arbitrary) units
DEFAULT_MESH_RES = 1024  # at most this many mesh vertices along the image's long side
# A mesh triangle is dropped when its farthest vertex is more than this fraction beyond its nearest one:
# a depth discontinuity (an object's silhouette against the background), not a surface.
EDGE_RTOL = 0.04
FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)  # 43.27 mm: what "35 mm-equivalent" focal lengths refer to


@dataclass(frozen=True)
class SceneOptions:
    """How a depth map becomes 3D (`genpercept predict --fov --depth-range --points-stride --mesh-res`).

    fov: horizontal field of view in degrees (0 < fov < 180); None = from EXIF, else DEFAULT_FOV.
    depth_range: (NEAR, FAR), 0 < NEAR < FAR, for affine-invariant depth and disparity.
    points_stride: one point every N pixels in x and y (N >= 1).
    mesh_res: at most this many mesh vertices on the long side (>= 2).
    focal_35mm: this photo's EXIF 35 mm-equivalent focal length in mm (per image; None = none recorded).
    normals: float32 [H, W, 3] unit normals of this image in the module's frame (a normal model run beside the
        depth model, per image), written as vertex normals; None = none.
    """

    fov: float | None = None
    depth_range: tuple[float, float] = DEFAULT_DEPTH_RANGE
    points_stride: int = 1
    mesh_res: int = DEFAULT_MESH_RES
    focal_35mm: float | None = None
    normals: np.ndarray | None = field(default=None, compare=False, repr=False)

    def validate(self) -> SceneOptions:
        """Raise GenPerceptError naming the first bad option, in the words of `genpercept predict`."""
        if self.fov is not None and not 0 < self.fov < 180:
            raise GenPerceptError(f"--fov must be between 0 and 180 degrees, got {self.fov:g}.")
        near, far = self.depth_range
        if not (math.isfinite(near) and math.isfinite(far) and 0 < near < far):
            raise GenPerceptError(f"--depth-range needs 0 < NEAR < FAR, got {near:g},{far:g}.")
        if self.points_stride < 1:
            raise GenPerceptError("--points-stride must be at least 1.")
        if self.mesh_res < 2:
            raise GenPerceptError("--mesh-res must be at least 2.")
        return self

    def for_photo(self, focal_35mm: float | None) -> SceneOptions:
        return replace(self, focal_35mm=focal_35mm)

    def with_normals(self, normals: np.ndarray) -> SceneOptions:
        """These options with this image's predicted normals (float32 [H, W, 3], x right, y up, z toward the
        camera: the normal task's frame before any --normal-flip, which is this module's and glTF's)."""
        return replace(self, normals=normals)

    def normals_at(self, size: tuple[int, int]) -> np.ndarray | None:
        """The normals, checked to be [H, W, 3] at the depth map's `size`; None when there are none."""
        if self.normals is None:
            return None
        if self.normals.shape != (*size, 3):
            raise ValueError(f"vertex normals of shape {self.normals.shape} do not match a depth map of {size}")
        return self.normals


def parse_depth_range(text: str | tuple[float, float] | None) -> tuple[float, float]:
    """"NEAR,FAR" (e.g. "1,10") -> (1.0, 10.0); None = DEFAULT_DEPTH_RANGE. Raises GenPerceptError."""
    if text is None:
        return DEFAULT_DEPTH_RANGE
    if not isinstance(text, str):
        return float(text[0]), float(text[1])
    try:
        near, far = (float(part) for part in text.split(","))
    except ValueError:
        raise GenPerceptError(f"--depth-range must be NEAR,FAR such as 1,10, got {text!r}.") from None
    return near, far


@dataclass(frozen=True)
class Camera:
    """A pinhole camera of a W x H image (module docstring): focal lengths and principal point in pixels."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    fov_source: str  # "--fov", "exif" or "default"

    @property
    def hfov(self) -> float:
        """Horizontal field of view in degrees."""
        return math.degrees(2 * math.atan(self.width / 2 / self.fx))

    def to_json(self, units: str) -> bytes:
        """The camera as the <stem>_camera.json written beside the PLY/GLB."""
        info = {
            "model": "pinhole", "width": self.width, "height": self.height, "fx": self.fx, "fy": self.fy,
            "cx": self.cx, "cy": self.cy, "hfov_deg": self.hfov, "fov_source": self.fov_source,
            "frame": "x right, y up, z toward the camera; pixel (u, v) at depth d is "
                     "((u - cx) / fx * d, -(v - cy) / fy * d, -d)",
            "units": units,
        }
        return (json.dumps(info, indent=2) + "\n").encode()


def camera_for(height: int, width: int, scene: SceneOptions) -> Camera:
    """The pinhole camera of an H x W image: field of view from scene.fov, else EXIF, else DEFAULT_FOV."""
    if scene.fov is not None:
        fx, source = width / 2 / math.tan(math.radians(scene.fov) / 2), "--fov"
    elif scene.focal_35mm:
        fx, source = scene.focal_35mm / FULL_FRAME_DIAGONAL_MM * math.hypot(width, height), "exif"
    else:
        fx, source = width / 2 / math.tan(math.radians(DEFAULT_FOV) / 2), "default"
    return Camera(width, height, fx, fx, (width - 1) / 2, (height - 1) / 2, source)


def unproject(depth: np.ndarray, rows: np.ndarray, cols: np.ndarray, camera: Camera) -> np.ndarray:
    """depth [h, w] at pixel rows [h] and cols [w] -> float32 points [h, w, 3] in the module's frame."""
    u = (cols.astype(np.float64) - camera.cx) / camera.fx
    v = (rows.astype(np.float64) - camera.cy) / camera.fy
    d = depth.astype(np.float64)
    return np.stack([u[None, :] * d, -v[:, None] * d, -d], axis=-1).astype(np.float32)


def point_cloud(depth: np.ndarray, image: np.ndarray, scene: SceneOptions) -> np.ndarray:
    """One coloured point per `scene.points_stride`-th pixel with a depth.

    depth: float32 [H, W] along the optical axis, NaN = none; image: uint8 [H, W, 3] -> structured array
    [N] of x, y, z (float32), with scene.normals also nx, ny, nz (float32, the pixel's normal), and red,
    green, blue (uint8), in row-major pixel order."""
    camera = camera_for(*depth.shape, scene)
    normals = scene.normals_at(depth.shape)
    s = scene.points_stride
    rows, cols = np.arange(0, depth.shape[0], s), np.arange(0, depth.shape[1], s)
    depth = depth[::s, ::s]
    xyz = unproject(depth, rows, cols, camera)
    keep = np.isfinite(depth)
    points = np.empty(int(keep.sum()), dtype=PLY_VERTEX if normals is None else PLY_VERTEX_NORMAL)
    for axis, name in enumerate("xyz"):
        points[name] = xyz[..., axis][keep]
        if normals is not None:
            points[f"n{name}"] = normals[::s, ::s, axis][keep]
    for channel, name in enumerate(("red", "green", "blue")):
        points[name] = image[::s, ::s, channel][keep]
    return points


PLY_VERTEX = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
PLY_VERTEX_NORMAL = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4"),
                              ("red", "u1"), ("green", "u1"), ("blue", "u1")])


def ply_bytes(points: np.ndarray) -> bytes:
    """A binary little-endian PLY file of `point_cloud`'s points (with normals or without)."""
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment written by genpercept\n"
        f"element vertex {len(points)}\n"
        + "".join(f"property {'float' if points.dtype[name].kind == 'f' else 'uchar'} {name}\n"
                  for name in points.dtype.names)
        + "end_header\n"
    )
    return header.encode("ascii") + points.tobytes()


@dataclass(frozen=True)
class GridMesh:
    """A triangle mesh over a decimated pixel grid: vertices float32 [V, 3] (module frame), faces int64
    [F, 3] (counter-clockwise seen from the camera), uv float32 [V, 2] into `texture` (uint8 [H, W, 3]),
    normals float32 [V, 3] (the predicted normals at the vertices' pixels) or None."""

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    texture: np.ndarray
    normals: np.ndarray | None = None


def grid_mesh(depth: np.ndarray, image: np.ndarray, scene: SceneOptions, edge_rtol: float = EDGE_RTOL) -> GridMesh:
    """depth: float32 [H, W] along the optical axis (NaN = none), image: uint8 [H, W, 3] -> the depth grid as a
    textured mesh: every step-th pixel a vertex, with the step the smallest one that
    leaves at most scene.mesh_res vertices on the long side; each grid cell two triangles, dropped when a
    corner has no depth or the triangle spans a discontinuity (max depth > (1 + edge_rtol) min depth).
    Vertices no triangle uses are left out; with scene.normals each vertex carries its pixel's normal."""
    h, w = depth.shape
    normals = scene.normals_at((h, w))
    step = max(1, math.ceil((max(h, w) - 1) / (scene.mesh_res - 1)))
    rows, cols = np.arange(0, h, step), np.arange(0, w, step)
    depth = depth[np.ix_(rows, cols)]
    xyz = unproject(depth, rows, cols, camera_for(h, w, scene)).reshape(-1, 3)
    index = np.arange(depth.size).reshape(depth.shape)
    a, b, c, d = index[:-1, :-1], index[:-1, 1:], index[1:, :-1], index[1:, 1:]  # top-left, top-right, ...
    faces = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
    z = depth.reshape(-1)[faces]  # [F, 3]
    with np.errstate(invalid="ignore"):
        keep = np.isfinite(z).all(axis=1) & (z.max(axis=1) <= (1 + edge_rtol) * z.min(axis=1))
    faces = faces[keep]
    used = np.unique(faces)
    remap = np.full(depth.size, -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    u = (cols + 0.5) / w  # texture coordinates of the pixel centres; glTF's v runs down the image
    v = (rows + 0.5) / h
    uv = np.stack(np.broadcast_arrays(u[None, :], v[:, None]), axis=-1).reshape(-1, 2).astype(np.float32)
    if normals is not None:
        normals = normals[np.ix_(rows, cols)].reshape(-1, 3)[used].astype(np.float32)
    return GridMesh(xyz[used], remap[faces], uv[used], image, normals)


def glb_bytes(mesh: GridMesh) -> bytes:
    """A binary glTF (.glb) file of a textured GridMesh, written by trimesh (texture embedded as PNG)."""
    import trimesh
    from PIL import Image

    # trimesh's uv follow OBJ (v up) and flip v when writing glTF (v down)
    uv = np.stack([mesh.uv[:, 0], 1.0 - mesh.uv[:, 1]], axis=-1)
    visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(mesh.texture))
    tri = trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_normals=mesh.normals, visual=visual, process=False)
    buffer = io.BytesIO()
    tri.export(buffer, file_type="glb", include_normals=mesh.normals is not None)
    return buffer.getvalue()
