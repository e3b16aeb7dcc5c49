"""Golden outputs: the pipeline, `genpercept predict` and `genpercept eval` (and their usage errors) give
what the recorded code gave, so a restructure can show that nothing changed.

The cases live in tests/golden/cases.py; tests/golden/record.py wrote tests/golden/*.json|npz from the
code being frozen. Tolerances are those of fp32 arithmetic on another CPU: the recording was made with
AVX-512 kernels, and the same maths with AVX2 kernels (an AMD EPYC without AVX-512) sums in another order,
which moved float outputs by up to 2.5e-5 (normals, renormalised), metrics by up to 7e-7 relative and a few
rounded pixels by one level. So: float arrays max |Δ| <= 1e-4 (unit normals also after renormalising);
images (8- or 16-bit PNGs) within one level (16-bit: ARRAY_ATOL of full scale) on at most 5% of their
values, the rest exact; integer arrays exact; metrics relative 1e-5 (a
behaviour change moves them by far more); everything else (file lists, exit codes, messages with timings,
rates and workspace paths normalised, JSON keys and types) exact. It runs under every
environment CI builds (the newest and the oldest supported releases pass it unchanged); should a new
library release move a value, the failure names it, and tests/golden/meta.json records the versions the
recording was made with. Regenerate from the frozen commit:

    python tests/golden/record.py --from-commit 48cfd03
"""

from __future__ import annotations

import difflib
import json
import math
import shutil

import numpy as np
import pytest
from golden import cases

ARRAY_ATOL = 1e-4
IMAGE_LEVELS, IMAGE_FRACTION = 1, 0.05  # 8-bit images: at most one level off, on at most 5% of values
METRIC_RTOL = 1e-5
METRIC_ATOL = 1e-12  # for metrics that are 0


@pytest.fixture(scope="module")
def golden():
    with np.load(cases.PIPELINE_NPZ) as pipeline, np.load(cases.CLI_NPZ) as cli_arrays:
        return {"pipeline": dict(pipeline), "cli": json.loads(cases.CLI_JSON.read_text()),
                "cli_arrays": dict(cli_arrays)}


@pytest.fixture(scope="module")
def workspace(golden):
    with cases.one_thread():
        root = cases.make_workspace()
        try:
            yield root
        finally:
            shutil.rmtree(root, ignore_errors=True)


def test_recording_holds_every_case_and_nothing_else(golden):
    assert set(golden["cli"]) == set(cases.CLI_CASES)
    expected = {f"{m}/{i}/res{r}" for m in cases.MODELS for i in cases.IMAGES for r in cases.PIPELINE_RES}
    expected |= {f"{m}/batch2-{k}/res64" for m in cases.MODELS for k in range(3)}
    assert set(golden["pipeline"]) == expected


@pytest.mark.parametrize("model", cases.MODELS)
def test_pipeline_matches_golden(workspace, golden, model):
    actual = cases.observe_pipeline(workspace, model)
    expected = {k: v for k, v in golden["pipeline"].items() if k.split("/")[0] == model}
    assert sorted(actual) == sorted(expected)
    problems = []
    for key, want in expected.items():
        problems += compare_array(actual[key], want, key, exact=False)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", cases.CLI_CASES)
def test_command_matches_golden(workspace, golden, name):
    actual, arrays = cases.observe_cli(workspace, name)
    expected = golden["cli"][name]
    problems = compare_runs(actual["runs"], expected["runs"])
    problems += compare_files(actual["files"], arrays, expected["files"], golden["cli_arrays"], name)
    assert not problems, f"{name}:\n" + "\n".join(problems)


# -- comparisons: each returns a list of differences, one line (or a diff) each -----------------------------
def compare_array(actual: np.ndarray, expected: np.ndarray, what: str, exact: bool) -> list[str]:
    """Same dtype and shape; integer values equal (`exact`: images, within IMAGE_LEVELS on at most
    IMAGE_FRACTION of them) or float values within ARRAY_ATOL with NaN where NaN was; unit normals
    ([..., 3] with norms of 1) also after renormalising."""
    if actual.dtype != expected.dtype or actual.shape != expected.shape:
        return [f"{what}: {actual.dtype}{list(actual.shape)}, expected {expected.dtype}{list(expected.shape)}"]
    if exact or expected.dtype.kind not in "fc":
        differ = actual != expected
        if not differ.any():
            return []
        delta = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        # an image: a value rounded on the other side of a level by another CPU's fp32 sums
        if exact and expected.dtype.kind in "ui":
            levels = max(IMAGE_LEVELS, math.floor(ARRAY_ATOL * np.iinfo(expected.dtype).max))
            if delta.max() <= levels and differ.mean() <= IMAGE_FRACTION:
                return []
        return [f"{what}: {int(differ.sum())} of {differ.size} values differ (max |Δ| {delta.max():g})"]
    problems = _close(actual, expected, what)
    unit = expected.ndim == 3 and expected.shape[-1] == 3
    if unit and np.all(np.abs(np.linalg.norm(expected.astype(np.float64), axis=-1) - 1) < 1e-3):
        renorm = [a / np.linalg.norm(a.astype(np.float64), axis=-1, keepdims=True) for a in (actual, expected)]
        problems += _close(*renorm, f"{what} (renormalised)")
    return problems


