"""voxq-ws settings (VOXQ_WS_URL, VOXQ_WS_KEY)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import SecretStr

from workers.vendors.settings import VendorSettings


class VoxqWsSettings(VendorSettings):
    """The server's URL and its optional Bearer key."""

    prefix: ClassVar[str] = "voxqws_"
    url: str | None
    key: SecretStr | None
