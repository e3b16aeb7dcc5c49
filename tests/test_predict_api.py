"""`PredictOptions` and `run_predict` from Python: the same refusals, in the same words, as `genpercept predict`."""

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from genpercept_cli.checkpoints import resolve_checkpoint
from genpercept_cli.cli import app
from genpercept_cli.errors import GenPerceptError
from genpercept_cli.outputs import DEFAULT_FORMATS
from genpercept_cli.pipeline import GenPerceptPipeline
from genpercept_cli.predict import PredictOptions, discover_images, run_predict


@pytest.fixture()
def source(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(src / "a.png")
    return src


@pytest.mark.parametrize("options,flags", [
    ({"formats": "jpeg"}, ["--formats", "jpeg"]),
    ({"processing_res": 7}, ["--processing-res", "7"]),
    ({"batch_size": -1}, ["--batch-size", "-1"]),
    ({"workers": 0}, ["--workers", "0"]),
    ({"tile_above": -1.0}, ["--tile-above", "-1"]),
    ({"normal_flip": "x"}, ["--normal-flip", "x"]),
])
def test_options_refuse_what_the_command_refuses_in_its_words(source, tmp_path, checkpoint_root, options, flags):
    model = str(checkpoint_root / "unet_depth_v2")
    with pytest.raises(GenPerceptError) as err:
        PredictOptions(**options).validate(resolve_checkpoint(model))
    result = CliRunner().invoke(app, ["predict", str(source), "-c", model, "-o", str(tmp_path / "o"), *flags])
    assert result.exit_code == 2 and result.output.strip() == f"error: {err.value}"


def test_bad_normal_flip_axes_are_refused_for_a_normal_model(checkpoint_root):
    with pytest.raises(GenPerceptError, match="Invalid normal flip 'q'"):
        PredictOptions(normal_flip="q").validate(resolve_checkpoint(str(checkpoint_root / "unet_normal_v2")))


def test_validate_fills_in_the_checkpoint_defaults_and_is_idempotent(checkpoint_root):
    depth = resolve_checkpoint(str(checkpoint_root / "unet_depth_v2"))
    resolved = PredictOptions().validate(depth)
    assert resolved == PredictOptions(processing_res=depth.processing_res, formats=DEFAULT_FORMATS["depth"])
    assert resolved.validate(depth) == resolved
    normal = resolve_checkpoint(str(checkpoint_root / "unet_normal_v2"))
    resolved = PredictOptions(processing_res=0, formats=("npy", "png", "npy"), normal_flip="ZY").validate(normal)
    assert (resolved.processing_res, resolved.formats, resolved.normal_flip) == (0, ("npy", "rgb"), "yz")


def test_run_predict_refuses_bad_options_before_touching_the_output(source, tmp_path, checkpoint_root):
    pipe = GenPerceptPipeline.from_checkpoint(str(checkpoint_root / "unet_depth_v2"))
    out = tmp_path / "out"
    with pytest.raises(GenPerceptError, match="--workers must be at least 1."):
        run_predict(pipe, discover_images(str(source)).images, out, PredictOptions(workers=0))
    assert not out.exists()


def test_run_predict_writes_the_pipeline_result_and_restores_tiling(source, tmp_path, checkpoint_root):
    pipe = GenPerceptPipeline.from_checkpoint(str(checkpoint_root / "unet_depth_v2"))
    images = discover_images(str(source)).images
    report = run_predict(pipe, images, tmp_path / "out", PredictOptions(processing_res=32, formats="npy",
                                                                        tile_above=0.0))
    assert (report.written, report.failed) == (1, [])
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a_pred.npy"]
    expected = pipe(np.asarray(Image.open(source / "a.png")), processing_res=32)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "a_pred.npy"), expected)
    pipe.tiled_decode_above = 123
    run_predict(pipe, images, tmp_path / "again", PredictOptions(processing_res=32, formats="npy"))
    assert pipe.tiled_decode_above == 123  # the options' 16 MP held for the run only