def _close(actual: np.ndarray, expected: np.ndarray, what: str) -> list[str]:
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    if not np.array_equal(np.isnan(a), np.isnan(e)):
        return [f"{what}: NaN at other places"]
    delta = np.abs(np.where(np.isnan(e), 0, a - e))
    if delta.max(initial=0) > ARRAY_ATOL:
        over = int((delta > ARRAY_ATOL).sum())
        return [f"{what}: max |Δ| {delta.max():.3g} > {ARRAY_ATOL:g} ({over} of {delta.size} values)"]
    return []


def compare_runs(actual: list[dict], expected: list[dict]) -> list[str]:
    if len(actual) != len(expected):
        return [f"{len(actual)} runs, expected {len(expected)}"]
    problems = []
    for k, (got, want) in enumerate(zip(actual, expected)):
        for key in ("args", "exception", "exit_code"):
            if got[key] != want[key]:
                problems.append(f"run {k} {key}: {got[key]!r}, expected {want[key]!r}")
        for stream in ("stdout", "stderr"):
            if got[stream] != want[stream]:
                diff = difflib.unified_diff(want[stream].splitlines(), got[stream].splitlines(), "golden", "now",
                                            lineterm="")
                problems.append(f"run {k} {stream} differs:\n" + "\n".join(diff))
    return problems


def compare_files(actual: dict, arrays: dict, expected: dict, golden_arrays: dict, name: str) -> list[str]:
    problems = []
    if sorted(actual) != sorted(expected):
        missing, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
        problems.append(f"files written differ: missing {missing}, unexpected {extra}")
    for rel in sorted(set(actual) & set(expected)):
        got, want = actual[rel], expected[rel]
        meta = {k: v for k, v in want.items() if k not in ("value", "rows")}
        if {k: v for k, v in got.items() if k not in ("value", "rows")} != meta:
            problems.append(f"{rel}: {got}, expected {want}")
        elif want["kind"] in ("npy", "image"):
            problems += compare_array(arrays[rel], golden_arrays[f"{name}/{rel}"], rel, exact=want["kind"] == "image")
        elif want["kind"] == "json":
            problems += compare_json(got["value"], want["value"], rel)
        elif want["kind"] == "csv":
            problems += compare_csv(got["rows"], want["rows"], rel)
    return problems


def compare_json(actual, expected, where: str) -> list[str]:
    """Same structure, key order and types; floats within METRIC_RTOL; everything else equal."""
    if type(actual) is not type(expected):
        return [f"{where}: {actual!r}, expected {expected!r}"]
    if isinstance(expected, dict):
        if list(actual) != list(expected):
            return [f"{where}: keys {list(actual)}, expected {list(expected)}"]
        return [p for key in expected for p in compare_json(actual[key], expected[key], f"{where}.{key}")]
    if isinstance(expected, list):
        if len(actual) != len(expected):
            return [f"{where}: {actual!r}, expected {expected!r}"]
        return [p for k, (a, e) in enumerate(zip(actual, expected)) for p in compare_json(a, e, f"{where}[{k}]")]
    if isinstance(expected, float):
        return [] if _metric_close(actual, expected) else [f"{where}: {actual!r}, expected {expected!r}"]
    return [] if actual == expected else [f"{where}: {actual!r}, expected {expected!r}"]


def compare_csv(actual: list[list[str]], expected: list[list[str]], where: str) -> list[str]:
    """Same rows and cells; a cell written as a float ("0.25", "nan") within METRIC_RTOL of the recorded
    one, other cells (keys, integers) as written."""
    if [len(r) for r in actual] != [len(r) for r in expected]:
        return [f"{where}: rows of {[len(r) for r in actual]} cells, expected {[len(r) for r in expected]}"]
    problems = []
    for i, (got_row, want_row) in enumerate(zip(actual, expected)):
        for j, (got, want) in enumerate(zip(got_row, want_row)):
            if got == want:
                continue
            if not (_is_float_text(got) and _is_float_text(want) and _metric_close(float(got), float(want))):
                problems.append(f"{where} row {i} column {expected[0][j]!r}: {got!r}, expected {want!r}")
    return problems


def _is_float_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return not text.lstrip("-").isdigit()  # an integer must stay an integer


def _metric_close(actual: float, expected: float) -> bool:
    if math.isnan(expected):
        return math.isnan(actual)
    return math.isclose(actual, expected, rel_tol=METRIC_RTOL, abs_tol=METRIC_ATOL)
