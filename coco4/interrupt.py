"""Ctrl-C and SIGTERM end a training run cleanly: finish the step, save, say how to resume."""
import contextlib
import os
import signal

from .errors import Coco4Error


class Interrupted(Coco4Error):
    """Raised after the interrupted run's checkpoint is safely on disk."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM


class StopRequest:
    """Context manager that turns SIGINT/SIGTERM into a flag the training loop polls.

    The first signal says what happens next (the step ends, last.pt is saved). A second Ctrl-C
    falls through to Python's KeyboardInterrupt, for a user who will not wait for the step to
    end (the last last.pt written is intact: writes are atomic), except while that save is
    being written (``protected``): with --save-every, it holds epochs no file has yet.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum = None
        self._previous = {}
        self._protected = False

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
        if self.signum is None:  # the first: always noted, even during a routine save
            self.signum = signum
            _say(f"\n{signal.Signals(signum).name}: stopping after this step and saving "
                 "last.pt (Ctrl-C again stops at once, losing what was trained since the last "
                 "save)\n")
        elif self._protected:
            _say("\nsaving last.pt before stopping; it takes a moment\n")
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def protected(self):
        """A block no signal interrupts: the save a stop asked for."""
        self._protected = True
        try:
            yield
        finally:
            self._protected = False

    @property
    def requested(self) -> bool:
        return self.signum is not None


def _say(text: str) -> None:
    """A line to stderr from a signal handler: os.write, not sys.stderr, whose buffered
    writer may be in the middle of a write the handler interrupted (a reentrant call)."""
    with contextlib.suppress(OSError):
        os.write(2, text.encode())
