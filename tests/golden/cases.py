"""Golden cases: what `record.py` records and `tests/test_golden.py` compares, built in one place.

Only public entry points are exercised, so the cases survive moving code between modules:
`GenPerceptPipeline.from_checkpoint(folder, device="cpu", dtype="fp32")` called on images, and the
Typer app `genpercept_cli.cli.app` (`predict`, `eval` and their usage errors) through CliRunner.

Everything a case needs is built from seeds in a fresh workspace: tiny random checkpoints in the released
layout (tests/tiny_models.py), small images, a nested source folder, miniature benchmark archives in the
public layouts (tests/_archives.py) and deterministic prediction files. Commands run with the workspace as
the current folder and relative paths, so messages name `src/...`, `out/...`; absolute paths (checkpoint
names are resolved) become `<ROOT>`, and timings, rates and progress bars are normalised away.

An observation is plain data: {"runs": [{args, exit_code, exception, stdout, stderr}], "files": {relative
path: decoded content}} for a command, {key: float32 array} for the pipeline.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

TESTS = Path(__file__).resolve().parent.parent
if str(TESTS) not in sys.path:  # tiny_models and _archives live beside the tests
    sys.path.insert(0, str(TESTS))

from _archives import exr_bytes, jpg_bytes, npy_bytes, png_bytes, write_tar, write_tree  # noqa: E402
from tiny_models import write_checkpoint_root, write_dpt_checkpoint  # noqa: E402

GOLDEN = Path(__file__).resolve().parent
PIPELINE_NPZ = GOLDEN / "pipeline.npz"  # {"<model>/<image>/res<N>": float32 array}
CLI_JSON = GOLDEN / "cli.json"  # {case: observation without arrays}
CLI_NPZ = GOLDEN / "cli.npz"  # {"<case>/<file>": array} for .npy and image files
META_JSON = GOLDEN / "meta.json"  # the recorded code and the library versions it ran with

# Library versions that decide the recorded numbers or text; another version may differ in the last bits
# (kernels, summation order) or in layout (rich), so the comparison is skipped rather than failed.
LIBRARIES = ("torch", "diffusers", "numpy", "pillow", "scipy", "scikit-image", "opencv-python-headless",
             "h5py", "openexr", "safetensors", "rich", "typer", "click")

# -- checkpoints and images -------------------------------------------------------------------------
# model name -> its U-Net folder, relative to the workspace (the folder is what `-c` and the API take)
MODELS = {
    "depth": "models/unet_depth_v2",
    "disparity": "models/unet_disparity_v2",
    "disparity-dpt": "dpt/unet_disparity_dpt_head_v2",
    "normal": "models/unet_normal_v2",
    "dis": "models/unet_dis_v2",
    "matting": "models/unet_matting_v2",
    "seg": "models/unet_seg_v2",
    "depth-v1": "v1/unet_depth_v1",  # 77-token padded empty prompt; same weights as depth
}
IMAGES = {"wide": (40, 56), "odd": (33, 47), "tall": (26, 19)}  # (H, W); odd sizes on purpose
PIPELINE_RES = (64, 0)  # processing resolution; 0 = native


def build_checkpoints(root: Path) -> None:
    write_checkpoint_root(root / "models")  # unet_<task>_v2 seeds 0..5 in TASK_FOLDERS order, VAE seed 100
    write_dpt_checkpoint(root / "dpt")  # seed 7
    v1 = root / "v1"  # the depth U-Net and VAE again (copied: the same seeds give the same files)
    shutil.copytree(root / "models" / "vae", v1 / "vae")
    shutil.copytree(root / "models" / "unet_depth_v2", v1 / "unet_depth_v1")
    config = v1 / "unet_depth_v1" / "config.json"  # the v1 release names a custom class: never trusted
    config.write_text(json.dumps({**json.loads(config.read_text()), "_class_name": "CustomUNet2DConditionModel"}))


def make_image(name: str) -> np.ndarray:
    """uint8 [H, W, 3]: colour ramps plus seeded noise (structure for the model, noise for the bits)."""
    h, w = IMAGES[name]
    rng = np.random.default_rng(10 + list(IMAGES).index(name))
    rows, cols = np.mgrid[0:h, 0:w]
    ramps = np.stack([rows * 255 // (h - 1), cols * 255 // (w - 1), (rows + cols) * 255 // (h + w - 2)], -1)
    return np.clip(ramps + rng.integers(-40, 41, (h, w, 3)), 0, 255).astype(np.uint8)


def observe_pipeline(root: Path, model: str) -> dict[str, np.ndarray]:
    """Every image at every PIPELINE_RES one at a time, then three images at batch_size 2 (the two of one
    size stacked into one batch, the third in a bucket of its own): float32 [H, W] or [H, W, 3] each."""
    from genpercept_cli import GenPerceptPipeline

    pipe = GenPerceptPipeline.from_checkpoint(str(root / MODELS[model]), device="cpu", dtype="fp32")
    out = {}
    for image in IMAGES:
        for res in PIPELINE_RES:
            out[f"{model}/{image}/res{res}"] = pipe(make_image(image), processing_res=res)
    batch = [make_image("wide"), make_image("odd"), np.ascontiguousarray(make_image("wide")[::-1])]
    for i, pred in enumerate(pipe(batch, processing_res=64, batch_size=2)):
        out[f"{model}/batch2-{i}/res64"] = pred
    return out


# -- predict: a nested source folder --------------------------------------------------------------------
def build_sources(root: Path) -> None:
    """src/ with RGB, JPEG, RGBA and grayscale images at three depths, one broken file, one non-image
    and one hidden image (counted, not read)."""
    src = root / "src"
    (src / "a" / "b").mkdir(parents=True)
    rng = np.random.default_rng(20)
    Image.fromarray(make_image("wide")[:20, :28]).save(src / "top.png")
    Image.fromarray(make_image("odd")[:17, :23]).save(src / "a" / "mid.jpg", quality=90)
    alpha = rng.integers(0, 256, (24, 24), dtype=np.uint8)
    Image.fromarray(np.dstack([make_image("odd")[:24, :24], alpha])).save(src / "a" / "b" / "alpha.png")
    Image.fromarray(make_image("wide")[5:26, 10:25, 1]).save(src / "a" / "b" / "gray.png")
    (src / "a" / "broken.png").write_text("not an image")
    (src / "notes.txt").write_text("not an image either")
    Image.fromarray(make_image("tall")).save(src / ".hidden.png")


# -- eval: miniature archives in the public layouts ---------------------------------------------------
# The first split lines of the shipped lists (benchmarks/splits), spelled out: a changed list shows here.
NYU_ROWS = [("test/kitchen_0004/rgb_0001.png", "test/kitchen_0004/depth_0001.png", "test/kitchen_0004/filled_0001.png"),
            ("test/kitchen_0004/rgb_0002.png", "test/kitchen_0004/depth_0002.png", "test/kitchen_0004/filled_0002.png")]
KITTI_ROWS = [
    ("2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png",
     "2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000069.png"),
    ("2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000054.png",
     "2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000054.png"),
]
SCANNET_ROWS = [("scene0406_02/color/000300.jpg", "scene0406_02/depth/000300.png"),
                ("scene0088_02/color/001100.jpg", "scene0088_02/depth/001100.png")]
DIODE_STEMS = ["indoors/scene_00021/scan_00189/00021_00189_indoors_200_010",
               "indoors/scene_00021/scan_00189/00021_00189_indoors_240_030",
               "outdoors/scene_00022/scan_00196/00022_00196_outdoor_350_020",
               "outdoors/scene_00022/scan_00196/00022_00196_outdoor_010_000"]
NYU_NORMAL_STEMS = ["test/000000", "test/000001"]
SINTEL_STEM = "alley_1/frame_0001"
DIS_STEMS = {"DIS-VD": ["v1"], "DIS-TE1": ["b", "a"], "DIS-TE2": ["c"], "DIS-TE3": ["d"], "DIS-TE4": ["e"]}
# NYU40 colours of the classes the seg miniature uses (genpercept_cli/palette.py), id -> RGB
NYU40 = {1: (174, 199, 232), 2: (152, 223, 138), 3: (31, 119, 180), 5: (188, 189, 34), 22: (78, 71, 183),
         40: (100, 85, 144)}


def _pred_path(pred_dir: Path, key: str) -> Path:
    """Where `genpercept eval --predictions` looks for a sample key's prediction (the predict layout)."""
    path = pred_dir / f"{Path(key).with_suffix('')}_pred.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _depth_pred(rng: np.random.Generator, gt: np.ndarray) -> np.ndarray:
    """An affine, noisy guess of the depth (positive), so alignment and metrics have work to do."""
    return np.maximum(0.4 * gt + 1.5 + rng.normal(0, 0.3, gt.shape), 0.05).astype(np.float32)


