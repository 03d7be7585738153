"""Ctrl-C and SIGTERM end a training run cleanly: finish the step, save, say how to resume."""
import contextlib
import signal

from .errors import Coco4Error


class Interrupted(Coco4Error):
    """Raised after the interrupted run's checkpoint is safely on disk."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM


class StopRequest:
    """Context manager that turns SIGINT/SIGTERM into a flag the training loop polls.

    A second Ctrl-C falls through to Python's KeyboardInterrupt, for a user who will not wait
    for the step to end; the previous last.pt is still intact then, as writes are atomic.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum = None
        self._previous = {}

    def __enter__(self) -> "StopRequest":
        for s in self.SIGNALS:
            # not the main thread (e.g. a notebook worker): ValueError, and no handler
            with contextlib.suppress(ValueError):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None
