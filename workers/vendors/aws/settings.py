"""AWS settings and credentials (the standard AWS variable names; endpoint overrides)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import SecretStr

from workers.vendors.base import VendorAuthError
from workers.vendors.settings import VendorSettings


class AwsSettings(VendorSettings):
    """Credentials, region, and the Transcribe and Polly endpoint overrides."""

    prefix: ClassVar[str] = "aws_"
    access_key_id: SecretStr | None
    secret_access_key: SecretStr | None
    session_token: SecretStr | None
    region: str
    transcribe_endpoint: str | None
    polly_endpoint: str | None
    polly_engine: str

    def credentials(self) -> tuple[str, str, str | None]:
        """Access key, secret key and optional session token; VendorAuthError if missing."""
        access = self.access_key_id.get_secret_value() if self.access_key_id else ""
        secret = self.secret_access_key.get_secret_value() if self.secret_access_key else ""
        token = self.session_token.get_secret_value() if self.session_token else None
        missing = [n for n, v in (("AWS_ACCESS_KEY_ID", access),
                                  ("AWS_SECRET_ACCESS_KEY", secret)) if not v]
        if missing:
            raise VendorAuthError(
                f"AWS credentials are missing: set {' and '.join(missing)} (plus AWS_SESSION_TOKEN "
                "for temporary credentials) in the worker's environment", vendor="aws")
        return access, secret, token or None