def _nyu(data: Path, pred: Path, rng) -> None:
    files = {}
    for k, (rgb_rel, depth_rel, filled_rel) in enumerate(NYU_ROWS):
        raw = rng.integers(2, 9999, (480, 640)).astype(np.uint16)
        raw[100 + k, 100:105] = [0, 1, 2, 9999, 10000]  # range boundaries inside the Eigen crop
        raw[rng.random((480, 640)) < 0.05] = 0  # holes
        files |= {rgb_rel: png_bytes(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)),
                  depth_rel: png_bytes(raw), filled_rel: png_bytes(np.full((480, 640), 4321, np.uint16))}
        np.save(_pred_path(pred / "nyu", rgb_rel), _depth_pred(rng, raw / 1000.0))
    write_tar(data / "nyuv2/nyu_labeled_extracted.tar", files)
    shutil.copytree(pred / "nyu", pred / "nyu-missing")
    _pred_path(pred / "nyu-missing", NYU_ROWS[0][0]).unlink()


def _kitti(data: Path, pred: Path, rng) -> None:
    files = {}
    for (rgb_rel, gt_rel), (h, w) in zip(KITTI_ROWS, [(375, 1242), (370, 1224)]):
        raw = rng.integers(0, 20480, (h, w)).astype(np.uint16)
        raw[rng.random((h, w)) < 0.8] = 0  # sparse LiDAR
        files |= {rgb_rel: png_bytes(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), gt_rel: png_bytes(raw)}
        top, left = h - 352, (w - 1216) // 2
        np.save(_pred_path(pred / "kitti", rgb_rel), _depth_pred(rng, raw[top:, left : left + 1216] / 256.0))
    write_tar(data / "kitti/kitti_eigen_split_test.tar", files)


