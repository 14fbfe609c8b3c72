"""DashScope's settings and credentials (DASHSCOPE_API_KEY as the dashscope SDK reads it,
DASHSCOPE_WORKSPACE, VOXQ_DASHSCOPE_URL, VOXQ_DASHSCOPE_TTS_MODEL)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import SecretStr

from workers.vendors.base import VendorAuthError
from workers.vendors.settings import VendorSettings


class DashScopeSettings(VendorSettings):
    """API key, optional workspace, the inference URL and the speech model."""

    prefix: ClassVar[str] = "dashscope_"
    api_key: SecretStr | None
    workspace: str | None
    url: str
    tts_model: str

    def headers(self) -> tuple[dict[str, str], tuple[str, ...]]:
        """Handshake headers and the secrets to redact; VendorAuthError naming the variable
        when the key is unset."""
        secret = self.api_key.get_secret_value() if self.api_key is not None else ""
        if not secret:
            raise VendorAuthError("the DashScope API key is missing: set DASHSCOPE_API_KEY in the "
                                  "worker's environment", vendor="dashscope")
        headers = {"Authorization": f"Bearer {secret}"}
        if self.workspace:
            headers["X-DashScope-WorkSpace"] = self.workspace
        return headers, (secret,)
