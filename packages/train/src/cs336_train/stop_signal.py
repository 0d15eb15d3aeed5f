"""Ctrl-C (SIGINT) and SIGTERM as a request to stop, not a crash: the work in progress is saved first.

    with StopSignal() as stop:
        while ...:
            one_step()
            if stop.received is not None:
                save_a_checkpoint()
                break

The default reaction to SIGINT is a KeyboardInterrupt wherever the program happens to be, possibly in the middle
of an optimizer step or of writing a file. Remembering the signal instead lets the loop finish its step, write a
checkpoint and exit with 128 + the signal number, so that `cs336-train resume` continues exactly there.
"""

import contextlib
import signal


class StopSignal:
    """Remembers the last SIGINT/SIGTERM in `received` while active; the previous handlers come back on exit."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self) -> "StopSignal":
        for number in (signal.SIGINT, signal.SIGTERM):
            # Outside the main thread (e.g. a notebook worker) signals cannot be caught: keep the default behaviour.
            with contextlib.suppress(ValueError):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number, frame) -> None:
        self.received = number

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