def _scannet(data: Path, pred: Path, rng) -> None:
    files = {}
    for rgb_rel, depth_rel in SCANNET_ROWS:
        raw = rng.integers(0, 12000, (24, 32)).astype(np.uint16)
        files |= {rgb_rel: jpg_bytes(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)), depth_rel: png_bytes(raw)}
        np.save(_pred_path(pred / "scannet", rgb_rel), _depth_pred(rng, raw / 1000.0))
    write_tar(data / "scannet/scannet_val_sampled_800_1.tar", files)


def _diode(data: Path, pred: Path, rng) -> None:
    files = {}
    for stem in DIODE_STEMS:
        depth = rng.uniform(0.1, 400.0, (12, 16, 1)).astype(np.float32)
        mask = (rng.random((12, 16)) > 0.3).astype(np.float32)
        archived = stem.replace("outdoors/", "outdoor/", 1)  # the public archive's spelling
        files |= {f"{archived}.png": png_bytes(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)),
                  f"{archived}_depth.npy": npy_bytes(depth), f"{archived}_depth_mask.npy": npy_bytes(mask)}
        np.save(_pred_path(pred / "diode", f"{stem}.png"), _depth_pred(rng, depth[..., 0]))
    write_tar(data / "diode/diode_val.tar", files)


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def _normals(data: Path, pred: Path, rng) -> None:
    files = {}
    for stem in NYU_NORMAL_STEMS:
        raw = rng.integers(1, 256, (6, 8, 3), dtype=np.uint8)
        raw[0, :2] = 0  # no GT
        files |= {f"{stem}_img.png": png_bytes(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)),
                  f"{stem}_normal.png": png_bytes(raw), f"{stem}_intrins.npy": npy_bytes(np.eye(3, dtype=np.float32))}
        gt = raw / 255.0 * 2 - 1
        gt[..., 0] *= -1  # DSINE stores x left
        np.save(_pred_path(pred / "nyu-normal", f"{stem}_img.png"), _unit(gt + rng.normal(0, 0.3, gt.shape)))
    write_tree(data / "dsine_eval/nyuv2", files)
    normal = _unit(rng.normal(0, 1, (6, 8, 3)) + [0, 0, 2])
    normal[0, 0] *= 0.3  # too short: invalid
    write_tree(data / "dsine_eval/sintel", {f"{SINTEL_STEM}_img.png": png_bytes(np.zeros((6, 8, 3), np.uint8)),
                                            f"{SINTEL_STEM}_normal.exr": exr_bytes(normal)})
    gt = normal * [-1, 1, 1]
    np.save(_pred_path(pred / "sintel-normal", f"{SINTEL_STEM}_img.png"), _unit(gt + rng.normal(0, 0.2, gt.shape)))


