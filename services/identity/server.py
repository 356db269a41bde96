"""Composition root of the identity process: IdentityService over gRPC, on its own schema and role.

On start it creates the first administrator when the directory is empty (``CLIPMIND_ADMIN_EMAIL``, with
``CLIPMIND_ADMIN_PASSWORD`` or a generated password written once to ``CLIPMIND_ADMIN_PASSWORD_FILE``, mode 600:
the password itself is never logged), and every hour it drops expired refresh tokens and revocations.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import grpc.aio

from services.common.config import IdentitySettings
from services.common.db import open_database
from services.common.grpc_server import configure_logging, run_server
from services.common.rate_limit import RateLimiter
from services.identity import servicer
from services.identity.accounts import Accounts
from services.identity.store import MIGRATIONS, SCHEMA, IdentityStore
from services.identity.tokens import TokenSigner, load_keys

log = logging.getLogger("clipmind.identity")
PURGE_EVERY_S = 3600.0


def signer_from(settings: IdentitySettings) -> TokenSigner:
    """The token signer of the settings; a startup error without keys, or with a key under 32 bytes."""
    spec = settings.jwt_keys.get_secret_value()
    if not spec:
        raise SystemExit("CLIPMIND_JWT_KEYS is not set: access tokens cannot be signed (`clipmind up` makes one)")
    keys, active = load_keys(spec)
    return TokenSigner(keys, active_kid=active, issuer=settings.jwt_issuer, audience=settings.jwt_audience,
                       access_ttl_s=settings.access_token_ttl_s)


def write_secret(path: Path, secret: str) -> None:
    """Write ``secret`` to ``path``, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")
    os.chmod(path, 0o600)


async def first_admin(accounts: Accounts, settings: IdentitySettings) -> None:
    password = settings.admin_password.get_secret_value()
    if not password and not settings.admin_password_file:
        raise SystemExit("set CLIPMIND_ADMIN_PASSWORD, or CLIPMIND_ADMIN_PASSWORD_FILE for a generated one")
    generated = await accounts.ensure_first_admin(settings.admin_email, password or None)
    if generated:
        write_secret(Path(settings.admin_password_file), generated)
        log.warning("created the first administrator %s; its generated password is in %s (readable by this "
                    "user only)", settings.admin_email, settings.admin_password_file)


async def _purge_forever(store: IdentityStore) -> None:
    while True:
        try:
            purged = await store.purge_expired()
            if purged:
                log.info("dropped %d expired refresh tokens and revocations", purged)
        except Exception:  # the database may be briefly away: next round
            log.warning("purging expired tokens failed", exc_info=True)
        await asyncio.sleep(PURGE_EVERY_S)


async def serve(settings: IdentitySettings) -> None:
    signer = signer_from(settings)
    pool = await open_database(settings, migrations=MIGRATIONS, schema=SCHEMA, max_size=8)
    store = IdentityStore(pool)
    limiter = RateLimiter.from_url(settings.redis_url)
    accounts = Accounts(store, signer, refresh_ttl_s=settings.refresh_token_ttl_s,
                        allow_signup=settings.allow_signup, limiter=limiter)
    await first_admin(accounts, settings)
    public = servicer.IdentityServicer(accounts)
    purge = asyncio.create_task(_purge_forever(store))

    async def stop_purge() -> None:
        purge.cancel()
        await asyncio.gather(purge, return_exceptions=True)

    def register(server: grpc.aio.Server) -> list[str]:
        return [servicer.register(server, public)]

    await run_server(name="identity", host=settings.grpc_host, port=settings.grpc_port, register=register,
                     on_stop=[stop_purge, limiter.close, pool.close], grace_s=settings.shutdown_grace_s,
                     internal_token=settings.internal_token.get_secret_value())


def main() -> None:
    settings = IdentitySettings()
    configure_logging(settings.log_level)
    asyncio.run(serve(settings))
