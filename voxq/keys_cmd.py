"""`voxq keys create|list|revoke`: manage the API's scoped keys in Redis (REDIS_URL).

``create`` prints the key's details, then the secret alone on the last line (so a script can
take it with ``tail -n 1``); the secret is never stored or shown again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from voxq import audit
from voxq.access import KeyStore, parse_expiry, parse_scopes, validate_tenant
from voxq.errors import ConfigError, InvalidInput
from voxq.keys import Keys
from voxq.redis_conn import connect
from voxq.settings import Settings, get_settings


def _url(settings: Settings) -> str:
    if not settings.redis_url:
        raise ConfigError("voxq keys needs REDIS_URL: the keys live in the deployment's Redis "
                          "(an embedded one would forget them)")
    return settings.redis_url


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else "-"


async def _create(args: argparse.Namespace, settings: Settings) -> int:
    tenant = validate_tenant(args.tenant)
    scopes = parse_scopes(args.scopes)
    expires = parse_expiry(args.expires)
    r = connect(_url(settings))
    try:
        keys = Keys(settings.prefix)
        rec, secret = await KeyStore(r, keys).create(tenant, scopes, args.name or "", expires)
        await audit.key_admin(r, keys, "created", key_id=rec.key_id, tenant=tenant, by="cli")
    finally:
        await r.aclose()
    print(f"id: {rec.key_id}")
    print(f"tenant: {rec.tenant}")
    print(f"scopes: {','.join(sorted(s.value for s in rec.scopes))}")
    print(f"name: {rec.name or '-'}")
    print(f"expires: {_when(rec.expires)}")
    print("secret (shown once; store it now):")
    print(secret, flush=True)
    return 0


async def _list(args: argparse.Namespace, settings: Settings) -> int:
    r = connect(_url(settings))
    try:
        recs = await KeyStore(r, Keys(settings.prefix)).all(args.tenant)
    finally:
        await r.aclose()
    if args.json:
        print(json.dumps([k.public() for k in recs]))
        return 0
    print(f"{'ID':<12}  {'TENANT':<16}  {'SCOPES':<40}  {'EXPIRES':<20}  {'LAST USED':<20}  NAME")
    for k in recs:
        print(f"{k.key_id:<12}  {k.tenant:<16}  {','.join(sorted(s.value for s in k.scopes)):<40}"
              f"  {_when(k.expires):<20}  {_when(k.last_used):<20}  {k.name}")
    return 0


async def _revoke(args: argparse.Namespace, settings: Settings) -> int:
    r = connect(_url(settings))
    try:
        keys = Keys(settings.prefix)
        store = KeyStore(r, keys)
        rec = await store.get(args.key_id)
        if rec is None or not await store.revoke(args.key_id):
            raise InvalidInput(f"no API key {args.key_id[:40]!r}")
        await audit.key_admin(r, keys, "revoked", key_id=rec.key_id, tenant=rec.tenant,
                              by="cli")
    finally:
        await r.aclose()
    print(f"revoked {args.key_id}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run one keys subcommand."""
    action = {"create": _create, "list": _list, "revoke": _revoke}[args.action]
    return asyncio.run(action(args, get_settings()))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `voxq keys`."""
    p = sub.add_parser("keys", help="create, list and revoke scoped API keys",
                       description="Scoped API keys in REDIS_URL (Redis keeps only a hash).")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = actions.add_parser("create", help="create a key; its secret is the last line printed")
    c.add_argument("--tenant", required=True, help="the key's tenant (A-Z a-z 0-9 . _ -)")
    c.add_argument("--scopes", required=True,
                   help="comma-separated: sessions:read, sessions:write, tts:read, tts:write, "
                        "webhooks:manage, metrics:read, admin")
    c.add_argument("--expires", default=None,
                   help="lifetime (30d, 12h, 45m, 600s) or unix seconds; default: none")
    c.add_argument("--name", default="", help="a label for listings")
    ls = actions.add_parser("list", help="list keys (never their secrets)")
    ls.add_argument("--tenant", default=None, help="only this tenant's keys")
    ls.add_argument("--json", action="store_true", help="JSON instead of a table")
    rv = actions.add_parser("revoke", help="revoke a key (its tokens stop working too)")
    rv.add_argument("key_id", help="the key's id (voxq keys list)")
    p.set_defaults(func=run)