def _blob(rng, h: int, w: int) -> np.ndarray:
    """A filled ellipse with ragged edges: DIS ground truth with a contour for HCE to trace."""
    rows, cols = np.mgrid[0:h, 0:w]
    r = ((rows - h / 2) / (h / 3)) ** 2 + ((cols - w / 2) / (w / 3)) ** 2 + rng.normal(0, 0.15, (h, w))
    return np.where(r < 1, 255, 0).astype(np.uint8)


def _dis(data: Path, pred: Path, rng) -> None:
    files = {}
    for subset, stems in DIS_STEMS.items():
        for stem in stems:
            gt = _blob(rng, 20, 24)
            gt[rng.random(gt.shape) < 0.05] = rng.choice(np.array([127, 128, 129], np.uint8))
            files |= {f"{subset}/im/{stem}.jpg": jpg_bytes(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)),
                      f"{subset}/gt/{stem}.png": png_bytes(gt)}
            p = np.clip(gt / 255.0 * 0.4 + 0.6 * rng.random(gt.shape), 0, 1)  # classes overlap
            np.save(_pred_path(pred / "dis", f"{subset}/im/{stem}.jpg"), p.astype(np.float32))
            png = _pred_path(pred / "dis-png", f"{subset}/im/{stem}.jpg").with_name(f"{stem}_pred.png")
            Image.fromarray(np.round(p[::2, ::2] * 255).astype(np.uint8)).save(png)  # half size: resized
    write_tree(data / "DIS5K", files)


def _matting(data: Path, pred: Path, rng) -> None:
    for folder, image_folder, name in (("P3M-10k/validation/P3M-500-NP", "original_image", "p3m"),
                                       ("AIM-500/AIM-500", "original", "aim")):
        files = {}
        for stem in ("p_b", "p_a"):
            alpha = np.clip(_blob(rng, 16, 20).astype(np.int64) + rng.integers(-60, 61, (16, 20)), 0, 255)
            trimap = np.where(alpha > 200, 255, np.where(alpha < 50, 0, 128)).astype(np.uint8)
            files |= {f"{image_folder}/{stem}.jpg": jpg_bytes(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)),
                      f"mask/{stem}.png": png_bytes(alpha.astype(np.uint8)), f"trimap/{stem}.png": png_bytes(trimap)}
            p = np.clip(alpha / 255.0 + rng.normal(0, 0.1, alpha.shape), 0, 1).astype(np.float32)
            np.save(_pred_path(pred / name, f"{image_folder}/{stem}.jpg"), p)
        write_tree(data / folder, files)


