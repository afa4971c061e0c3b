"""What a run does when the world fails under it: nothing is lost and nothing is left behind.

- SIGINT (KeyboardInterrupt) unwinds the run: the store's ``with`` removes the scratch folder, the
  sink's ``abort`` the partial ``.part`` output.
- SIGTERM, whose default action ends the process on the spot, is made to unwind the same way for the
  length of a run; once the cleanup is done the process ends by SIGTERM after all (its exit status
  says so). Only where the handler is the default and the run is on the main thread: a program's own
  handler is left alone.
- A scratch file that fails (disk full, truncated under the run) is a DiskError from the store; an
  output that cannot be written (read-only folder, disk full) is one from here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

from .errors import DiskError

__all__ = ["cleanly"]


class _Terminated(BaseException):
    """SIGTERM arrived mid-run: raised like KeyboardInterrupt, so every ``finally`` and ``with`` runs."""


def _raise_terminated(signum, frame):
    raise _Terminated


@contextlib.contextmanager
def _sigterm_unwinds():
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)  # cleaned up: now end as SIGTERM would have
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def cleanly(out=None):
    """Around one run: SIGTERM unwinds it, and an OSError writing ``out`` becomes a DiskError."""
    try:
        with _sigterm_unwinds():
            yield
    except DiskError:
        raise
    except OSError as e:
        if out is None:
            raise
        raise DiskError(f"cannot write the output {out}: {e.strerror or e} (a read-only folder, or its disk is "
                        "full): choose another output path or free space; nothing was written and an existing file is "
                        "left as it was") from e
