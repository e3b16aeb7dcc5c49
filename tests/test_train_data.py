"""Training targets, the paired folder, flip augmentation, the batch plan and the config file."""

import re

import cv2
import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from genpercept_cli.errors import DataError
from genpercept_cli.palette import NYU40_PALETTE
from genpercept_cli.train import targets
from genpercept_cli.train.config import ConfigError, load_config
from genpercept_cli.train.data import (
    BatchPlan,
    FolderSource,
    HypersimSource,
    Sample,
    VKITTISource,
    flip_sample,
    label_target,
    make_source,
)


def test_depth_normalised_between_the_2_and_98_percent_quantiles():
    depth = np.arange(1, 101, dtype=np.float64).reshape(10, 10)
    valid = np.ones_like(depth, bool)
    lo, hi = 1 + 0.02 * 99, 1 + 0.98 * 99  # numpy's linear quantiles of 1..100
    out = targets.normalize_depth(depth, valid, 0.02)
    assert out.dtype == np.float32
    assert out[4, 9] == pytest.approx((50 - lo) / (hi - lo) * 2 - 1)
    assert out[0, 0] == -1.0 and out[9, 9] == 1.0  # beyond the quantiles: clipped


def test_disparity_variant_puts_near_at_one_and_skips_invalid_pixels():
    depth = np.array([[1.0, 2.0, 4.0, 0.0]])
    valid = targets.depth_valid(depth)
    out = targets.normalize_depth(depth, valid, 0.0, disparity=True)  # 1/d = 1, 0.5, 0.25
    assert out.tolist() == [[1.0, pytest.approx((0.5 - 0.25) / 0.75 * 2 - 1), -1.0, -1.0]]
    assert valid.tolist() == [[True, True, True, False]]


def test_disparity_is_min_maxed_over_the_valid_pixels_whatever_the_quantile():
    # The reference normalises 1/d between the depth quantiles, then min-maxes the map again (invalid pixels
    # set to its minimum first): the extremes of the valid disparity land on -1 and 1.
    depth = np.array([[1.0, 2.0, 4.0, 8.0, 0.0]])
    out = targets.normalize_depth(depth, targets.depth_valid(depth), 0.2, disparity=True)
    inv = np.array([1.0, 0.5, 0.25, 0.125])
    assert np.allclose(out[0, :4], (inv - 0.125) / 0.875 * 2 - 1) and out[0, 4] == -1.0


def test_invalid_depth_pixels_take_the_reference_latent_target_value():
    # Holes (0) are nearer than the near quantile: -1; beyond the valid range (sky) past the far one: 1.
    depth = np.array([[0.0, 1.0, 2.0, 3.0, 700.0, np.nan]])
    valid = targets.depth_valid(depth, (1e-5, 80.0))
    out = targets.normalize_depth(depth, valid, 0.0)
    assert valid.tolist() == [[False, True, True, True, False, False]]
    assert out.tolist() == [[-1.0, -1.0, 0.0, 1.0, 1.0, -1.0]]


def test_valid_depth_ranges_are_the_reference_datasets():
    assert targets.depth_valid(np.array([1e-5, 2e-5, 64.9, 65.0]), HypersimSource.DEPTH_RANGE).tolist() == [
        False, True, True, False]
    assert targets.depth_valid(np.array([79.9, 80.0]), VKITTISource.DEPTH_RANGE).tolist() == [True, False]
    assert FolderSource.DEPTH_RANGE == (0.0, 1e8)


def test_normals_become_unit_vectors_and_short_ones_are_holes():
    n, valid = targets.unit_normals(np.array([[[0.0, 0.0, 2.0], [0.54, 0.72, 0.0], [0.1, 0.0, 0.0]]]))
    assert np.allclose(n[0, 0], [0, 0, 1]) and np.allclose(n[0, 1], [0.6, 0.8, 0]) and np.all(n[0, 2] == 0)
    assert valid.tolist() == [[True, True, False]]


def test_alpha_replicated_to_three_channels_in_minus_one_one():
    out = targets.alpha_to_target(np.array([[0.0, 0.25, 1.0]]))
    assert out.shape == (1, 3, 3) and np.allclose(out[0, 1], [-0.5, -0.5, -0.5]) and out[0, 2, 0] == 1.0


