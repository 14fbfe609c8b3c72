"""Temporary AssemblyAI streaming tokens, minted over HTTPS with the API key (one per connection).

v3: ``GET /v3/token?expires_in_seconds=N`` → ``{"token", "expires_in_seconds"}``; v2:
``POST /v2/realtime/token`` with ``{"expires_in": N}`` → ``{"token"}``; both with the raw key
in ``Authorization``. Tokens are single use, so a retry mints a fresh one.
"""

from __future__ import annotations

from typing import Literal

import httpx

from voxq.redaction import register_secret
from workers.vendors.assemblyai.codes import http_error
from workers.vendors.base import VendorError, VendorRetryable

TOKEN_TTL_SECONDS = 60
"""How long a minted token may wait before its connection opens (v3: 1-600, v2: 60-360000)."""


async def mint_token(url: str, api_key: str, generation: Literal["v3", "v2"], vendor: str,
                     timeout: float = 10.0) -> str:
    """A fresh single-use token; VendorError (auth, retryable or rejected) if none is given."""
    headers = {"Authorization": api_key}
    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            if generation == "v3":
                r = await client.get(url, params={"expires_in_seconds": TOKEN_TTL_SECONDS},
                                     headers=headers)
            else:
                r = await client.post(url, json={"expires_in": TOKEN_TTL_SECONDS}, headers=headers)
    except httpx.HTTPError as e:
        raise VendorRetryable(f"temporary-token request failed: {type(e).__name__}",
                              vendor=vendor) from None
    if r.status_code != 200:
        raise http_error(vendor, r.status_code, r.content, (api_key,),
                         what="the temporary-token request")
    try:
        token = r.json().get("token")
    except (ValueError, AttributeError):
        token = None
    if not isinstance(token, str) or not token:
        error: VendorError = VendorRetryable("the temporary-token answer has no token",
                                             vendor=vendor)
        raise error
    register_secret(token)  # single-use, but it must not show up in a log line either
    return token
