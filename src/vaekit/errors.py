"""The typed errors vaekit raises. Catch ``VaekitError`` to catch them all.

::

    VaekitError                 root: everything vaekit raises on purpose
    ├── InputError              latents/images of the wrong rank, channels, dtype; bad arguments
    │   └── UnsupportedModelError   a model vaekit cannot stream (yet)
    ├── BudgetError             no plan fits the memory budget (says the smallest that would)
    ├── CheckpointError         a model file that is missing, truncated, junk or pickle-only
    ├── PrecisionError          a dtype the device cannot run, or overflow even in fp32
    ├── DeviceError             a device that does not exist or cannot be used
    ├── DiskError               a scratch or output file failed under a run: disk full, read-only,
    │                           truncated (also an OSError); nothing is left behind
    └── DependencyError         an optional package a feature needs is not installed (names the extra;
                                also an ImportError)

Every message says what was wrong and what would work instead.
"""

from __future__ import annotations

__all__ = [
    "VaekitError",
    "InputError",
    "UnsupportedModelError",
    "BudgetError",
    "CheckpointError",
    "PrecisionError",
    "DeviceError",
    "DiskError",
    "DependencyError",
]


class VaekitError(Exception):
    """Root of every error vaekit raises on purpose."""

    #: process exit status the CLI uses for this class of error
    exit_code = 1


class InputError(VaekitError, ValueError):
    """The input (tensor, argument, file) is not something vaekit can use."""

    exit_code = 2


class UnsupportedModelError(InputError):
    """The model is of a kind vaekit cannot stream."""

    exit_code = 3


class BudgetError(VaekitError):
    """No plan fits the memory budget.

    ``smallest`` holds the smallest budget in bytes that would fit, when known.
    """

    exit_code = 4

    def __init__(self, message: str, smallest: int | None = None):
        super().__init__(message)
        self.smallest = smallest


class CheckpointError(VaekitError):
    """A model file is missing, truncated, junk, or in a format that is refused."""

    exit_code = 5


class PrecisionError(VaekitError):
    """A dtype the device cannot run, or a computation that overflows even in fp32."""

    exit_code = 6


class DeviceError(VaekitError):
    """A device that does not exist or cannot be used."""

    exit_code = 7


class DiskError(VaekitError, OSError):
    """A file a run writes or reads back failed: the scratch disk or the output's disk filled up, the
    output folder is read-only, or a scratch file was truncated under the run. The run's scratch files
    and partial output are removed; an existing output file is left as it was."""

    exit_code = 8


class DependencyError(VaekitError, ImportError):
    """A package that one feature needs (a file format's writer, the benchmark's plot) is not installed.
    The core (planning, ``decode``/``encode`` to tensors, the GPU check) needs none of them; the message
    names the extra that brings it, e.g. ``pip install 'vaekit[video]'``."""

    exit_code = 9