def test_seg_ids_become_palette_colours():
    out = targets.seg_to_target(np.array([[4, -1]]))  # black and a colour holding 255: c / 255 * 2 - 1
    assert np.allclose(out[0, 0], NYU40_PALETTE[4] / 255 * 2 - 1) and np.allclose(out[0, 1], -1.0)
    colours = np.array([[[255, 0, 127]]], np.uint8)  # a colour map as stored is taken as is
    assert np.allclose(targets.seg_to_target(colours)[0, 0], [1.0, -1.0, 127 / 255 * 2 - 1])
    # The reference min-maxes each map: one without 0 or 255 is stretched to [-1, 1]
    stretched = targets.seg_to_target(np.array([[3, 3]]))[0, 0]  # (31, 119, 180)
    assert np.allclose(stretched, (NYU40_PALETTE[3] - 31) / (180 - 31) * 2 - 1)


def test_flip_negates_normal_x_only():
    rgb = torch.arange(6.0).view(1, 1, 6).expand(3, 1, 6)
    normal = torch.tensor([0.6, 0.0, 0.8]).view(3, 1, 1).expand(3, 1, 6).clone()
    normal[:, 0, 0] = torch.tensor([0.0, 1.0, 0.0])
    mask = torch.zeros(1, 1, 6, dtype=torch.bool)
    mask[0, 0, 0] = True
    out = flip_sample(Sample(rgb, normal, mask), "normal")
    assert out.rgb[0, 0].tolist() == [5, 4, 3, 2, 1, 0]
    assert out.target[:, 0, 5].tolist() == [0.0, 1.0, 0.0]
    assert torch.allclose(out.target[:, 0, 0], torch.tensor([-0.6, 0, 0.8]))
    assert out.mask[0, 0].tolist() == [False] * 5 + [True]
    depth = flip_sample(Sample(rgb, normal, mask), "depth")
    assert torch.equal(depth.target, normal.flip(-1))  # other tasks: a plain flip


def _folder(root, labels: dict):
    (root / "rgb").mkdir(parents=True)
    for stem, (folder, writer) in labels.items():
        Image.fromarray(np.full((8, 12, 3), 100, np.uint8)).save(root / "rgb" / f"{stem}.png")
        (root / folder).mkdir(exist_ok=True)
        writer(root / folder / stem)
    return root


def test_folder_reads_16bit_depth_png_resizes_and_masks_holes(tmp_path):
    depth = np.tile(np.arange(1, 13, dtype=np.uint16) * 1000, (8, 1))
    depth[0, 0] = 0  # a hole

    def write(stem):
        cv2.imwrite(str(stem) + ".png", depth)

    source = FolderSource(_folder(tmp_path, {"a": ("depth", write)}), "depth", (8, 12), quantile=0.0)
    sample = source.load(0)
    assert sample.rgb.shape == (3, 8, 12) and torch.allclose(sample.rgb, torch.tensor(100 / 127.5 - 1))
    assert not sample.mask[0, 0, 0] and sample.mask.sum() == 95
    assert sample.target[0, 0, 0] == -1 and sample.target[:, 1, 0].tolist() == [-1.0] * 3  # the hole: near
    assert sample.target[0, 1, 11] == 1.0  # 12000 is the largest depth


def test_folder_depth_range_masks_depth_outside_it(tmp_path):
    depth = np.tile(np.arange(1, 13, dtype=np.float32), (8, 1))  # 1..12 m along each row

    def write(stem):
        np.save(str(stem) + ".npy", depth)

    root = _folder(tmp_path, {"a": ("depth", write)})
    assert make_source("folder", root, "depth", (8, 12), 0.0).load(0).mask.all()
    sample = make_source("folder", root, "depth", (8, 12), 0.0, depth_range=(1.0, 10.0)).load(0)  # NYU-like
    assert sample.mask[0, 0].tolist() == [False] + [True] * 8 + [False] * 3
    assert sample.target[0, 0, 0] == -1.0 and sample.target[0, 0, 11] == 1.0  # near hole, far beyond


def test_folder_reads_normal_png_and_matting_npy(tmp_path):
    raw = np.zeros((8, 12, 3), np.uint16)
    raw[..., 2] = 65535  # (0, 0, 1) as a 16-bit colour PNG; PIL would truncate it to 8 bits
    raw[..., 0] = 32768

    def write(stem):
        cv2.imwrite(str(stem) + ".png", raw[..., ::-1])  # OpenCV writes BGR

    n = FolderSource(_folder(tmp_path / "n", {"a": ("normal", write)}), "normal", (8, 12)).load(0)
    expected = torch.nn.functional.normalize(torch.tensor([32768 / 65535 * 2 - 1, -1.0, 1.0]), dim=0)
    assert torch.allclose(n.target[:, 3, 3], expected, atol=1e-6)
    target, valid = label_target("matting", np.array([[0.0, 0.5, 1.0]], np.float32), 0.02)
    assert np.allclose(target[0, 1], 0.0) and valid.all()
    target, _ = label_target("matting", np.array([[128, 255]], np.uint8), 0.02)  # min-maxed, as the reference
    assert np.allclose(target[0], [[-1.0] * 3, [1.0] * 3])


