"""Integrations with other libraries: diffusers pipelines (``apply``/``unapply``)."""

from __future__ import annotations

from .diffusers import apply, is_applied, unapply

__all__ = ["apply", "unapply", "is_applied"]
