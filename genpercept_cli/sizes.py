"""The size rules of the tool (SPEC §3 step 1): the size an image is processed at, in plain integers.

Apart from `resize` (which re-exports them) so that a command checks its options without loading torch.
Size rules: "floor" (GenPercept's, E2E-FT's and Lotus' code) scales by f = min(R/W, R/H) and floors, so
the long side may come out one pixel short of R (1070x1000 at 768: 767x717); "integer" (diffusers'
Marigold) computes side * R // max(H, W) in integers (768x717).
"""

from __future__ import annotations

from .errors import GenPerceptError

MIN_SIDE = 8  # the VAE encoder halves three times; thinner inputs break its strided convolutions
SIZE_RULES = ("floor", "integer")


def check_processing_res(processing_res: int, name: str = "processing_res") -> int:
    """Refuse a processing resolution no image can use; returns it. It must be 0 (native size) or at
    least MIN_SIDE: the long side becomes `processing_res` and the short side is no longer."""
    if processing_res != 0 and processing_res < MIN_SIDE:
        raise GenPerceptError(
            f"{name} must be 0 (native size) or at least {MIN_SIDE} pixels, the model's smallest side; "
            f"got {processing_res}."
        )
    return processing_res


def processed_size(height: int, width: int, processing_res: int, rule: str = "floor") -> tuple[int, int]:
    """(h, w) after scaling the long side to `processing_res` by `rule` (SIZE_RULES, module docstring);
    0 keeps the native size.

    Raises GenPerceptError when the short side would be under MIN_SIDE pixels; the message gives sizes
    as width x height, the way image sizes are written.
    """
    if processing_res == 0:
        size = height, width
    elif rule == "integer":
        size = height * processing_res // max(height, width), width * processing_res // max(height, width)
    else:
        scale = min(processing_res / width, processing_res / height)
        size = int(height * scale), int(width * scale)
    if min(size) < MIN_SIDE:
        becomes = (f"becomes {size[1]}x{size[0]} at processing resolution {processing_res}" if processing_res
                   else "at its native size")
        raise GenPerceptError(
            f"the image is too thin: {width}x{height} {becomes}, and the model needs at least {MIN_SIDE} "
            "pixels a side."
        )
    return size
