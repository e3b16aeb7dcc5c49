"""The command line as a new user meets it: help screens, version, checkpoint paths, exit codes."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from genpercept_cli import __version__
from genpercept_cli.checkpoints import fetch_checkpoint, resolve_checkpoint
from genpercept_cli.cli import _raise_terminated, app, user_errors
from genpercept_cli.errors import CheckpointError, OfflineError

runner = CliRunner()
COMMANDS = sorted(typer.main.get_command(app).commands)


def test_every_command_is_listed():
    assert COMMANDS == ["bench-speed", "checkpoints", "convert", "demo", "eval", "export", "predict", "train"]


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_renders_with_the_installed_typer_and_rich(command, flag):
    """typer 0.29 + rich 15 read "hub id[/subfolder]" as markup and crashed `predict --help`."""
    args = [command, flag] if command else [flag]
    result = runner.invoke(app, args)
    assert result.exception is None, repr(result.exception)
    assert result.exit_code == 0
    assert "Usage: genpercept" in result.output and "Traceback" not in result.output
    if command == "predict":
        assert "hub id[/subfolder]" in result.output and "--processing-res" in result.output


def test_help_through_the_console_script_in_a_fresh_process():
    out = subprocess.run([sys.executable, "-m", "genpercept_cli.cli", "predict", "-h"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--checkpoint" in out.stdout and out.stderr == ""


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"genpercept {__version__}"


@pytest.fixture()
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path)
    return path


def _invoke(command: str, checkpoint: str, photo, tmp_path):
    args = {
        "predict": ["predict", str(photo), "-o", str(tmp_path / "out"), "-c", checkpoint],
        "eval": ["eval", "--dataset", "nyu", "--data-dir", str(tmp_path / "no-data"), "-c", checkpoint],
        "bench-speed": ["bench-speed", "-c", checkpoint, "--resolution", "32", "--repeats", "1"],
    }[command]
    return runner.invoke(app, args)


PATH_FORMS = [
    ("./typo/unet_depth_v2", "folder ./typo/unet_depth_v2 does not exist (typo is missing)."),
    ("../x", "folder ../x does not exist."),
    ("~/no-such-genpercept-folder/unet_depth_v2", "no-such-genpercept-folder is missing"),
    ("existing/unet_depth_v2", "folder existing/unet_depth_v2 does not exist."),
    ("my models/unet_depth_v2", "folder my models/unet_depth_v2 does not exist (my models is missing)."),
    ("owner/repo--x/unet_depth_v2", "folder owner/repo--x/unet_depth_v2 does not exist (owner is missing)."),
]


@pytest.mark.parametrize("command", ["predict", "eval", "bench-speed"])
@pytest.mark.parametrize("ref,message", PATH_FORMS)
def test_a_missing_folder_is_named_not_sent_to_the_hub(command, ref, message, photo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing").mkdir()
    result = _invoke(command, ref, photo, tmp_path)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output and "HFValidationError" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("ref", ["guangkaixu/genpercept-models/unet_depth_v2", "someone/finetune:unet_normal_v1",
                                 "someone/finetune/unet_dis_v2"])
def test_hub_ids_are_still_hub_ids(ref, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint(ref).repo == "/".join(ref.replace(":", "/").split("/")[:2])


def test_a_vae_folder_passed_as_checkpoint_says_so(checkpoint_root, photo, tmp_path):
    result = _invoke("predict", str(checkpoint_root / "vae"), photo, tmp_path)
    assert result.exit_code == 2
    assert "is a VAE folder; pass the unet_* folder beside it" in result.output


def test_offline_message_for_the_dpt_model_says_where_the_head_goes(tmp_path):
    with pytest.raises(OfflineError) as err:
        fetch_checkpoint(resolve_checkpoint("disparity-dpt"), cache_dir=tmp_path)
    msg = str(err.value)
    assert "guangkaixu/genpercept-models/dpt_head_identity/model.safetensors" in msg
    assert "FOLDER/unet_disparity_dpt_head_v2/, FOLDER/vae/ and FOLDER/dpt_head_identity/" in msg


def test_hf_hub_offline_message_does_not_ask_to_connect(tmp_path):
    with pytest.raises(OfflineError) as err:
        fetch_checkpoint(resolve_checkpoint("depth"), cache_dir=tmp_path)
    assert "HF_HUB_OFFLINE is set" in str(err.value)
    assert "unset HF_HUB_OFFLINE to download them" in str(err.value) and "connect" not in str(err.value)


def test_unreachable_hub_asks_to_connect(tmp_path, monkeypatch):
    import genpercept_cli.checkpoints as ck

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(ck, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(OfflineError) as err:
        fetch_checkpoint(resolve_checkpoint("depth"), cache_dir=tmp_path)
    assert "offline or unreachable" in str(err.value) and "connect to huggingface.co and retry" in str(err.value)


def test_offline_has_its_own_exit_code(photo, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    result = runner.invoke(app, ["predict", str(photo), "-o", str(tmp_path / "out"), "--task", "depth"])
    assert result.exit_code == 3, result.output
    assert "cannot fetch checkpoint 'depth'" in result.output and "Traceback" not in result.output
    assert issubclass(OfflineError, CheckpointError) and OfflineError.exit_code == 3


def test_an_error_message_with_brackets_is_printed_as_is(capsys):
    @user_errors
    def fail():
        raise CheckpointError("no such hub id[/subfolder] [bold]x[/bold]")

    with pytest.raises(typer.Exit) as exit_:
        fail()
    assert exit_.value.exit_code == 2
    assert "no such hub id[/subfolder] [bold]x[/bold]" in capsys.readouterr().err


def test_sigterm_unwinds_like_ctrl_c(capsys):
    @user_errors
    def work():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10_000_000):  # the handler runs between bytecodes and raises here
            pass
        raise AssertionError("SIGTERM was not delivered")

    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        with pytest.raises(typer.Exit) as exit_:
            work()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert exit_.value.exit_code == 143
    assert "terminated" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--tile-above", "-1"], "--tile-above must be 0 (never) or a number of megapixels."),
    (["--repeats", "0"], "--repeats must be at least 1, not 0."),
    (["--warmup", "-1"], "--warmup must be at least 0, not -1."),
    (["--resolution", "4"], "--resolution must be at least 8, not 4."),
    (["--attention", "flash"], "--attention must be one of sdpa, classic, not 'flash'."),
    (["--cuda-graphs"], "--cuda-graphs needs --compile."),
])
def test_bench_speed_names_the_option_out_of_range(args, message):
    result = runner.invoke(app, ["bench-speed", "--random-weights", "--model-size", "tiny", *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_bench_speed_refuses_an_unwritable_json_before_benchmarking(tmp_path, monkeypatch):
    import benchmarks.speed as bench

    def never(cfg):
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr(bench, "run_benchmark", never)
    (tmp_path / "file").write_text("x")
    result = runner.invoke(app, ["bench-speed", "--random-weights", "--json", str(tmp_path / "file" / "b.json")])
    assert result.exit_code == 2
    assert f"--json {tmp_path / 'file' / 'b.json'} cannot be written: {tmp_path / 'file'} is a file" in result.output


def test_predict_refuses_an_output_under_a_file_before_loading(photo, tmp_path, monkeypatch):
    import genpercept_cli.pipeline as pipeline

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(pipeline.GenPerceptPipeline, "from_checkpoint", never)
    (tmp_path / "file").write_text("x")
    result = runner.invoke(app, ["predict", str(photo), "-o", str(tmp_path / "file" / "out")])
    assert result.exit_code == 2
    assert f"--output {tmp_path / 'file' / 'out'} cannot be written: {tmp_path / 'file'} is a file" in result.output


def test_check_writable_creates_nothing_and_names_the_reason(tmp_path, monkeypatch):
    from pathlib import Path

    from genpercept_cli.errors import GenPerceptError
    from genpercept_cli.outputs import check_writable

    target = tmp_path / "new" / "deeper" / "results.json"
    assert check_writable(target, "-o") == target
    assert list(tmp_path.iterdir()) == []  # no folder made, no probe left behind

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "touch", denied)
    with pytest.raises(GenPerceptError) as err:
        check_writable(target, "-o")
    assert str(err.value) == f"-o {target} cannot be written (Permission denied: {tmp_path})."


def test_checkpoints_lists_every_entry_with_family_resolution_status_and_where_to_get_it(tmp_path, monkeypatch):
    from genpercept_cli.checkpoints import load_registry

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing is cached
    monkeypatch.setenv("GENPERCEPT_HOME", str(tmp_path / "home"))
    result = runner.invoke(app, ["checkpoints"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:] if line and not line.startswith(" ")
            and not line.startswith(("Download", "Formats"))}
    registry = load_registry()
    assert set(rows) == set(registry)
    assert rows["depth"] == ["genpercept", "depth", "768", "not", "cached"]
    assert rows["lotus-d-normal"][:3] == ["lotus-d", "normal", "768"]
    assert rows["metaprompts-ade20k"] == ["metaprompts", "semseg", "native", "not", "downloaded"]
    nyu = registry["metaprompts-nyu"]
    assert f"  {nyu.file}  {nyu.url}" in lines
    assert f"Download these by hand into {tmp_path / 'home'}" in result.output
    assert "prs-eth/marigold-depth-v1-1 · licence: openrail++" in result.output


def _ascii_locale_run(*args: str, cwd) -> subprocess.CompletedProcess:
    """`python -m genpercept_cli ARGS` under an ASCII locale (LC_ALL=C, UTF-8 mode off, no PYTHONIOENCODING)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONIOENCODING", "LANG", "LC_CTYPE")}
    env.update(LC_ALL="C", PYTHONUTF8="0", COLUMNS="120")
    return subprocess.run([sys.executable, "-m", "genpercept_cli", *args], cwd=cwd, env=env, capture_output=True,
                          timeout=300)


