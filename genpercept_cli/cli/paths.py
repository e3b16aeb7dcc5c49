"""Path flags and arguments: an empty or blank value (an unset shell variable, `-o "$OUT"`) is a usage error,
never the current folder that `Path("")` would silently stand for."""

from __future__ import annotations

from pathlib import Path

from ..errors import GenPerceptError


def given_path(option: str):
    """A Typer `parser` for `option`: the text as a Path; GenPerceptError (exit 2) when it is empty or blank."""

    def parse(value) -> Path:
        if isinstance(value, str) and not value.strip():
            raise GenPerceptError(f"{option} is empty (an unset shell variable?); give a path.")
        return Path(value)

    return parse
