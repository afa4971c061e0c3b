"""vaekit: the VAE stage of diffusion pipelines at any resolution, inside a memory budget,
with the same pixels as running the whole image at once."""

from __future__ import annotations

from . import errors, testing, vector_math
from .api import decode, encode, plan
from .audit import audit
from .errors import BudgetError, VaekitError
from .integrations import apply, unapply
from .lifecycle import VaeManager
from .loader import load
from .plan import Plan
from .recovery import RunReport

__all__ = ["decode", "encode", "plan", "load", "apply", "unapply", "audit", "VaeManager", "Plan", "RunReport",
           "errors", "testing", "VaekitError", "BudgetError", "__version__"]

__version__ = "0.1.0"

vector_math.warm_up()  # before any two threads can race to MKL VML's first call (vector_math.py)
