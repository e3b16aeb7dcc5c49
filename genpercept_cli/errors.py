"""User-facing errors: one sentence, caught once at the CLI boundary."""


class GenPerceptError(Exception):
    """An error a user can cause or fix (bad input, missing file, offline download).

    The message is a single sentence shown as is; the CLI exits with status 2.
    """


class CheckpointError(GenPerceptError):
    """A checkpoint that cannot be found, downloaded or loaded."""


class DataError(GenPerceptError):
    """A dataset archive or file that is missing or malformed."""