def _hypersim(data: Path, pred: Path, rng) -> None:
    import h5py

    classes = np.array(list(NYU40))
    colours = np.array([(0, 0, 0)] * 41, np.float64)
    colours[classes] = list(NYU40.values())
    for scene, cam, frame in (("ai_001_001", "00", "0000"), ("ai_001_001", "00", "0001"), ("ai_001_002", "01", "0003")):
        images = data / "hypersim" / scene / "images"
        rgb_rel = f"scene_cam_{cam}_final_preview/frame.{frame}.tonemap.jpg"
        write_tree(images, {rgb_rel: jpg_bytes(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))})
        ids = rng.choice(classes, (12, 16)).astype(np.int16)
        ids[:2, :3] = -1  # unlabeled
        (images / f"scene_cam_{cam}_geometry_hdf5").mkdir(exist_ok=True)
        with h5py.File(images / f"scene_cam_{cam}_geometry_hdf5/frame.{frame}.semantic.hdf5", "w") as handle:
            handle.create_dataset("dataset", data=ids)
        guess = np.where(rng.random(ids.shape) < 0.7, np.maximum(ids, 1), rng.choice(classes, ids.shape))
        key = f"{scene}/images/{rgb_rel}"
        noisy = np.clip(colours[guess] / 255 + rng.normal(0, 0.05, (12, 16, 3)), 0, 1).astype(np.float32)
        np.save(_pred_path(pred / "hypersim", key), noisy)
        label = _pred_path(pred / "hypersim-label", key).with_name(f"frame.{frame}.tonemap_label.png")
        Image.fromarray(guess.astype(np.uint8)).save(label)


def build_eval_data(root: Path) -> None:
    """data/ (archives) and pred/<set>/ (prediction files), each family from its own seed."""
    data, pred = root / "data", root / "pred"
    builders = (_nyu, _kitti, _scannet, _diode, _normals, _dis, _matting, _hypersim)
    for seed, build in enumerate(builders):
        build(data, pred, np.random.default_rng(30 + seed))
    (root / "empty").mkdir()


# -- command cases -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """Commands run in order in the workspace; `{out}` stands for the case's own output folder, whose
    files are the case's observed output. `setup` copies a workspace folder to `{out}` first."""

    runs: tuple[tuple[str, ...], ...]
    setup: str | None = None


CPU = ("--device", "cpu", "--dtype", "fp32")


def _predict(model: str, *extra: str, source: str = "src", res: str = "32") -> tuple[str, ...]:
    return ("predict", source, "-c", MODELS[model], "-o", "{out}", "--processing-res", res, *CPU, *extra)


def _eval(dataset: str, *extra: str) -> tuple[str, ...]:
    return ("eval", "-d", dataset, "--data-dir", "data", "-o", "{out}/results.json", *extra)


def _scored(dataset: str, pred: str, *extra: str) -> Case:
    return Case((_eval(dataset, "--predictions", f"pred/{pred}", *extra),))


def _modelled(dataset: str, model: str, *extra: str) -> Case:
    return Case((_eval(dataset, "-c", MODELS[model], *CPU, *extra),))


