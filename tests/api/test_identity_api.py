"""IdentityService and IdentityInternalService at the gRPC edge, in process, storage faked (tests/api/fakes.py):
who may call what, the status and reason of every refusal, page tokens bound to their caller, per-user limits
with Retry-After."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import grpc.aio
import pytest
from clipmind.identity.internal.v1 import identity_internal_service_pb2 as ipb
from clipmind.identity.internal.v1 import identity_internal_service_pb2_grpc as ipb_grpc
from clipmind.identity.v1 import identity_service_pb2 as pb
from clipmind.identity.v1 import identity_service_pb2_grpc as pb_grpc
from google.rpc import error_details_pb2, status_pb2

from services.common.auth import Authenticator, SystemCredentials
from services.common.principal import Principal
from services.common.request_limits import RequestLimiter, UserLimits
from services.common.tokens import TokenSigner
from services.identity import internal_servicer, servicer
from services.identity.accounts import Accounts
from services.identity.server import LocalApiKeys
from tests.api.conftest import bearer, serving
from tests.api.fakes import FakeAccountStore, FakeRevocations, FakeWindows

PASSWORD = "Correct-horse-9-battery"
SIGNER = TokenSigner({"k1": b"a" * 32}, active_kid="k1")


@dataclass
class Api:
    stub: pb_grpc.IdentityServiceStub
    internal: ipb_grpc.IdentityInternalServiceStub
    accounts: Accounts
    admin: str  # an admin's access token


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    store, revocations = FakeAccountStore(), FakeRevocations()
    accounts = Accounts(store, SIGNER, revoker=revocations)
    authenticator = Authenticator(SIGNER, revocations, LocalApiKeys(accounts))
    limits = RequestLimiter(FakeWindows(revocations), UserLimits(requests_per_hour=40))

    def register(server: grpc.aio.Server) -> None:
        servicer.register(server, servicer.IdentityServicer(accounts))
        internal_servicer.register(server, internal_servicer.IdentityInternalServicer(accounts))

    async with serving(register, authenticator, optional_methods=servicer.ANONYMOUS_METHODS, limits=limits) as target:
        async with grpc.aio.insecure_channel(target) as channel:
            await accounts.ensure_first_admin("admin@localhost", PASSWORD)
            stub = pb_grpc.IdentityServiceStub(channel)
            session = await stub.Login(pb.LoginRequest(email="admin@localhost", password=PASSWORD))
            yield Api(stub, ipb_grpc.IdentityInternalServiceStub(channel), accounts, session.access_token)


def _reason(err: grpc.aio.AioRpcError) -> str:
    raw = dict(err.trailing_metadata() or ()).get("grpc-status-details-bin")
    info = error_details_pb2.ErrorInfo()
    if raw:
        for detail in status_pb2.Status.FromString(raw).details:
            if detail.Unpack(info):
                return info.reason
    return ""


async def _refused(call, code: grpc.StatusCode) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, (err.value.code(), err.value.details())
    return _reason(err.value)


async def _user(api: Api, email: str) -> tuple[str, str]:
    """A new user's (resource name, access token)."""
    made = await api.stub.CreateUser(pb.CreateUserRequest(user=pb.User(email=email), password=PASSWORD),
                                     metadata=bearer(api.admin))
    session = await api.stub.Login(pb.LoginRequest(email=email, password=PASSWORD))
    return made.name, session.access_token


async def test_credentials_are_needed_except_to_sign_in(api: Api) -> None:
    assert await _refused(api.stub.GetCurrentUser(pb.GetCurrentUserRequest()),
                          grpc.StatusCode.UNAUTHENTICATED) == "CREDENTIALS_REQUIRED"
    assert await _refused(api.stub.GetCurrentUser(pb.GetCurrentUserRequest(), metadata=bearer("nope")),
                          grpc.StatusCode.UNAUTHENTICATED) == "TOKEN_INVALID"
    me = await api.stub.GetCurrentUser(pb.GetCurrentUserRequest(), metadata=bearer(api.admin))
    assert me.role == pb.User.ROLE_ADMIN
    # Sign-up is off: an anonymous CreateUser is refused by the domain, not the interceptor.
    assert await _refused(api.stub.CreateUser(pb.CreateUserRequest(user=pb.User(email="x@example.com"),
                                                                   password=PASSWORD)),
                          grpc.StatusCode.UNAUTHENTICATED) == "SIGN_IN_REQUIRED"


