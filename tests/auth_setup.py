"""Credentials for tests that start service processes themselves (not through the launcher): one signing key,
and channels whose calls carry a token signed with it."""

from __future__ import annotations

import uuid

import grpc
import grpc.aio

from services.common.auth import SystemCredentials
from services.common.tokens import TokenSigner, format_key

TEST_KEY = b"test-signing-key-" + b"k" * 32
TEST_KEYS = format_key("test", TEST_KEY)  # CLIPMIND_JWT_KEYS of the processes
SIGNER = TokenSigner({"test": TEST_KEY}, active_kid="test")


def system_token() -> str:
    return SystemCredentials(SIGNER).authorization().removeprefix("Bearer ")


def user_token(user_id: uuid.UUID | None = None, role: str = "user") -> str:
    return SIGNER.issue(user_id or uuid.uuid4(), role)[0]


def _credentials(token: str) -> grpc.ChannelCredentials:
    # Call credentials travel only on channels gRPC deems secure; local TCP is plaintext on loopback, yet counts.
    return grpc.composite_channel_credentials(grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP),
                                              grpc.access_token_call_credentials(token))


def aio_channel(target: str, token: str | None = None) -> grpc.aio.Channel:
    """An asyncio channel to a local server whose calls carry ``token`` (the system's by default)."""
    return grpc.aio.secure_channel(target, _credentials(token or system_token()))
