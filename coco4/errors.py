"""The library's one error type: a problem with the user's input or environment, phrased as
what was wrong and what to do. Library code raises it and never prints; the entry scripts'
runner (``cli.run``) prints it as one line and exits with its status."""


class Coco4Error(Exception):
    """Shown as ``error: <message>``, exit status ``exit_code``; tests and the notebook catch
    it like any exception."""

    exit_code = 2


class GateFailed(Coco4Error):
    """A quality gate (``evaluate.py --min-class-acc``, export's parity check) was not met:
    exit 1, like a failing test."""

    exit_code = 1


def first_line(error: BaseException) -> str:
    """An exception's first non-empty line (libraries' messages run to pages), or its type."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()),
                type(error).__name__)
