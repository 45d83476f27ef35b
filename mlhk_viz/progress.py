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

    def __init__(self, disable: bool = False):
        self.disable = disable
        self._bars: dict = {}

    def __call__(self, done: int, total: int, stage: str) -> None:
        from tqdm.auto import tqdm

        bar = self._bars.get(stage)
        if bar is None or bar.total != total:
            if bar is not None:
                bar.close()
            bar = self._bars[stage] = tqdm(total=total, desc=stage, disable=self.disable, leave=True)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            self._bars.pop(stage, None)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()