def _normal_folder(root):
    """normal/a.npy: (0, 0, 1) but a hole (0, 0, 0) at (0, 0) and a short (0.1, 0, 0) at (0, 1); depth/a.npy: 2 m
    but 0 (invalid) at (1, 0)."""
    normals = np.zeros((8, 12, 3), np.float32)
    normals[..., 2] = 1.0
    normals[0, 0], normals[0, 1] = 0.0, [0.1, 0.0, 0.0]
    depth = np.full((8, 12), 2.0, np.float32)
    depth[1, 0] = 0.0
    root = _folder(root, {"a": ("normal", lambda stem: np.save(str(stem) + ".npy", normals))})
    (root / "depth").mkdir()
    np.save(root / "depth" / "a.npy", depth)
    return root


def test_normal_training_mask_is_the_releases(tmp_path):
    # The release trains normals valid where any stored component is not 0, divided by their length; a normal
    # at invalid depth becomes 0 yet stays in the mask, so the angular loss counts pi/2 there.
    from genpercept_cli.train.config import LossConfig
    from genpercept_cli.train.losses import task_loss

    root = _normal_folder(tmp_path)
    sample = make_source("folder", root, "normal", (8, 12), 0.02).load(0)
    assert not sample.mask[0, 0, 0] and sample.mask[0, 0, 1] and sample.mask[0, 1, 0] and sample.mask.sum() == 95
    assert sample.target[:, 0, 1].tolist() == [1.0, 0.0, 0.0] and sample.target[:, 1, 0].tolist() == [0.0] * 3
    pred = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 8, 12)
    angular = task_loss("normal", pred, sample.target[None], sample.mask[None], LossConfig())["angular"]
    # cos clamped to 1 - 1e-4 (in float32, as the loss) where aligned; cos 0 at (0, 1) and the blanked (1, 0)
    expected = (93 * np.arccos(np.float64(np.float32(1 - 1e-4))) + 2 * np.pi / 2) / 95
    assert float(angular) == pytest.approx(expected, rel=1e-6)
    # data.normal_mask = "length": |n| > 0.5 (SPEC 6.2's evaluation rule), depth not read
    sample = make_source("folder", root, "normal", (8, 12), 0.02, normal_mask="length").load(0)
    assert not sample.mask[0, 0, 1] and sample.mask.sum() == 94 and sample.target[:, 1, 0].tolist() == [0.0, 0.0, 1.0]


def test_normal_depth_of_another_size_is_refused(tmp_path):
    root = _normal_folder(tmp_path)
    np.save(root / "depth" / "a.npy", np.ones((4, 6), np.float32))
    with pytest.raises(DataError, match=r"a\.npy is 6x4, its normals 12x8"):
        make_source("folder", root, "normal", (8, 12), 0.02).load(0)


def test_folder_refuses_an_image_without_label_and_names_the_missing_folder(tmp_path):
    root = _folder(tmp_path, {"a": ("depth", lambda s: np.save(str(s) + ".npy", np.ones((8, 12))))})
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "rgb" / "b.png")
    with pytest.raises(DataError, match=r"depth/b\.\* is missing"):
        FolderSource(root, "depth", (8, 8))
    where = re.escape(str(root))
    layout = "training folder holds its images in rgb/, im/ or blurred_image/ and its labels in"
    with pytest.raises(DataError, match=f"^{where} has no label folder: a matting {layout} alpha/ or mask/.$"):
        FolderSource(root, "matting", (8, 8))
    (root / "rgb").rename(root / "photos")
    with pytest.raises(DataError, match=f"^{where} has no image folder: a depth {layout} depth/.$"):
        FolderSource(root, "depth", (8, 8))


