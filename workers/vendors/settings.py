"""A vendor's own settings and credentials, declared in its package.

Each vendor package has a ``settings.py`` with a `VendorSettings` model of what it reads: its
fields carry the names the vendor uses (``api_key``, ``url``), and it resolves its credentials
itself. The deployment still sets them through the documented environment names, which the
flat core ``voxq.settings.Settings`` reads (the API and producers import only the core); a
vendor model takes its values from there by ``prefix`` + field name, and a test checks that
every field of every vendor model has its core setting.
"""

from __future__ import annotations

from typing import ClassVar, Self

from pydantic import BaseModel, ConfigDict

from voxq.settings import Settings

__all__ = ["VendorSettings"]


class VendorSettings(BaseModel):
    """One vendor's settings, read from the core settings' ``<prefix><field>`` values."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: the core settings' field prefix of this vendor (``deepgram_``)
    prefix: ClassVar[str]
    #: fields whose core name does not follow ``prefix`` + field name
    core_names: ClassVar[dict[str, str]] = {}

    @classmethod
    def core_name(cls, field: str) -> str:
        """The core settings field that holds ``field``."""
        return cls.core_names.get(field, f"{cls.prefix}{field}")

    @classmethod
    def of(cls, settings: Settings) -> Self:
        """This vendor's view of the deployment's settings."""
        return cls.model_validate({f: getattr(settings, cls.core_name(f)) for f in cls.model_fields})
