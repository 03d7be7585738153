"""The one exception type a user sees as a one-line message instead of a traceback."""


class Coco4Error(Exception):
    """A problem with the user's input or environment, phrased as what was wrong and what to do.

    The entry scripts print it as ``error: <message>`` and exit with ``exit_code``; library code
    raises it and never prints, so tests and the notebook can catch it.
    """

    exit_code = 2


class GateFailed(Coco4Error):
    """A quality gate (``evaluate.py --min-class-acc``) was not met: exit 1, like a failing test."""

    exit_code = 1