def test_folder_reads_the_dis5k_and_p3m_layouts(tmp_path):
    gt = np.zeros((8, 12), np.uint8)
    gt[:, 6:] = 255
    for root, image_dir, label_dir, task in ((tmp_path / "DIS-TR", "im", "gt", "dis"),
                                              (tmp_path / "P3M", "blurred_image", "mask", "matting")):
        (root / image_dir).mkdir(parents=True)
        (root / label_dir).mkdir()
        Image.fromarray(np.full((8, 12, 3), 10, np.uint8)).save(root / image_dir / "p_1.jpg")
        Image.fromarray(gt).save(root / label_dir / "p_1.png")
        sample = FolderSource(root, task, (8, 12)).load(0)
        assert sample.target[:, 0, 0].tolist() == [-1.0] * 3 and sample.target[:, 0, 11].tolist() == [1.0] * 3


def test_plan_mixes_sources_by_ratio_and_walks_each_without_replacement():
    plan = BatchPlan([10, 5], [0.9, 0.1], seed=3, flip_p=0.5, timestep=None)
    draws = [d for _ in range(400) for d in plan.next_batch(10)]
    share = sum(d.source == 0 for d in draws) / len(draws)
    assert 0.87 < share < 0.93
    first = [d.index for d in draws if d.source == 0][:10]
    assert sorted(first) == list(range(10))  # one epoch of source 0: every sample once
    assert 0.45 < np.mean([d.flip for d in draws]) < 0.55
    assert {d.timestep for d in draws} <= set(range(1000)) and len({d.timestep for d in draws}) > 500


def test_plan_draws_each_micro_batch_from_one_source():
    plan = BatchPlan([10, 5, 7], [1, 1, 1], seed=0, flip_p=0.0, timestep=None)
    for _ in range(20):
        draws = plan.next_batch(8, group=4)
        assert len({d.source for d in draws[:4]}) == 1 and len({d.source for d in draws[4:]}) == 1


def test_plan_resumes_exactly_from_its_state():
    plan = BatchPlan([7, 3], [1, 1], seed=5, flip_p=0.5, timestep=None)
    for _ in range(3):
        plan.next_batch(4)
    state = plan.state_dict()
    expected = [plan.next_batch(4) for _ in range(3)]
    fresh = BatchPlan([7, 3], [1, 1], seed=5, flip_p=0.5, timestep=None)
    fresh.load_state_dict(state)
    assert [fresh.next_batch(4) for _ in range(3)] == expected
    assert {d.timestep for d in BatchPlan([3], [1], 0, 0.0, timestep=7).next_batch(5)} == {7}


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('steps = 10\n[model]\nunet = "u"\nvae = "v"\ntask = "normal"\n'
                    '[[data.sources]]\npath = "a"\nratio = 0.9\n[[data.sources]]\npath = "b"\nratio = 0.1\n')
    cfg = load_config(path, ["optim.lr=1e-5", "model.timestep=1", "output=runs/x"])
    assert cfg.steps == 10 and cfg.model.task == "normal" and cfg.optim.lr == 1e-5 and cfg.model.timestep == 1
    assert [(s.path, s.ratio) for s in cfg.data.sources] == [("a", 0.9), ("b", 0.1)] and cfg.output == "runs/x"


@pytest.mark.parametrize(("override", "message"), [
    ("optim.lr=-1", "optim.lr must be > 0"),
    ("model.task=semseg", "model.task must be one of"),
    ("model.timestep=1000", "model.timestep must be"),
    ("optim.lrr=1", "unknown setting optim.lrr"),
    ("steps=many", "steps must be an integer, not 'many'"),
    ("optim.lr=\"fast\"", "optim.lr must be a number, not 'fast'"),
    ("model.dpt_head=1", "model.dpt_head must be true or false, not 1"),
    ("data.size=[10, 16]", "data.size must be"),
    ('data.sources=[{path="a", size=[9, 16]}]', r"data.sources\[0\].size must be"),
    ('data.sources=[{path="a", kind="nyu"}]', r"data.sources\[0\].kind must be one of folder, vkitti, hypersim"),
    ("nonsense", "--set takes key=value"),
    ('data.sources=[{path="a", depth_range=[80, 1e-5]}]', r"data.sources\[0\].depth_range must be \[min, max\]"),
    ('loss.reduction="pixels"', "loss.reduction must be one of batch, sample"),
    ('loss.gradient_directions="x"', "loss.gradient_directions one of vertical, both"),
    ("loss.pixel_mse=0", "every term of the depth task has weight 0"),
    ('data.normal_mask="any"', "data.normal_mask must be one of nonzero, length"),
])
def test_config_refuses_bad_values_in_one_sentence(override, message):
    base = ['model.unet="u"', 'model.vae="v"', 'data.sources=[{path="a"}]', "loss.ssi=0", "loss.gradient=0"]
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*base, override])


