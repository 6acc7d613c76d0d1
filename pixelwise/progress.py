"""Progress on long work: a tqdm bar on a terminal; elsewhere (a log file, CI) a plain line every
`PIXELWISE_PROGRESS_EVERY` seconds (default 30), since a bar's carriage returns would make one line of
megabytes there."""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator, TypeVar

__all__ = ["Progress", "progress", "format_seconds"]

T = TypeVar("T")


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """Counts `total` units of work from `initial`; `update(n, **postfix)` after each.

    `time_left()` (optional) gives the seconds a time budget still allows; the estimate shown is then
    the earlier of the step-rate estimate and the budget's end.
    """

    def __init__(self, total: int | None, *, desc: str, unit: str = "step", initial: int = 0, enabled: bool = True,
                 time_left=None, leave: bool = True, stream=None) -> None:
        self.total, self.desc, self.unit, self.n, self.enabled = total, desc, unit, initial, enabled
        self.time_left, self.stream = time_left, stream or sys.stderr
        self.start_n, self.start, self.postfix = initial, time.monotonic(), {}
        self.every = float(os.environ.get("PIXELWISE_PROGRESS_EVERY", "30"))
        self.last_print = self.start
        self.bar = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=leave,
                            file=self.stream)

    def eta(self) -> float | None:
        done, elapsed = self.n - self.start_n, time.monotonic() - self.start
        estimates = []
        if self.total is not None and done > 0:
            estimates.append((self.total - self.n) * elapsed / done)
        if self.time_left is not None:
            estimates.append(self.time_left())
        return min(estimates) if estimates else None

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.n += n
        self.postfix = postfix
        if not self.enabled:
            return
        if self.bar is not None:
            if self.time_left is not None:
                postfix = {**postfix, "left": format_seconds(self.time_left())}
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last_print >= self.every or (self.total is not None and self.n >= self.total):
            self.last_print = now
            self._line(now)

    def _line(self, now: float) -> None:
        of = f"/{self.total}" if self.total is not None else ""
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = "".join(f" {k}={v}" for k, v in self.postfix.items())
        eta = self.eta()
        left = f", about {format_seconds(eta)} left" if eta is not None else ""
        print(f"{self.desc}: {self.unit} {self.n}{of}{pct}{extra}; {format_seconds(now - self.start)} elapsed{left}",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def progress(items: Iterable[T], *, desc: str, unit: str = "img", total: int | None = None, enabled: bool = True,
             leave: bool = False) -> Iterator[T]:
    """Iterate over `items` showing progress (see Progress)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    p = Progress(total, desc=desc, unit=unit, enabled=enabled, leave=leave)
    try:
        for item in items:
            yield item
            p.update()
    finally:
        p.close()
