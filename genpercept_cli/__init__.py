"""genpercept: run, evaluate and benchmark GenPercept one-step dense-perception models.

Public API (imported lazily so `genpercept --help` never pays for torch):

    from genpercept_cli import GenPerceptPipeline
    pipe = GenPerceptPipeline.from_checkpoint("depth")   # registry name, hub id or local folder
    depth = pipe(rgb_uint8)                               # float32 [H, W] in [0, 1], 0 = near
"""

__version__ = "0.1.0"
__all__ = ["GenPerceptPipeline", "resolve_checkpoint", "read_rgb", "__version__"]


def __getattr__(name):
    if name == "GenPerceptPipeline":
        from .pipeline import GenPerceptPipeline

        return GenPerceptPipeline
    if name == "resolve_checkpoint":
        from .checkpoints import resolve_checkpoint

        return resolve_checkpoint
    if name == "read_rgb":
        from .images import read_rgb

        return read_rgb
    raise AttributeError(f"module 'genpercept_cli' has no attribute {name!r}")
