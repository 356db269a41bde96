"""``clipmind.identity.internal.v1.IdentityInternalService``: thin conversion to ``accounts.Accounts``."""

from __future__ import annotations

import grpc.aio
from clipmind.identity.internal.v1 import identity_internal_service_pb2 as pb
from clipmind.identity.internal.v1 import identity_internal_service_pb2_grpc as pb_grpc

from services.common.errors import NotFound
from services.common.grpc_server import Context
from services.common.names import user_name
from services.identity.accounts import Accounts


class IdentityInternalServicer(pb_grpc.IdentityInternalServiceServicer):
    def __init__(self, accounts: Accounts) -> None:
        self._accounts = accounts

    async def AuthenticateApiKey(self, request: pb.AuthenticateApiKeyRequest,
                                 context: Context) -> pb.AuthenticateApiKeyResponse:
        principal = await self._accounts.resolve_api_key(request.key)
        if principal is None:  # the key is never part of the answer or of a log line
            raise NotFound("API key unknown or revoked", reason="API_KEY_NOT_FOUND")
        return pb.AuthenticateApiKeyResponse(user=user_name(principal.user_id), role=principal.role)


def register(server: grpc.aio.Server, servicer: IdentityInternalServicer) -> str:
    pb_grpc.add_IdentityInternalServiceServicer_to_server(servicer, server)
    return pb.DESCRIPTOR.services_by_name["IdentityInternalService"].full_name