def test_every_command_works_under_an_ascii_locale(photo, tmp_path, checkpoint_root):
    """checkpoints.toml and the other package files are UTF-8 whatever the locale; "·", "–" or "→" in a message
    print as "?" instead of raising UnicodeEncodeError."""
    listing = _ascii_locale_run("checkpoints", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr.decode("ascii", "replace")
    assert b"metaprompts-nyu" in listing.stdout and b"Traceback" not in listing.stderr
    run = _ascii_locale_run("predict", str(photo), "-c", str(checkpoint_root / "unet_depth_v2"), "-o", "out",
                            "--processing-res", "16", cwd=tmp_path)
    assert run.returncode == 0, run.stderr.decode("ascii", "replace")
    assert b"wrote 1 of 1 images" in run.stderr and b"Traceback" not in run.stderr
    assert (tmp_path / "out" / "photo_pred.npy").is_file()


@pytest.mark.parametrize("args,message", [
    (["predict", ""], "the source is empty (an unset shell variable?)"),
    (["predict", "  "], "the source is empty (an unset shell variable?)"),
    (["predict", "{photo}", "-o", ""], "--output is empty (an unset shell variable?)"),
    (["predict", "{photo}", "-c", ""], "--checkpoint is empty (an unset shell variable?)"),
    (["eval", "-d", "nyu", "--predictions", ""], "--predictions is empty"),
    (["eval", "-d", "nyu", "--data-dir", " "], "--data-dir is empty"),
    (["eval", "-d", "nyu", "-c", ""], "--checkpoint is empty"),
    (["eval", "-d", "nyu", "-o", ""], "--output is empty"),
    (["convert", "", "--release", "metaprompts-nyu"], "FILE is empty"),
    (["train", "--config", ""], "--config is empty"),
    (["bench-speed", "--json", ""], "--json is empty"),
])
def test_an_empty_path_is_a_usage_error_not_the_current_folder(args, message, photo, tmp_path, monkeypatch):
    """`genpercept predict "$UNSET"` predicted every image below the current folder."""
    (tmp_path / "here.png").write_bytes(photo.read_bytes())
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, [a.format(photo=photo) for a in args])
    assert result.exit_code == 2, result.output
    assert f"error: {message}" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here.png", "photo.png"]  # nothing written here


