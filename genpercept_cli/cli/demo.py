"""`genpercept demo`: serve the local web page (`genpercept_cli.demo`) until Ctrl-C."""

from __future__ import annotations

import typer

from .console import console

DEMO_EXTRA = 'genpercept demo needs Gradio, which the base install leaves out: pip install "genpercept[demo]".'


def demo_command(
    checkpoint: list[str] = typer.Option([], "--checkpoint", "-c", help="A registry name, hub id or local folder to offer first (repeatable); the registry's names are offered too. The page cannot name any other."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; 127.0.0.1 = this computer only (0.0.0.0: every network interface)."),
    port: int = typer.Option(7860, help="Port to listen on."),
    share: bool = typer.Option(False, "--share", help="Also open a public link through Gradio's share service (off unless asked)."),
    device: str = typer.Option("auto", help="auto (cuda, then cpu), cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", help="auto, fp32, fp16 or bf16, as for predict."),
    max_upload_mb: float = typer.Option(50.0, help="Largest upload, in MB."),
    max_megapixels: float = typer.Option(40.0, help="Largest image, in megapixels."),
    max_frames: int = typer.Option(300, help="Video tab: frames predicted per clip at most."),
    batch_size: int = typer.Option(4, help="Requests of several users run as one batch, up to this many."),
    models_kept: int = typer.Option(3, help="Models kept loaded between requests."),
):
    """Serve a local web page to try the models on your own pictures (needs the demo extra)."""
    import importlib.util

    from ..errors import GenPerceptError

    if not 0 < port < 65536:
        raise GenPerceptError("--port must be between 1 and 65535.")
    if models_kept < 1:
        raise GenPerceptError("--models-kept must be at least 1.")
    from ..demo import DemoLimits, DemoModels

    limits = DemoLimits(max_upload_mb, max_megapixels, max_frames, batch_size).validate()
    models = DemoModels(checkpoint)  # a bad -c stops here, before anything is served
    from ..runtime.device import resolve_device, resolve_dtype

    resolved = resolve_device(device)
    resolve_dtype(dtype, resolved)  # a bad name is refused now, not on the page
    device = str(resolved)
    if importlib.util.find_spec("gradio") is None:  # after the checks, which need no Gradio (nor its tests)
        raise GenPerceptError(DEMO_EXTRA)
    _serve(models, limits, host, port, share, device, dtype, models_kept)


def _serve(models, limits, host: str, port: int, share: bool, device: str, dtype: str, models_kept: int) -> None:
    """Load the first model, open the page, block until Ctrl-C or SIGTERM; the temporary folder (uploads,
    outputs, Gradio's cache) is removed in any case."""
    import os
    import tempfile
    import time
    from pathlib import Path

    from rich.markup import escape

    from ..errors import GenPerceptError

    root = Path(tempfile.mkdtemp(prefix="genpercept-demo-"))
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")  # uploads and Gradio's copies: inside our folder
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local page calls no one
    from ..demo import Demo, ModelCache, build_app, cleanup, copy_examples

    app = None
    try:
        demo = Demo(models, root, limits, device=device, dtype=dtype, cache=ModelCache(size=models_kept))
        if models.command_line:  # the first request should not wait; a broken checkpoint is found now
            name = models.default
            with console.status(f"loading {escape(name)}"):
                demo.cache.get(name, models.spec(name), device, dtype)
        app = build_app(demo, copy_examples(root))
        app.queue(default_concurrency_limit=1)
        try:
            _, url, share_url = app.launch(
                server_name=host, server_port=port, share=share, inbrowser=False, prevent_thread_lock=True,
                quiet=True, show_error=False, ssr_mode=False, max_file_size=int(limits.max_upload_mb * 1e6),
                allowed_paths=[str(root / "requests")], footer_links=[],
            )
        except OSError as exc:
            raise GenPerceptError(f"cannot listen on {host}:{port} ({exc}); choose another --port.") from None
        console.print(f"genpercept demo: {url}" + (f" and {share_url}" if share_url else "")
                      + f"  [dim](files in {escape(str(root))}, removed at exit; Ctrl-C stops it)[/]", highlight=False)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM turned into it by main(): a normal way to stop
        pass
    finally:
        if app is not None:
            app.close()
        cleanup(root)
    console.print("demo stopped; its temporary folder was removed.", highlight=False)
