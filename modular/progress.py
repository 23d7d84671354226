"""Progress of the long loops (range test, training epochs, evaluation) where the user looks: a live
bar in a terminal; elsewhere (a log file, a pipe) one line every few percent, because a bar redrawn in
place shows nothing there until it ends. In a notebook those lines, printed, take one output that is
rewritten in place and emptied when the loop ends, so a saved notebook keeps none of them."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

EVERY_PERCENT = 10.0   # a line for each further 10% of the work, once MIN_SECONDS have passed since the last...
MIN_SECONDS = 10.0     # (so a fast GPU loop does not print ten lines in two seconds)
MAX_SECONDS = 30.0     # ...and a line whenever this long has passed without one, however small the step


def terminal() -> bool:
    """A live bar only where it is redrawn before someone's eyes: stderr is a terminal."""
    return sys.stderr.isatty()


def in_notebook() -> bool:
    """Running in a Jupyter kernel (Colab's too), whose printed lines stay in the saved notebook."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


class LiveLine:
    """One output of a notebook cell that shows the latest line given to it (an IPython display handle)."""

    def __init__(self) -> None:
        self.handle = None

    def __call__(self, text: str) -> None:
        from IPython.display import display

        if self.handle is None:
            self.handle = display({"text/plain": text}, raw=True, display_id=True)
        else:
            self.handle.update({"text/plain": text}, raw=True)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.update({}, raw=True)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


@dataclass
class ProgressLines:
    """Lines like ``LR range test: 40/100 steps (40%), 2.1 min so far, about 3.2 min left``, when due
    (EVERY_PERCENT, MIN_SECONDS, MAX_SECONDS)."""
    what: str
    total: int
    unit: str = "steps"
    log: Callable[[str], None] = print
    note: str = ""  # appended to the next lines (e.g. the running loss), set by the caller
    clock: Callable[[], float] = time.monotonic
    started: float = field(init=False)
    _last_time: float = field(init=False)
    _last_percent: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self.started = self._last_time = self.clock()
        if self.log is print:  # bound to today's stdout: a library silenced later does not swallow the lines
            self.log = LiveLine() if in_notebook() else functools.partial(print, file=sys.stdout)

    def close(self) -> None:
        """The loop has ended: a notebook's live line is emptied (the caller's result follows)."""
        if isinstance(self.log, LiveLine):
            self.log.close()

    def update(self, done: int) -> None:
        """``done`` of ``total`` finished: print a line if one is due (never for the last: the caller's
        result follows it)."""
        if done >= self.total or done < 1:
            return
        now = self.clock()
        percent = 100.0 * done / self.total
        since = now - self._last_time
        due = since >= MAX_SECONDS or (percent >= self._last_percent + EVERY_PERCENT and since >= MIN_SECONDS)
        if not due:
            return
        elapsed = now - self.started
        left = elapsed / done * (self.total - done)
        note = f", {self.note}" if self.note else ""
        self.log(f"{self.what}: {done}/{self.total} {self.unit} ({percent:.0f}%), {_duration(elapsed)} so far, "
                 f"about {_duration(left)} left{note}")
        self._last_time, self._last_percent = now, percent


class Progress:
    """The progress of one loop of ``total`` units: a tqdm bar if ``bar`` (default: in a terminal), else
    ``ProgressLines`` through ``log``. Streams are taken when it is made, so output redirected later (a
    library silenced meanwhile) does not swallow it. Use it as a context manager: it closes at the end."""

    def __init__(self, what: str, total: int, unit: str = "steps", log: Callable[[str], None] = print,
                 bar: bool | None = None):
        self.bar = self.lines = None
        if terminal() if bar is None else bar:
            from tqdm import tqdm

            self.bar = tqdm(desc=what, total=total, leave=False, dynamic_ncols=True, file=sys.stderr)
        else:
            self.lines = ProgressLines(what, total, unit, log)

    def update(self, done: int, note: str | None = None) -> None:
        """``done`` units finished; ``note`` (e.g. the running loss) is shown from now on."""
        if self.bar is not None:
            if note is not None:
                self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(done - self.bar.n)
            return
        if note is not None:
            self.lines.note = note
        self.lines.update(done)

    def close(self) -> None:
        (self.bar or self.lines).close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(iterable: Iterable, what: str, total: int, unit: str = "steps", log: Callable[[str], None] = print,
          bar: bool | None = None) -> Iterator:
    """Yield the items of ``iterable`` while showing ``Progress``; an item counts as done when the next is
    asked for."""
    with Progress(what, total, unit, log, bar) as progress:
        for done, item in enumerate(iterable):
            progress.update(done)
            yield item


def table_header(evaluated_on: str = "test") -> str:
    """The header of the epoch table that fit_one_cycle prints, one row per epoch; ``evaluated_on``: "test"
    or "validation" (Config.evaluated_on), shortened to "val". "loss" is the training criterion (label
    smoothing included), "CE" the plain cross-entropy."""
    on = "val" if evaluated_on == "validation" else evaluated_on  # the columns are 7 to 9 characters wide
    return (f"{'epoch':>5}  {'train loss':>10}  {'train acc':>9}  {on + ' loss':>9}  {on + ' CE':>7}  {on + ' acc':>8}  "
            f"{'lr':>9}  {'time':>6}")


def format_epoch(row: dict) -> str:
    return (f"{row['epoch']:>5}  {row['train_loss']:>10.4f}  {row['train_acc']:>8.2f}%  {row['test_loss']:>9.4f}  "
            f"{row['test_ce']:>7.4f}  {row['test_acc']:>7.2f}%  {row['lr']:>9.2e}  {row['seconds']:>5.0f}s")
