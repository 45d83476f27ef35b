"""One small progress callback type shared by the library, the CLI and the app.

A progress callback is ``progress(done: int, total: int, stage: str) -> None``; long work calls
it as it goes. The CLI turns it into tqdm bars, the app into a Panel indicator.
"""

from __future__ import annotations

from typing import Callable

Progress = Callable[[int, int, str], None]


def null_progress(done: int, total: int, stage: str) -> None:
    """Report nothing."""


class TqdmProgress:
    """A :data:`Progress` that draws one tqdm bar per stage (to stderr)."""

    def __init__(self, disable: bool = False, file=None):
        self.disable = disable
        self.file = file
        self._bars: dict = {}

    def __call__(self, done: int, total: int, stage: str) -> None:
        from tqdm.auto import tqdm

        bar = self._bars.get(stage)
        if bar is None or bar.total != total:
            if bar is not None:
                bar.close()
            # A resumed job reports its first ``done`` > 0; starting the bar there keeps tqdm's rate
            # and ETA to the work of this run instead of crediting it with what earlier runs did.
            bar = self._bars[stage] = tqdm(
                total=total, initial=done, desc=stage, disable=self.disable, leave=True, file=self.file
            )
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            self._bars.pop(stage, None)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()