@pytest.mark.parametrize("width,description,total,expected", [
    (40, "predict", 120, "predict  57/120  48% -:--:--"),
    (40, "step 1000 loss 0.1234", 40000, "step 1000 loss…    57/40000   0% -:--:--"),
    (24, "predict", 120, "pr…  57/120  48% -:--:--"),
    (100, "predict", 120, "57/120  48% – img/s 0:00:00 -:--:--"),
])
def test_the_progress_count_stays_whole_in_a_narrow_terminal(width, description, total, expected, monkeypatch):
    """At COLUMNS=40 rich cut every column, the count to "57…"; the description is what gets shorter."""
    import importlib
    import io

    from rich.console import Console

    terminal = importlib.import_module("genpercept_cli.cli.console")
    out = io.StringIO()
    monkeypatch.setattr(terminal, "console", Console(file=out, width=width, force_terminal=False))
    with terminal.make_progress() as progress:
        progress.update(progress.add_task(description, total=total), advance=57)
    line = out.getvalue().rstrip("\n")
    assert len(line) <= width and expected in line


FIRST_LINE_PROBE = """
import importlib, sys
terminal = importlib.import_module("genpercept_cli.cli.console")
def first_line(*args, **kwargs):  # the first line printed: was torch imported before it?
    print(f"torch imported: {'torch' in sys.modules}; {args[0]}")
    raise SystemExit(0)
terminal.console.print = first_line
from genpercept_cli.cli import main
sys.argv = ["genpercept", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("command", ["predict", "eval", "bench-speed"])
def test_the_first_line_comes_before_torch_is_imported(command, photo, tmp_path, checkpoint_root):
    """Every command waited ~7 s (torch, diffusers, the weights) before its first line."""
    folder = str(checkpoint_root / "unet_depth_v2")
    args = {"predict": ["predict", str(photo), "-c", folder, "-o", str(tmp_path / "out")],
            "eval": ["eval", "-d", "nyu", "--data-dir", str(tmp_path), "-c", folder],
            "bench-speed": ["bench-speed", "--random-weights", "--resolution", "32"]}[command]
    out = subprocess.run([sys.executable, "-c", FIRST_LINE_PROBE, *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("torch imported: False; "), out.stdout
    assert {"predict": "1 images -> ", "eval": "eval nyu: checkpoint ", "bench-speed": "bench-speed: random weights"
            }[command] in out.stdout
