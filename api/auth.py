"""Optional bearer auth for /v1: on when `VOXQ_API_KEY` is set, constant-time comparison."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.state import ApiState, api_state

bearer = HTTPBearer(auto_error=False, description="The value of VOXQ_API_KEY.")


def key_matches(expected: str, given: str) -> bool:
    """Constant-time equality of the configured key and the presented one."""
    return hmac.compare_digest(expected.encode(), given.encode())


async def require_key(
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    state: Annotated[ApiState, Depends(api_state)],
) -> None:
    """401 unless auth is off or the request carries `Authorization: Bearer <key>`."""
    secret = state.settings.api_key
    expected = secret.get_secret_value() if secret is not None else ""
    if not expected:
        return
    if creds is None or creds.scheme.lower() != "bearer" or not key_matches(
            expected, creds.credentials):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong API key",
                            headers={"WWW-Authenticate": "Bearer"})
