"""What the user sees while a stage works: stage lines, per-epoch lines and live progress bars.

Bars are tqdm's, on stderr, and only on a terminal (or when asked): in a log or under CI they
are off. ``quiet`` keeps only the stage lines and the final answers.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from tqdm.auto import tqdm


@dataclasses.dataclass(frozen=True)
class Progress:
    """How chatty a stage is. Passed down to every stage that takes more than a few seconds."""

    quiet: bool = False  # stage lines only: no per-epoch lines, no bars
    bars: bool | None = None  # live bars: None = only when stderr is a terminal

    @property
    def shows_bars(self) -> bool:
        if self.quiet:
            return False
        return sys.stderr.isatty() if self.bars is None else self.bars

    def stage(self, text: str) -> None:
        """A line that opens a stage: always printed."""
        print(text, flush=True)

    def note(self, text: str) -> None:
        """A detail line (one per epoch): printed unless quiet."""
        if not self.quiet:
            tqdm.write(text, file=sys.stdout)

    def warn(self, text: str) -> None:
        """Something the user must know (a repair made on their behalf): always, on stderr."""
        tqdm.write(text, file=sys.stderr)

    def bar(self, total: int | None, desc: str, unit: str = "it", **kwargs: Any) -> tqdm:
        """A live bar with rate and ETA; a silent one when bars are off."""
        return tqdm(
            total=total,
            desc=desc,
            unit=unit,
            disable=not self.shows_bars,
            leave=False,
            dynamic_ncols=True,
            file=sys.stderr,
            **kwargs,
        )


class EpochBar:
    """The live bar of the epoch in progress, advanced after each chunk of steps."""

    def __init__(self, progress: Progress, steps: int, images_per_step: int):
        self.progress, self.steps, self.images_per_step = progress, steps, images_per_step
        self.bar = None
        self.done = 0
        self.title = ""
        self.compiled = False

    def open(self, title: str) -> None:
        """A new bar; the first epoch of a process says that it compiles until its first tick."""
        self.title = title
        description = self.title if self.compiled else f"{self.title} (compiling)"
        self.bar = self.progress.bar(
            self.steps * self.images_per_step, description, unit="img", unit_scale=True
        )
        self.done = 0

    def on_step(self, steps_done, loss) -> None:
        steps_done = int(steps_done)
        if self.bar is not None and steps_done > self.done:
            if not self.compiled:
                self.compiled = True
                self.bar.set_description_str(self.title, refresh=False)
            self.bar.set_postfix_str(f"loss {float(loss):.4f}", refresh=False)
            self.bar.update((steps_done - self.done) * self.images_per_step)
            self.done = steps_done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
