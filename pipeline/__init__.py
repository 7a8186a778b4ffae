"""Trip-duration training on NYC TLC months: exact least squares from additive statistics."""

from __future__ import annotations

__version__ = "0.1.0"
