"""``clipmind.identity.v1.IdentityService``: thin conversion to ``accounts.Accounts``.

The caller is authenticated by the server's interceptor (``services.common.auth_interceptor``) and read here
from the request context as a plain ``Principal``; Login, RefreshToken, Logout and CreateUser (with self
sign-up) may be called without credential.
"""

from __future__ import annotations

import grpc.aio
from clipmind.identity.v1 import identity_service_pb2 as pb
from clipmind.identity.v1 import identity_service_pb2_grpc as pb_grpc
from google.protobuf import duration_pb2, empty_pb2

from services.common import request_context
from services.common.convert import timestamp
from services.common.errors import invalid_field
from services.common.grpc_server import Context
from services.common.names import api_key_name, parse_api_key_name, parse_user_or_me, user_name
from services.common.paging import bound_to, decode_token, encode_token, page_size
from services.identity.accounts import Accounts, Session
from services.identity.records import ApiKey, User

_ROLES = {"user": pb.User.ROLE_USER, "admin": pb.User.ROLE_ADMIN}


def user_to_pb(user: User) -> pb.User:
    return pb.User(name=user_name(user.id), email=user.email, display_name=user.display_name,
                   role=_ROLES.get(user.role, pb.User.ROLE_USER), create_time=timestamp(user.create_time))


def key_to_pb(key: ApiKey) -> pb.ApiKey:
    return pb.ApiKey(name=api_key_name(key.user_id, key.id), display_name=key.display_name,
                     key_prefix=key.key_prefix, create_time=timestamp(key.create_time),
                     last_use_time=timestamp(key.last_use_time))


def _expires_in(session: Session) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=int((session.claims.expires_at - session.claims.issued_at).total_seconds()))


def client_address(context: Context) -> str:
    """Who is on the other end: the last ``x-forwarded-for`` entry (the address Envoy saw), else the peer."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-forwarded-for" and str(value).strip():
            return str(value).rsplit(",", 1)[-1].strip()
    peer = context.peer() or ""
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


class IdentityServicer(pb_grpc.IdentityServiceServicer):
    def __init__(self, accounts: Accounts) -> None:
        self._accounts = accounts

    async def Login(self, request: pb.LoginRequest, context: Context) -> pb.LoginResponse:
        session = await self._accounts.login(request.email, request.password, client=client_address(context))
        return pb.LoginResponse(access_token=session.access_token, refresh_token=session.refresh_token,
                                expires_in=_expires_in(session), user=user_to_pb(session.user))

    async def RefreshToken(self, request: pb.RefreshTokenRequest, context: Context) -> pb.RefreshTokenResponse:
        if not request.refresh_token:
            raise invalid_field("refresh_token", "required", reason="REQUIRED_FIELD")
        session = await self._accounts.refresh(request.refresh_token)
        return pb.RefreshTokenResponse(access_token=session.access_token, refresh_token=session.refresh_token,
                                       expires_in=_expires_in(session))

    async def Logout(self, request: pb.LogoutRequest, context: Context) -> empty_pb2.Empty:
        if not request.refresh_token:
            raise invalid_field("refresh_token", "required", reason="REQUIRED_FIELD")
        await self._accounts.logout(request.refresh_token, request_context.current().claims)
        return empty_pb2.Empty()

    async def CreateUser(self, request: pb.CreateUserRequest, context: Context) -> pb.User:
        caller = request_context.current().principal
        role = {pb.User.ROLE_ADMIN: "admin"}.get(request.user.role, "user")
        user = await self._accounts.create_user(caller, email=request.user.email, password=request.password,
                                                display_name=request.user.display_name, role=role)
        return user_to_pb(user)

    async def DeleteUser(self, request: pb.DeleteUserRequest, context: Context) -> empty_pb2.Empty:
        user_id = parse_user_or_me(request.name, "name")
        caller = request_context.principal()
        await self._accounts.delete_user(caller, user_id or caller.user_id)
        return empty_pb2.Empty()

    async def GetCurrentUser(self, request: pb.GetCurrentUserRequest, context: Context) -> pb.User:
        caller = request_context.principal()
        return user_to_pb(await self._accounts.current_user(caller))

    async def CreateApiKey(self, request: pb.CreateApiKeyRequest, context: Context) -> pb.CreateApiKeyResponse:
        caller = request_context.principal()
        key, secret = await self._accounts.create_api_key(caller, parse_user_or_me(request.parent, "parent"),
                                                          request.api_key.display_name)
        return pb.CreateApiKeyResponse(api_key=key_to_pb(key), key=secret)

    async def ListApiKeys(self, request: pb.ListApiKeysRequest, context: Context) -> pb.ListApiKeysResponse:
        caller = request_context.principal()
        size = page_size(request.page_size, default=50, maximum=100)
        binding = bound_to(caller.user_id, "ListApiKeys", request.parent)
        keys = await self._accounts.list_api_keys(caller, parse_user_or_me(request.parent, "parent"), limit=size + 1,
                                                  after=decode_token(request.page_token, binding))
        more = len(keys) > size
        keys = keys[:size]
        token = encode_token(keys[-1].create_time, keys[-1].id, binding) if more and keys[-1].create_time else ""
        return pb.ListApiKeysResponse(api_keys=[key_to_pb(k) for k in keys], next_page_token=token)

    async def DeleteApiKey(self, request: pb.DeleteApiKeyRequest, context: Context) -> empty_pb2.Empty:
        caller = request_context.principal()
        user_id, key_id = parse_api_key_name(request.name, "name")
        await self._accounts.delete_api_key(caller, user_id or caller.user_id, key_id)
        return empty_pb2.Empty()


# What may be called without a credential (a credential that is sent must still be valid).
ANONYMOUS_METHODS = tuple(f"/{pb.DESCRIPTOR.services_by_name['IdentityService'].full_name}/{method}"
                          for method in ("Login", "RefreshToken", "Logout", "CreateUser"))


def register(server: grpc.aio.Server, servicer: IdentityServicer) -> str:
    pb_grpc.add_IdentityServiceServicer_to_server(servicer, server)
    return pb.DESCRIPTOR.services_by_name["IdentityService"].full_name