def test_vkitti_crops_to_the_benchmark_window_and_drops_sky(tmp_path):
    frames = tmp_path / "Scene01" / "clone" / "frames"
    (frames / "rgb" / "Camera_0").mkdir(parents=True)
    (frames / "depth" / "Camera_0").mkdir(parents=True)
    rgb = np.zeros((360, 1240, 3), np.uint8)
    rgb[8:, 12:1228] = 200  # exactly the window: bottom 352 rows, columns 12..1227
    Image.fromarray(rgb).save(frames / "rgb" / "Camera_0" / "rgb_00000.jpg", quality=100)
    depth = np.full((360, 1240), 1000, np.uint16)  # 10 m
    depth[8:, 12:620] = 2000  # 20 m: the left half of the window
    depth[8:20, 12:1228] = 65535  # sky: 655.35 m, invalid
    cv2.imwrite(str(frames / "depth" / "Camera_0" / "depth_00000.png"), depth)
    source = make_source("vkitti", tmp_path, "depth", (352, 1216), 0.0)
    sample = source.load(0)
    assert isinstance(source, VKITTISource) and len(source) == 1
    assert sample.rgb.min() > 0.5  # nothing outside the window
    assert not sample.mask[0, :12].any() and sample.mask[0, 12:].all()
    assert sample.target[0, 100, 0] == 1.0 and sample.target[0, 100, 1215] == -1.0  # far = 1 in depth
    with pytest.raises(DataError, match="depth or disparity"):
        VKITTISource(tmp_path, "normal", (352, 1216))


def _hypersim_frame(root, name: str, array: np.ndarray):
    images = root / "ai_001_001" / "images"
    (images / "scene_cam_00_final_preview").mkdir(parents=True, exist_ok=True)
    (images / "scene_cam_00_geometry_hdf5").mkdir(exist_ok=True)
    rgb = images / "scene_cam_00_final_preview" / "frame.0000.tonemap.jpg"
    Image.fromarray(np.full((8, 16, 3), 90, np.uint8)).save(rgb)
    with h5py.File(images / "scene_cam_00_geometry_hdf5" / f"frame.0000.{name}.hdf5", "w") as fh:
        fh["dataset"] = array


def test_hypersim_depth_is_made_planar(tmp_path):
    _hypersim_frame(tmp_path, "depth_meters", np.full((8, 16), 5.0, np.float16))
    sample = HypersimSource(tmp_path, "depth", (8, 16), 0.0).load(0)
    f = 886.81 * 16 / 1024
    x, y = np.meshgrid(np.arange(16) + 0.5 - 8, 4 - (np.arange(8) + 0.5))
    planar = 5.0 * f / np.sqrt(x**2 + y**2 + f**2)  # a constant distance: depth largest on the axis
    expected = (planar - planar.min()) / (planar.max() - planar.min()) * 2 - 1
    assert torch.allclose(sample.target[0], torch.from_numpy(expected).float(), atol=1e-5)
    assert sample.mask.all()


def test_hypersim_normals_face_the_camera_and_seg_ids_become_colours(tmp_path):
    normals = np.zeros((8, 16, 3), np.float32)
    normals[..., 2] = -1.0  # pointing away from the camera: negated
    normals[:, :8] = [0.0, 0.0, 1.0]
    _hypersim_frame(tmp_path, "normal_cam", normals)
    _hypersim_frame(tmp_path, "semantic", np.full((8, 16), 5, np.int16))
    n = HypersimSource(tmp_path, "normal", (8, 16)).load(0)
    assert torch.allclose(n.target[2], torch.ones(8, 16))
    seg = HypersimSource(tmp_path, "seg", (8, 16)).load(0)
    colour = NYU40_PALETTE[5].astype(np.float64)  # one class: min-maxed over the map's values
    expected = (colour - colour.min()) / (colour.max() - colour.min()) * 2 - 1
    assert torch.allclose(seg.target[:, 0, 0], torch.from_numpy(expected).float())
    with pytest.raises(DataError, match="no Hypersim frames with depth_meters"):
        HypersimSource(tmp_path, "depth", (8, 16))
    depth = np.full((8, 16), 5.0, np.float16)
    depth[2, 3] = 70.0  # beyond Hypersim's 65 m: the normal there becomes 0, still counted
    _hypersim_frame(tmp_path, "depth_meters", depth)
    n = HypersimSource(tmp_path, "normal", (8, 16)).load(0)
    assert n.target[:, 2, 3].tolist() == [0.0] * 3 and n.mask.all() and n.target[2].sum() == 8 * 16 - 1