PREDICT_CASES = {
    "predict-depth": Case((_predict("depth"),)),
    "predict-depth-npy-color": Case((_predict("depth", "--formats", "npy,color"),)),
    "predict-depth-png-alias": Case((_predict("depth", "--formats", "PNG, png16,npy"),)),
    "predict-depth-batch3": Case((_predict("depth", "--batch-size", "3", "--workers", "1"),)),
    "predict-depth-native": Case((_predict("depth", res="0"),)),
    "predict-depth-v1": Case((_predict("depth-v1"),)),
    "predict-disparity": Case((_predict("disparity"),)),
    "predict-disparity-dpt": Case((_predict("disparity-dpt"),)),
    "predict-disparity-dpt-native": Case((_predict("disparity-dpt", "--formats", "npy", res="0"),)),
    "predict-normal": Case((_predict("normal"),)),
    "predict-normal-flip-yz": Case((_predict("normal", "--formats", "png,npy", "--normal-flip", "yz"),)),
    "predict-dis": Case((_predict("dis"),)),
    "predict-dis-png16-rgba": Case((_predict("dis", "--formats", "png16,rgba"),)),
    "predict-matting": Case((_predict("matting"),)),
    "predict-matting-png-rgba-npy": Case((_predict("matting", "--formats", "png,rgba,npy"),)),
    "predict-seg": Case((_predict("seg"),)),
    "predict-seg-label": Case((_predict("seg", "--formats", "label"),)),
    "predict-matting-glob": Case((_predict("matting", source="src/**/*.png"),)),
    "predict-dis-single-file": Case((_predict("dis", source="src/a/b/alpha.png"),)),
    "predict-depth-skip-existing": Case((_predict("depth"), _predict("depth", "--skip-existing"))),
    "predict-seg-in-place": Case((_predict("seg", source="{out}"), _predict("seg", source="{out}")), setup="src"),
}

EVAL_CASES = {
    "eval-nyu-predictions": _scored("nyu", "nyu", "--limit", "2"),
    "eval-nyu-predictions-disparity-space": _scored("nyu", "nyu", "--limit", "2", "--space", "disparity"),
    "eval-nyu-predictions-checkpoint-says-disparity": _scored("nyu", "nyu", "--limit", "2", "-c", MODELS["disparity"]),
    "eval-nyu-missing-prediction": Case((_eval("nyu", "--predictions", "pred/nyu-missing", "--limit", "2"),)),
    "eval-nyu-missing-prediction-allowed": _scored("nyu", "nyu-missing", "--limit", "2", "--allow-missing"),
    "eval-kitti-predictions": _scored("kitti", "kitti", "--limit", "2"),
    "eval-scannet-predictions": _scored("scannet", "scannet", "--limit", "2", "--csv", "{out}/rows.csv"),
    "eval-diode-predictions": _scored("diode", "diode", "--limit", "2"),
    "eval-diode-outdoor-predictions": _scored("diode-outdoor", "diode", "--limit", "2"),
    "eval-nyu-normal-predictions": _scored("nyu-normal", "nyu-normal", "--limit", "2"),
    "eval-nyu-normal-per-image-flip-x": _scored("nyu-normal", "nyu-normal", "--limit", "2", "--normal-mode",
                                                "per_image", "--normal-flip", "x"),
    "eval-sintel-normal-predictions": _scored("sintel-normal", "sintel-normal", "--limit", "1"),
    "eval-dis-te-predictions": _scored("dis-te", "dis"),
    "eval-dis-vd-predictions-segment": _scored("dis-vd", "dis", "--hce-variant", "segment"),
    "eval-dis-te2-png-predictions-no-hce": _scored("dis-te2", "dis-png", "--no-hce"),
    "eval-p3m-predictions": _scored("p3m-500-np", "p3m"),
    "eval-aim-predictions": _scored("aim-500", "aim"),
    "eval-hypersim-predictions": _scored("hypersim-seg", "hypersim"),
    "eval-hypersim-labels-detectron2": _scored("hypersim-seg", "hypersim-label", "--seg-convention", "detectron2"),
    "eval-nyu-model-depth": _modelled("nyu", "depth", "--limit", "2", "--processing-res", "64"),
    "eval-nyu-model-disparity": _modelled("nyu", "disparity", "--limit", "1", "--processing-res", "64"),
    "eval-kitti-model-disparity-dpt": _modelled("kitti", "disparity-dpt", "--limit", "1", "--processing-res", "64"),
    "eval-diode-model-depth-v1": _modelled("diode", "depth-v1", "--limit", "2", "--processing-res", "32"),
    "eval-nyu-normal-model-saved": _modelled("nyu-normal", "normal", "--limit", "2", "--processing-res", "32",
                                             "--save-predictions", "{out}/saved"),
    "eval-dis-te-model-saved": _modelled("dis-te", "dis", "--processing-res", "32", "--save-predictions",
                                         "{out}/saved"),
    "eval-p3m-model": _modelled("p3m-500-np", "matting", "--processing-res", "32"),
    "eval-hypersim-model": _modelled("hypersim-seg", "seg", "--processing-res", "32"),
}

