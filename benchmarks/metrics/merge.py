"""Merging the states of accumulators that each saw a disjoint part of a dataset.

Accumulators keep their per-image contributions keyed by the image's index (its position in the dataset)
and reduce them in index order, so merging the parts of a split run reproduces, float for float, the
result of one accumulator that saw every image in order.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

Entry = TypeVar("Entry")


def union_by_index(parts: Iterable[dict[int, Entry]], what: str) -> dict[int, Entry]:
    """One {index: per-image entry} map from several, ordered by index.

    Raises ValueError naming the first index found in two parts: the parts must be disjoint (a sampler that
    pads the last batch with repeated images would otherwise count them twice).
    """
    merged: dict[int, Entry] = {}
    for part in parts:
        for index, entry in part.items():
            if index in merged:
                raise ValueError(f"image {index} is in more than one {what} state; merged parts must be disjoint")
            merged[index] = entry
    return dict(sorted(merged.items()))


def check_settings(states: Iterable[dict], settings: dict, what: str) -> None:
    """Raise ValueError when a state's "settings" differ from `settings` (e.g. another normal mode)."""
    for state in states:
        if state["settings"] != settings:
            raise ValueError(f"cannot merge a {what} state made with {state['settings']} into one made with {settings}")


def check_new_index(index: int, seen: dict, what: str) -> None:
    """Raise ValueError when image `index` was already added (it would be counted twice)."""
    if index in seen:
        raise ValueError(f"image {index} was already added to this {what}")
