"""AssemblyAI's settings and credentials (ASSEMBLYAI_API_KEY as in AssemblyAI's docs, a
temporary token or minting, and the v3 and v2 endpoints)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import SecretStr

from workers.vendors.settings import VendorSettings


class AssemblyAISettings(VendorSettings):
    """Key, token, token minting and the URLs of both generations."""

    prefix: ClassVar[str] = "assemblyai_"
    api_key: SecretStr | None
    token: SecretStr | None
    temporary_tokens: bool
    url: str
    token_url: str
    v2_url: str
    v2_token_url: str