ERROR_CASES = {
    "error-predict-missing-checkpoint-folder": Case((
        ("predict", "src", "-c", "./typo/unet_depth_v2", "-o", "{out}"),)),
    "error-predict-bad-formats": Case((_predict("depth", "--formats", "npy,jpeg"),)),
    "error-predict-png-and-png16": Case((_predict("dis", "--formats", "png,png16"),)),
    "error-predict-wrong-task": Case((_predict("depth", "--task", "normal"),)),
    "error-predict-processing-res": Case((_predict("depth", res="4"),)),
    "error-predict-missing-source": Case((_predict("depth", source="nope"),)),
    "error-predict-normal-flip-on-depth": Case((_predict("depth", "--normal-flip", "y"),)),
    "error-eval-unknown-dataset": Case((("eval", "-d", "nyu2", "--data-dir", "data", "--predictions", "pred/nyu"),)),
    "error-eval-missing-archive": Case((("eval", "-d", "kitti", "--data-dir", "empty", "--predictions",
                                         "pred/kitti"),)),
    "error-eval-wrong-task-checkpoint": Case((("eval", "-d", "nyu", "--data-dir", "data", "-c", MODELS["normal"],
                                               "--limit", "1", *CPU),)),
    "error-eval-bad-space": Case((("eval", "-d", "nyu", "--data-dir", "data", "--predictions", "pred/nyu",
                                   "--space", "log"),)),  # metric became valid after the recording
    "error-eval-missing-predictions-folder": Case((("eval", "-d", "nyu", "--data-dir", "data", "--predictions",
                                                    "pred/none", "--limit", "1"),)),
}

CLI_CASES: dict[str, Case] = {**PREDICT_CASES, **EVAL_CASES, **ERROR_CASES}


# -- workspace, running and normalising ------------------------------------------------------------------
def make_workspace() -> Path:
    """A fresh workspace with everything the cases read. Its path has a fixed length, because rich wraps a
    table title holding a resolved checkpoint path at the table's width: same length, same wrapping."""
    base = "/tmp" if Path("/tmp").is_dir() else tempfile.gettempdir()
    root = Path(tempfile.mkdtemp(prefix="genpercept-golden-", dir=base))
    try:
        build_checkpoints(root)
        build_sources(root)
        build_eval_data(root)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return root


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_RATE = re.compile(r"(?:\d+(?:\.\d+)?|–) img/s")
_CLOCK = re.compile(r"-?\d+:\d\d:\d\d|-:--:--")
_BAR = re.compile(r"[━╸╺╾╼]+")
_SECONDS = re.compile(r"\b\d+(?:\.\d+)? s\b")