async def test_logout_and_deletion_void_tokens_and_keys_at_once(api: Api) -> None:
    name, token = await _user(api, "ann@example.com")
    key = (await api.stub.CreateApiKey(pb.CreateApiKeyRequest(parent="users/me"), metadata=bearer(token))).key
    refresh = (await api.stub.Login(pb.LoginRequest(email="ann@example.com", password=PASSWORD))).refresh_token
    await api.stub.Logout(pb.LogoutRequest(refresh_token=refresh), metadata=bearer(token))
    assert await _refused(api.stub.GetCurrentUser(pb.GetCurrentUserRequest(), metadata=bearer(token)),
                          grpc.StatusCode.UNAUTHENTICATED) == "TOKEN_REVOKED"
    assert (await api.stub.GetCurrentUser(pb.GetCurrentUserRequest(), metadata=bearer(key))).name == name

    _, bob = await _user(api, "bob@example.com")
    # A user cannot delete another (who does not exist for them) nor themselves; an admin can.
    assert await _refused(api.stub.DeleteUser(pb.DeleteUserRequest(name=name), metadata=bearer(bob)),
                          grpc.StatusCode.NOT_FOUND) == "USER_NOT_FOUND"
    await api.stub.DeleteUser(pb.DeleteUserRequest(name=name), metadata=bearer(api.admin))
    assert await _refused(api.stub.GetCurrentUser(pb.GetCurrentUserRequest(), metadata=bearer(key)),
                          grpc.StatusCode.UNAUTHENTICATED) == "API_KEY_INVALID"
    assert await _refused(api.stub.DeleteUser(pb.DeleteUserRequest(name="users/me"), metadata=bearer(api.admin)),
                          grpc.StatusCode.FAILED_PRECONDITION) == "SELF_DELETE"


async def test_page_tokens_are_bound_to_their_caller(api: Api) -> None:
    _, ann = await _user(api, "ann2@example.com")
    _, bob = await _user(api, "bob2@example.com")
    for i in range(3):
        await api.stub.CreateApiKey(pb.CreateApiKeyRequest(parent="users/me", api_key=pb.ApiKey(display_name=f"k{i}")),
                                    metadata=bearer(ann))
    first = await api.stub.ListApiKeys(pb.ListApiKeysRequest(parent="users/me", page_size=2), metadata=bearer(ann))
    assert len(first.api_keys) == 2 and first.next_page_token
    rest = await api.stub.ListApiKeys(pb.ListApiKeysRequest(parent="users/me", page_size=2,
                                                            page_token=first.next_page_token), metadata=bearer(ann))
    assert len(rest.api_keys) == 1 and not rest.next_page_token
    stolen = pb.ListApiKeysRequest(parent="users/me", page_size=2, page_token=first.next_page_token)
    assert await _refused(api.stub.ListApiKeys(stolen, metadata=bearer(bob)),
                          grpc.StatusCode.INVALID_ARGUMENT) == "PAGE_TOKEN_MISMATCH"


async def test_the_internal_api_is_for_the_system_only(api: Api) -> None:
    _, token = await _user(api, "carl@example.com")
    key = (await api.stub.CreateApiKey(pb.CreateApiKeyRequest(parent="users/me"), metadata=bearer(token))).key
    request = ipb.AuthenticateApiKeyRequest(key=key)
    for credential in (token, key, api.admin):
        assert await _refused(api.internal.AuthenticateApiKey(request, metadata=bearer(credential)),
                              grpc.StatusCode.UNAUTHENTICATED) == "SERVICE_IDENTITY_INVALID"
    system = (("authorization", SystemCredentials(SIGNER).authorization()),)
    answer = await api.internal.AuthenticateApiKey(request, metadata=system)
    assert answer.role == "user" and answer.user.startswith("users/")
    assert await _refused(api.internal.AuthenticateApiKey(ipb.AuthenticateApiKeyRequest(key="cmk_x"),
                                                          metadata=system),
                          grpc.StatusCode.NOT_FOUND) == "API_KEY_NOT_FOUND"


async def test_per_user_limits_answer_with_retry_after(api: Api) -> None:
    _, token = await _user(api, "dana@example.com")
    for _ in range(40):
        await api.stub.GetCurrentUser(pb.GetCurrentUserRequest(), metadata=bearer(token))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.GetCurrentUser(pb.GetCurrentUserRequest(), metadata=bearer(token))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and _reason(err.value) == "RATE_LIMITED"
    trailers = dict(err.value.trailing_metadata() or ())
    assert 1 <= int(trailers["retry-after"]) <= 3600
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in status_pb2.Status.FromString(trailers["grpc-status-details-bin"]).details)
    # Another user is not affected.
    assert (await api.stub.GetCurrentUser(pb.GetCurrentUserRequest(), metadata=bearer(api.admin))).email


def test_principal_scope() -> None:
    user = Principal(uuid.uuid4(), "user")
    assert user.scope == user.user_id and Principal(uuid.uuid4(), "admin").scope is None
