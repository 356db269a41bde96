"""How a service process authenticates and limits its callers and signs its media links, built from its settings:
the ``Authenticator`` of ``services.common.auth`` over identity's internal API (API keys) and Redis
(revocations), the per-user ``RequestLimiter``, and the ``MediaSigner``."""

from __future__ import annotations

import logging

from clipmind.identity.internal.v1 import identity_internal_service_pb2 as pb
from clipmind.identity.internal.v1 import identity_internal_service_pb2_grpc as pb_grpc

from services.common.auth import ApiKeyResolver, Authenticator, settings_signer
from services.common.config import CommonSettings, ServerSettings
from services.common.errors import NotFound
from services.common.grpc_client import InternalChannels
from services.common.media_urls import MediaSigner
from services.common.names import parse_user_name
from services.common.principal import Principal
from services.common.rate_limit import RateLimiter
from services.common.request_limits import RequestLimiter, UserLimits
from services.common.revocations import Revocations

log = logging.getLogger(__name__)


class IdentityApiKeys:
    """``ApiKeyResolver`` over ``IdentityInternalService.AuthenticateApiKey``."""

    def __init__(self, channels: InternalChannels, target: str) -> None:
        self._stub = channels.stub(pb_grpc.IdentityInternalServiceStub, target)

    async def resolve(self, key: str) -> Principal | None:
        try:
            reply = await self._stub.AuthenticateApiKey(pb.AuthenticateApiKeyRequest(key=key))
        except NotFound:
            return None
        return Principal(parse_user_name(reply.user, "user"), reply.role)


def process_authenticator(settings: CommonSettings, channels: InternalChannels,
                          api_keys: ApiKeyResolver | None = None) -> tuple[Authenticator, Revocations]:
    """The authenticator of this process and its Redis client (close it on shutdown). API keys are resolved
    by ``api_keys``, by default identity's internal API."""
    revocations = Revocations.from_url(settings.redis_url)
    resolver = api_keys if api_keys is not None else IdentityApiKeys(channels, settings.identity_url)
    return Authenticator(settings_signer(settings), revocations, resolver), revocations


def process_request_limits(settings: ServerSettings) -> tuple[RequestLimiter, RateLimiter]:
    """The per-user request limits of this process (settings ``rate_limit_*``) and their Redis client."""
    windows = RateLimiter.from_url(settings.redis_url)
    limits = UserLimits(requests_per_hour=settings.rate_limit_requests_per_hour,
                        searches_per_minute=settings.rate_limit_searches_per_minute,
                        uploads_per_hour=settings.rate_limit_uploads_per_hour)
    return RequestLimiter(windows, limits), windows


def media_signer(settings: CommonSettings) -> MediaSigner:
    """The signer of this process's media links (keys derived from ``CLIPMIND_JWT_KEYS``)."""
    return MediaSigner.from_token_signer(settings_signer(settings), ttl_s=settings.media_url_ttl_s)