def normalise(text: str, root: Path) -> str:
    """Workspace path -> <ROOT>; in progress lines the rate, clocks and bar (its width follows the rate's
    digits) -> placeholders; durations "12.3 s" -> "<t> s". Everything else is kept as printed."""
    text = _ANSI.sub("", text)
    for path in {str(root.resolve()), str(root)}:
        # rich may fold a long path inside a table title: allow a line break (with padding) anywhere in it
        text = re.sub(r"(?: *\n *)?".join(map(re.escape, path)), "<ROOT>", text)
    lines = []
    for line in text.split("\n"):
        if "img/s" in line:
            line = _BAR.sub("<bar>", _CLOCK.sub("<clock>", _RATE.sub("<rate> img/s", line)))
        lines.append(_SECONDS.sub("<t> s", line))
    return "\n".join(lines)


def _normalise_value(value, root: Path):
    if isinstance(value, str):
        return normalise(value, root)
    if isinstance(value, dict):
        return {k: _normalise_value(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise_value(v, root) for v in value]
    return value


def _runner():
    from typer.testing import CliRunner

    try:  # click < 8.2 mixes stderr into stdout unless told not to
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


# A fixed terminal for rich (width, no colour) and no environment that changes what the commands read.
CLI_ENV = {"COLUMNS": "100", "LINES": "40", "HF_HUB_OFFLINE": "1", "GENPERCEPT_DATA": None, "FORCE_COLOR": None,
           "NO_COLOR": None, "TERM": "xterm"}


def observe_cli(root: Path, name: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Run a case in the workspace: (observation without arrays, {file: array} of .npy and image files)."""
    from genpercept_cli.cli import app

    case, out = CLI_CASES[name], Path("out") / name
    runner, runs = _runner(), []
    with contextlib.chdir(root):
        if case.setup:
            shutil.copytree(case.setup, out)
        for template in case.runs:
            args = [a.replace("{out}", str(out)) for a in template]
            with warnings.catch_warnings(record=True):  # library warnings are not our messages: never printed
                warnings.simplefilter("always")
                result = runner.invoke(app, args, env=CLI_ENV)
            crash = result.exception if not isinstance(result.exception, SystemExit) else None
            runs.append({"args": args, "exit_code": result.exit_code,
                         "exception": None if crash is None else normalise(f"{type(crash).__name__}: {crash}", root),
                         "stdout": normalise(result.stdout, root), "stderr": normalise(result.stderr, root)})
        files, arrays = _read_outputs(root / out, root)
    return {"runs": runs, "files": files}, arrays


def _read_outputs(folder: Path, root: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Every file below `folder` (hidden ones too), decoded: arrays for .npy and images (with their PIL
    mode), parsed JSON (paths normalised), CSV rows, text otherwise."""
    files, arrays = {}, {}
    if not folder.exists():
        return files, arrays
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        suffix = path.suffix.lower()
        if suffix == ".npy":
            arrays[rel] = np.load(path, allow_pickle=False)
            files[rel] = {"kind": "npy"}
        elif suffix in (".png", ".jpg"):
            try:
                with Image.open(path) as image:
                    files[rel] = {"kind": "image", "mode": image.mode, "format": image.format}
                    arrays[rel] = np.asarray(image)
            except OSError:
                files[rel] = {"kind": "bytes", "text": path.read_bytes().decode("utf-8", "replace")}
        elif suffix == ".json":
            files[rel] = {"kind": "json", "value": _normalise_value(json.loads(path.read_text()), root)}
        elif suffix == ".csv":
            rows = csv.reader(io.StringIO(path.read_text()))
            files[rel] = {"kind": "csv", "rows": [_normalise_value(row, root) for row in rows]}
        else:
            files[rel] = {"kind": "bytes", "text": path.read_bytes().decode("utf-8", "replace")}
        if rel in arrays:
            files[rel] |= {"dtype": str(arrays[rel].dtype), "shape": list(arrays[rel].shape)}
    return files, arrays


def library_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


@contextlib.contextmanager
def one_thread():
    """Tiny tensors: one thread is faster on a busy 2-core box, and the recording used one."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
