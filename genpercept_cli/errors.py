"""User-facing errors: one sentence, caught once at the CLI boundary, each kind with its exit code.

Exit codes of the `genpercept` command (documented in the README):
    0  everything done
    1  the run finished, but some images or samples failed (listed)
    2  usage error: a bad option, path, checkpoint, dataset or output target (nothing was done)
    3  the checkpoint's files are not on this machine and cannot be downloaded (offline)
  130  interrupted (Ctrl-C); 143 terminated (SIGTERM); files already written are complete
"""

EXIT_FAILURES = 1
EXIT_USAGE = 2
EXIT_OFFLINE = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class GenPerceptError(Exception):
    """An error a user can cause or fix (bad input, missing file, offline download).

    The message is a single sentence shown as is; the CLI exits with `exit_code`.
    """

    exit_code = EXIT_USAGE


class CheckpointError(GenPerceptError):
    """A checkpoint that cannot be found, downloaded or loaded."""


class OfflineError(CheckpointError):
    """A checkpoint whose files are not cached and cannot be downloaded (no network or HF_HUB_OFFLINE)."""

    exit_code = EXIT_OFFLINE


class DataError(GenPerceptError):
    """A dataset archive or file that is missing or malformed."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be so the same clean-up runs."""
