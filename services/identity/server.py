"""Composition root of the identity process: IdentityService over gRPC, on its own schema and role.

On start it creates the first administrator when the directory is empty (``CLIPMIND_ADMIN_EMAIL``, with
``CLIPMIND_ADMIN_PASSWORD`` or a generated password written once to ``CLIPMIND_ADMIN_PASSWORD_FILE``, mode 600:
the password itself is never logged). Every minute it publishes the revocations in force again (Redis may
have lost them), and every hour it drops expired refresh tokens and revocations.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import grpc.aio

from services.common.auth import Authenticator, settings_signer
from services.common.config import IdentitySettings
from services.common.db import open_database
from services.common.grpc_server import configure_logging, run_server
from services.common.identity_client import process_request_limits
from services.common.principal import Principal
from services.common.rate_limit import RateLimiter
from services.common.revocations import Revocations
from services.identity import internal_servicer, servicer
from services.identity.accounts import Accounts
from services.identity.store import MIGRATIONS, SCHEMA, IdentityStore

log = logging.getLogger("clipmind.identity")


class LocalApiKeys:
    """``ApiKeyResolver`` of the identity process itself: the accounts, without a network hop."""

    def __init__(self, accounts: Accounts) -> None:
        self._accounts = accounts

    async def resolve(self, key: str) -> Principal | None:
        return await self._accounts.resolve_api_key(key)
PURGE_EVERY_S = 3600.0
REPUBLISH_EVERY_S = 60.0


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


async def _maintain_forever(store: IdentityStore, accounts: Accounts) -> None:
    """Every minute, publish the revocations in force again (Redis may have lost them); every hour, drop the
    expired refresh tokens and revocations."""
    last_purge = -PURGE_EVERY_S
    loop = asyncio.get_running_loop()
    while True:
        try:
            await accounts.republish_revocations()
        except Exception as exc:  # Redis or the database briefly away: next round
            log.warning("publishing revocations failed (%s); trying again in a minute", type(exc).__name__)
        if loop.time() - last_purge >= PURGE_EVERY_S:
            try:
                purged = await store.purge_expired()
                last_purge = loop.time()
                if purged:
                    log.info("dropped %d expired refresh tokens and revocations", purged)
            except Exception:  # the database may be briefly away: next round
                log.warning("purging expired tokens failed", exc_info=True)
        await asyncio.sleep(REPUBLISH_EVERY_S)


async def serve(settings: IdentitySettings) -> None:
    signer = settings_signer(settings)
    pool = await open_database(settings, migrations=MIGRATIONS, schema=SCHEMA, max_size=8)
    store = IdentityStore(pool)
    limiter = RateLimiter.from_url(settings.redis_url)
    revocations = Revocations.from_url(settings.redis_url)
    accounts = Accounts(store, signer, refresh_ttl_s=settings.refresh_token_ttl_s,
                        allow_signup=settings.allow_signup, limiter=limiter, revoker=revocations,
                        access_ttl_s=settings.access_token_ttl_s)
    await first_admin(accounts, settings)
    public = servicer.IdentityServicer(accounts)
    internal = internal_servicer.IdentityInternalServicer(accounts)
    # API keys are resolved here directly, not through our own internal API.
    authenticator = Authenticator(signer, revocations, LocalApiKeys(accounts))
    request_limits, windows = process_request_limits(settings)
    purge = asyncio.create_task(_maintain_forever(store, accounts))

    async def stop_purge() -> None:
        purge.cancel()
        await asyncio.gather(purge, return_exceptions=True)

    def register(server: grpc.aio.Server) -> list[str]:
        return [servicer.register(server, public), internal_servicer.register(server, internal)]

    await run_server(name="identity", host=settings.grpc_host, port=settings.grpc_port, register=register,
                     on_stop=[stop_purge, limiter.close, windows.close, revocations.close, pool.close],
                     grace_s=settings.shutdown_grace_s, authenticator=authenticator, request_limits=request_limits,
                     optional_auth_methods=servicer.ANONYMOUS_METHODS, reflection=settings.grpc_reflection,
                     metrics_port=settings.metrics_port, metrics_host=settings.metrics_host)


def main() -> None:
    settings = IdentitySettings()
    configure_logging(settings.log_level, settings.service_name, settings.log_format)
    asyncio.run(serve(settings))
