"""Progress of the pipeline's tokenizer and encoding stages, fed by cs336-bpe's `on_progress` hooks.

`train_bpe(..., on_progress=progress)` calls `progress(stage, done, total)` with stage "pretokenize" (bytes read)
or "merge" (merges made); `encode_file(..., on_progress=...)` calls it with (bytes done, bytes total). On a
terminal each stage gets a progress bar, as `cs336-bpe train` and `encode` draw them; where stderr is a file or a
pipe (a log, CI), a bar would be a smear of carriage returns, so a plain line is written every `interval_s`
seconds while a stage runs, and when it ends:

    pre-tokenizing: 1,024.0 of 2,227.8 MB (46%), 30 s
    pre-tokenizing: done, 2,227.8 MB in 64 s
    merging: done, 9,743 merges in 41 s
"""

import sys
import time
from collections.abc import Callable

import click

LABELS = {"pretokenize": "pre-tokenizing", "merge": "merging", "encode": "encoding"}
UNITS = {"pretokenize": "bytes", "merge": "merges", "encode": "bytes"}


class StageProgress:
    """A progress report per stage; call it with (stage, done, total), then `close()` when all stages are done.

    interactive: draw bars (True) or write plain lines through `say` (False); default: whether stderr is a
    terminal.
    """

    def __init__(self, say: Callable[[str], None] = print, interactive: bool | None = None,
                 interval_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.say, self.interval_s, self.clock = say, interval_s, clock
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.stage = self.label = None
        self.unit = ""
        self.bar = None
        self.finished = False  # the current stage has reached its total (and said so)
        self.done = self.total = 0
        # A stage reports first only after its first chunk of work, so its clock starts when the previous stage
        # ended (or when this object was made), not at that first report.
        self.previous_end = clock()
        self.started = self.last_line = self.previous_end

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage == self.stage and self.finished:
            return
        if stage != self.stage:
            self.close()
            self._start(stage, total)
        if self.bar is not None:
            self.bar.update(done - self.done)
        self.done, self.total = done, total
        if self.bar is None:
            now = self.clock()
            if done >= total:
                self.say(f"{self.label}: done, {self._amount(total)} in {now - self.started:.0f} s")
                self.finished, self.previous_end = True, now
            elif now - self.last_line >= self.interval_s:
                self.say(f"{self.label}: {self._fraction(done, total)} ({100 * done / total:.0f}%), "
                         f"{now - self.started:.0f} s")
                self.last_line = now

    def encoding(self, name: str) -> Callable[[int, int], None]:
        """The hook for `encode_file(on_progress=...)`, whose calls carry no stage: this one is 'encoding NAME'."""
        return lambda done, total: self(f"encode {name}", done, total)

    def close(self) -> None:
        """End the current stage: close its bar, or say where it stopped if it ended before its total (a text that
        supports fewer merges than asked stops merging early)."""
        if self.stage is not None and not self.finished:
            if self.bar is None:
                self.say(f"{self.label}: stopped at {self._fraction(self.done, self.total)}, "
                         f"{self.clock() - self.started:.0f} s")
            self.previous_end = self.clock()
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
        self.stage = self.bar = None
        self.finished = False

    def _start(self, stage: str, total: int) -> None:
        kind, _, name = stage.partition(" ")
        self.stage, self.unit = stage, UNITS.get(kind, "")
        self.label = f"{LABELS.get(kind, kind)} {name}".strip()
        self.done, self.total, self.finished = 0, total, False
        self.started = self.last_line = self.previous_end
        if self.interactive:
            self.bar = click.progressbar(length=max(total, 1), label=self.label, file=sys.stderr)
            self.bar.__enter__()

    def _amount(self, count: int) -> str:
        """'4.0 MB', '120 KB' or '9,743 merges'."""
        return self._fraction(None, count)

    def _fraction(self, done: int | None, total: int) -> str:
        """'1.5 of 4.0 MB' or '200 of 9,743 merges'; just the total when `done` is None."""
        if self.unit != "bytes":
            scale, unit, digits = 1, self.unit, 0
        elif total < 1e6:  # a small text would show as "0.0 MB"
            scale, unit, digits = 1e3, "KB", 0
        else:
            scale, unit, digits = 1e6, "MB", 1
        amounts = [f"{count / scale:,.{digits}f}" for count in (done, total) if count is not None]
        return f"{' of '.join(amounts)} {unit}"
