"""Registry resolution, local layouts, the offline error and strict loading."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny_models import write_task_repo

from genpercept_cli.checkpoints import (
    cached_status,
    default_checkpoint,
    fetch_checkpoint,
    load_registry,
    required_files,
    resolve_checkpoint,
)
from genpercept_cli.errors import CheckpointError
from genpercept_cli.loading import load_unet, load_vae

REGISTRY_NAMES = ("depth", "disparity", "disparity-dpt", "normal", "dis", "matting", "seg",
                  "depth-v1", "normal-v1", "dis-v1", "matting-v1")


def test_registry_has_every_released_model():
    registry = load_registry()
    assert tuple(registry)[: len(REGISTRY_NAMES)] == REGISTRY_NAMES  # GenPercept's first; other families follow
    assert registry["depth"].repo == "guangkaixu/genpercept-models"
    assert registry["depth"].subfolder == "unet_depth_v2"
    assert registry["disparity-dpt"].dpt_head == "dpt_head_identity"
    assert registry["normal-v1"].repo == "guangkaixu/GenPercept"
    assert {s.embedding for n, s in registry.items() if n.endswith("-v1")} == {"v1"}
    assert all(registry[name].processing_res == 768 for name in REGISTRY_NAMES)


@pytest.mark.parametrize("task,name", [("depth", "depth"), ("normal", "normal"), ("seg", "seg"),
                                       ("disparity", "disparity")])
def test_default_checkpoint_per_task(task, name):
    assert default_checkpoint(task) == name


def test_required_files_of_the_dpt_model():
    spec = resolve_checkpoint("disparity-dpt")
    assert required_files(spec) == [
        ("guangkaixu/genpercept-models", "unet_disparity_dpt_head_v2/config.json"),
        ("guangkaixu/genpercept-models", "unet_disparity_dpt_head_v2/diffusion_pytorch_model.safetensors"),
        ("guangkaixu/genpercept-models", "vae/config.json"),
        ("guangkaixu/genpercept-models", "vae/diffusion_pytorch_model.safetensors"),
        ("guangkaixu/genpercept-models", "dpt_head_identity/model.safetensors"),
    ]


@pytest.mark.parametrize("ref,repo,subfolder,task", [
    ("guangkaixu/genpercept-models/unet_normal_v2", "guangkaixu/genpercept-models", "unet_normal_v2", "normal"),
    ("guangkaixu/genpercept-models:unet_dis_v1", "guangkaixu/genpercept-models", "unet_dis_v1", "dis"),
    ("someone/finetune/unet_matting_v2", "someone/finetune", "unet_matting_v2", "matting"),
])
def test_hub_references(ref, repo, subfolder, task):
    spec = resolve_checkpoint(ref)
    assert (spec.repo, spec.subfolder, spec.task) == (repo, subfolder, task)


def test_hub_reference_v1_folder_uses_77_token_embedding():
    assert resolve_checkpoint("someone/finetune/unet_depth_v1").embedding == "v1"


def test_offline_error_names_the_files_and_where_to_put_them(tmp_path):
    with pytest.raises(CheckpointError) as err:
        fetch_checkpoint(resolve_checkpoint("depth"), cache_dir=tmp_path)
    msg = str(err.value)
    assert "offline" in msg
    assert "guangkaixu/genpercept-models/unet_depth_v2/diffusion_pytorch_model.safetensors" in msg
    assert "FOLDER/unet_depth_v2/" in msg and "FOLDER/vae/" in msg
    assert "\n" not in msg
    assert cached_status(resolve_checkpoint("depth"), cache_dir=tmp_path) == "not cached"


def test_hub_cache_is_used_offline(tmp_path, checkpoint_root):
    """Files laid out as the hub cache does are found with HF_HUB_OFFLINE=1."""
    snap = tmp_path / "models--guangkaixu--genpercept-models" / "snapshots" / ("0" * 40)
    for folder in ("unet_depth_v2", "vae"):
        shutil.copytree(checkpoint_root / folder, snap / folder)
    refs = tmp_path / "models--guangkaixu--genpercept-models" / "refs"
    refs.mkdir()
    (refs / "main").write_text("0" * 40)
    spec = resolve_checkpoint("depth")
    files = fetch_checkpoint(spec, cache_dir=tmp_path)
    assert files.unet_dir == snap / "unet_depth_v2" and files.vae_dir == snap / "vae"
    assert cached_status(spec, cache_dir=tmp_path) == "cached"


def test_local_models_root_unet_folder(checkpoint_root):
    spec = resolve_checkpoint(str(checkpoint_root / "unet_normal_v2"))
    assert spec.task == "normal" and spec.embedding == "v2"
    assert spec.unet_dir == checkpoint_root / "unet_normal_v2" and spec.vae_dir == checkpoint_root / "vae"


def test_local_per_task_repo(tmp_path):
    repo = write_task_repo(tmp_path / "genpercept-matting", "matting")
    spec = resolve_checkpoint(str(repo))
    assert spec.task == "matting" and spec.unet_dir.name == "unet_matting_v2"


def test_local_root_with_several_unets_is_refused(checkpoint_root):
    with pytest.raises(CheckpointError, match="exactly one unet_"):
        resolve_checkpoint(str(checkpoint_root))


def test_wrong_task_is_refused(checkpoint_root):
    with pytest.raises(CheckpointError, match="is a depth model, not normal"):
        resolve_checkpoint(str(checkpoint_root / "unet_depth_v2"), task="normal")
    with pytest.raises(CheckpointError, match="is a dis model, not seg"):
        resolve_checkpoint("dis", task="seg")


def test_unknown_name_lists_the_registry():
    with pytest.raises(CheckpointError, match="not a registry name .*depth, disparity"):
        resolve_checkpoint("deep")


def test_unnamed_local_folder_needs_task(tmp_path, checkpoint_root):
    shutil.copytree(checkpoint_root / "vae", tmp_path / "vae")
    shutil.copytree(checkpoint_root / "unet_depth_v2", tmp_path / "unet_custom")
    with pytest.raises(CheckpointError, match="pass --task"):
        resolve_checkpoint(str(tmp_path / "unet_custom"))
    assert resolve_checkpoint(str(tmp_path / "unet_custom"), task="dis").task == "dis"


def _copy_unet(checkpoint_root, tmp_path) -> Path:
    dst = tmp_path / "unet_depth_v2"
    shutil.copytree(checkpoint_root / "unet_depth_v2", dst)
    return dst


def test_truncated_weights_give_a_readable_error(checkpoint_root, tmp_path):
    dst = _copy_unet(checkpoint_root, tmp_path)
    weights = dst / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_unet(dst)


def test_wrong_config_lists_mismatched_keys(checkpoint_root, tmp_path):
    dst = _copy_unet(checkpoint_root, tmp_path)
    config = json.loads((dst / "config.json").read_text())
    config["layers_per_block"] = 2  # the weights have one layer per block
    (dst / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as err:
        load_unet(dst)
    assert "does not match its config" in str(err.value) and "missing" in str(err.value)


def test_missing_weight_key_is_named(checkpoint_root, tmp_path):
    from safetensors.torch import load_file, save_file

    dst = _copy_unet(checkpoint_root, tmp_path)
    weights = dst / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state.pop("conv_out.weight")
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=r"1 missing \(conv_out.weight\)"):
        load_unet(dst)


def test_v1_custom_class_name_loads_as_unet(checkpoint_root, tmp_path):
    dst = _copy_unet(checkpoint_root, tmp_path)
    config = json.loads((dst / "config.json").read_text())
    config["_class_name"] = "CustomUNet2DConditionModel"
    (dst / "config.json").write_text(json.dumps(config))
    unet = load_unet(dst)
    reference = load_unet(checkpoint_root / "unet_depth_v2")
    for (k, a), (_, b) in zip(unet.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), k


def test_vae_fp16_weights_load_in_fp32(checkpoint_root):
    vae = load_vae(checkpoint_root / "vae")
    assert next(vae.parameters()).dtype == torch.float32
    assert not any(p.is_meta for p in vae.parameters())


def test_unreachable_hub_fails_fast_naming_only_missing_files(tmp_path, checkpoint_root, monkeypatch):
    import genpercept_cli.checkpoints as ck

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(ck, "_hub_reachable", lambda timeout=3.0: False)
    snap = tmp_path / "models--guangkaixu--genpercept-models" / "snapshots" / ("1" * 40)
    shutil.copytree(checkpoint_root / "vae", snap / "vae")  # the VAE is cached, the U-Net is not
    (tmp_path / "models--guangkaixu--genpercept-models" / "refs").mkdir()
    (tmp_path / "models--guangkaixu--genpercept-models" / "refs" / "main").write_text("1" * 40)
    with pytest.raises(CheckpointError) as err:
        fetch_checkpoint(resolve_checkpoint("normal"), cache_dir=tmp_path)
    msg = str(err.value)
    assert "offline or unreachable" in msg and "unet_normal_v2/config.json" in msg
    assert "vae/config.json" not in msg
    assert cached_status(resolve_checkpoint("normal"), cache_dir=tmp_path) == "partial"
