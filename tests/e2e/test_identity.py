"""Identity through the mesh as `clipmind up` starts it: the first administrator, sign-in, who-am-I, users,
API keys, refresh rotation and logout, over REST through Envoy and over gRPC."""

from __future__ import annotations

import stat
import uuid

import grpc
import httpx
import pytest
from clipmind.identity.v1 import identity_service_pb2 as pb
from clipmind.identity.v1 import identity_service_pb2_grpc as pb_grpc

from services.cli import describe
from services.launcher import Mesh

pytestmark = pytest.mark.e2e

PASSWORD = "Correct-horse-9-battery"


def _admin_password(mesh: Mesh) -> str:
    return mesh.admin_password_path.read_text().strip()


def _login(rest: httpx.Client, email: str, password: str) -> dict:
    response = rest.post("/v1/auth:login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return dict(response.json())


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_the_first_admin_password_is_private_and_never_logged(mesh: Mesh, credentials, rest: httpx.Client) -> None:  # type: ignore[no-untyped-def]
    path = mesh.admin_password_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    password = _admin_password(mesh)
    assert len(password) >= 16
    rest.get("/v1/users:me")  # a call with the user's key, so that any logging of credentials would show
    session = _login(rest, "admin@localhost", password)
    secrets = {"admin.password": password, "admin API key": credentials.admin, "user API key": credentials.user,
               "access token": session["accessToken"], "refresh token": session["refreshToken"]}
    for secret_file in ("jwt.keys", "postgres.password", "redis.password", "db-roles.secret"):
        assert stat.S_IMODE((mesh.state_dir / secret_file).stat().st_mode) == 0o600, secret_file
        secrets[secret_file] = (mesh.state_dir / secret_file).read_text().strip().split(":")[-1]
    for log in (mesh.state_dir / "logs").glob("*.log"):
        text = log.read_text(errors="replace")
        for name, secret in secrets.items():
            assert secret not in text, f"{name} in {log.name}"
    shown = describe(mesh.endpoints, mesh.state_dir)  # what `clipmind up` prints
    assert not [name for name, secret in secrets.items() if secret in shown]
    assert str(mesh.admin_password_path) in shown


def test_sign_in_and_who_am_i_over_rest(mesh: Mesh, anonymous: httpx.Client) -> None:
    rest = anonymous
    session = _login(rest, "admin@localhost", _admin_password(mesh))
    assert session["user"]["role"] == "ROLE_ADMIN" and session["expiresIn"] == "900s"
    me = rest.get("/v1/users:me", headers=_bearer(session["accessToken"]))
    assert me.status_code == 200 and me.json()["email"] == "admin@localhost"
    for headers in ({}, _bearer("not-a-token"), _bearer(session["refreshToken"]), {"authorization": "Basic x"}):
        refused = rest.get("/v1/users:me", headers=headers)
        assert refused.status_code == 401, (headers, refused.text)
    wrong = rest.post("/v1/auth:login", json={"email": "admin@localhost", "password": "Wrong-password-123"})
    assert wrong.status_code == 401 and PASSWORD not in wrong.text


def test_users_and_api_keys_for_scripts(mesh: Mesh, anonymous: httpx.Client) -> None:
    rest = anonymous
    admin = _login(rest, "admin@localhost", _admin_password(mesh))
    email = f"ann-{uuid.uuid4().hex[:8]}@example.com"
    created = rest.post("/v1/users", json={"user": {"email": email, "displayName": "Ann"}, "password": PASSWORD},
                        headers=_bearer(admin["accessToken"]))
    assert created.status_code == 200, created.text
    assert rest.post("/v1/users", json={"user": {"email": f"x{email}"}, "password": PASSWORD}).status_code == 401

    ann = _login(rest, email, PASSWORD)
    as_ann = _bearer(ann["accessToken"])
    assert rest.post("/v1/users", json={"user": {"email": f"y{email}"}, "password": PASSWORD},
                     headers=as_ann).status_code == 403  # not an admin
    made = rest.post("/v1/users/me/apiKeys", json={"displayName": "nightly import"}, headers=as_ann)
    assert made.status_code == 200, made.text
    key, record = made.json()["key"], made.json()["apiKey"]
    assert key.startswith("cmk_") and record["keyPrefix"] == key[:12]
    me = rest.get("/v1/users:me", headers=_bearer(key))  # the key acts as Ann
    assert me.status_code == 200 and me.json()["email"] == email
    listed = rest.get("/v1/users/me/apiKeys", headers=as_ann).json()["apiKeys"]
    assert [k["name"] for k in listed] == [record["name"]] and "key" not in listed[0]
    # The admin sees Ann's keys under her name; Ann's key name means nothing to another user.
    assert rest.get(f"/v1/{created.json()['name']}/apiKeys", headers=_bearer(admin["accessToken"])).json()["apiKeys"]
    assert rest.delete(f"/v1/{record['name']}", headers=as_ann).status_code == 200
    assert rest.get("/v1/users:me", headers=_bearer(key)).status_code == 401


def test_refresh_rotates_and_logout_revokes_over_rest(mesh: Mesh, anonymous: httpx.Client) -> None:
    rest = anonymous
    first = _login(rest, "admin@localhost", _admin_password(mesh))
    second = rest.post("/v1/auth:refresh", json={"refreshToken": first["refreshToken"]})
    assert second.status_code == 200, second.text
    again = rest.post("/v1/auth:refresh", json={"refreshToken": first["refreshToken"]})
    assert again.status_code == 401  # used once already: the whole sign-in is revoked
    assert rest.post("/v1/auth:refresh", json={"refreshToken": second.json()["refreshToken"]}).status_code == 401

    session = _login(rest, "admin@localhost", _admin_password(mesh))
    out = rest.post("/v1/auth:logout", json={"refreshToken": session["refreshToken"]},
                    headers=_bearer(session["accessToken"]))
    assert out.status_code == 200, out.text
    assert rest.get("/v1/users:me", headers=_bearer(session["accessToken"])).status_code == 401
    assert rest.post("/v1/auth:refresh", json={"refreshToken": session["refreshToken"]}).status_code == 401


def test_sign_in_over_grpc_through_envoy(mesh: Mesh, endpoints) -> None:  # type: ignore[no-untyped-def]
    channel = grpc.insecure_channel(endpoints.envoy_url.removeprefix("http://"))
    stub = pb_grpc.IdentityServiceStub(channel)
    session = stub.Login(pb.LoginRequest(email="admin@localhost", password=_admin_password(mesh)), timeout=30)
    me = stub.GetCurrentUser(pb.GetCurrentUserRequest(), metadata=[("authorization", f"Bearer {session.access_token}")],
                             timeout=30)
    assert (me.email, me.role) == ("admin@localhost", pb.User.ROLE_ADMIN)
    with pytest.raises(grpc.RpcError) as err:
        stub.GetCurrentUser(pb.GetCurrentUserRequest(), timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    channel.close()
