"""Helpers the vendors' per-session option models share (pure)."""

from __future__ import annotations

from typing import Any

__all__ = ["split_list"]


def split_list(value: Any) -> Any:
    """A comma-separated string (as `voxq produce --option k=a,b` gives it) becomes a tuple of
    its non-empty stripped parts; a list or anything else is left to the model to validate."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value
