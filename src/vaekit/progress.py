"""Progress of a streamed run: a tqdm bar on a terminal, a few plain lines anywhere else.

A bar redrawn with carriage returns floods a CI log or a notebook capture with hundreds of updates,
so when stderr is not a terminal the rows done are told as one line at each tenth of the work (with
the rate and time left), as tqdm itself advises for non-interactive output (fewer updates).
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

__all__ = ["progress_callback", "STEPS"]

STEPS = 10  #: lines per run when stderr is not a terminal


@contextmanager
def progress_callback(progress, plan, stream=None):
    """The executor's ``progress(stage, rows_done, rows_total)``: the user's callable, a bar or lines
    (``progress=True``), or None."""
    if callable(progress) or not progress:
        yield progress or None
        return
    stream = stream or sys.stderr
    heights = [s.height for s in plan.stages]
    before = [sum(heights[:i]) for i in range(len(heights))]  # rows of the stages before each
    total, what = sum(heights), f"vaekit {plan.op}"
    if _interactive(stream):
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="row", desc=what, leave=False, file=stream)

        def callback(stage: int, rows_done: int, _rows_total: int) -> None:
            bar.update(before[stage] + rows_done - bar.n)  # update(), not refresh(): tqdm's mininterval holds

        try:
            yield callback
        finally:
            bar.close()
        return
    start, told = time.monotonic(), [0]

    def callback(stage: int, rows_done: int, _rows_total: int) -> None:
        done = before[stage] + rows_done
        step = done * STEPS // total
        if step > told[0]:
            told[0] = step
            spent = time.monotonic() - start
            left = spent * (total - done) / done
            stream.write(f"{what}: {100 * done // total}% ({done}/{total} rows, {done / spent:.0f} rows/s, "
                         f"{spent:.0f} s, {left:.0f} s left)\n")
            stream.flush()

    yield callback


def _interactive(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
