"""The ownership walk: every public RPC, found in the descriptor set, is called by user B on user A's objects.

* An RPC whose request names a resource (``name``, ``parent``, or a message with a resource pattern such as
  ``UpdateVideo.video``) is given A's object of that type and must answer NOT_FOUND, never
  PERMISSION_DENIED or the object, so B learns nothing about A's objects, not even that they exist.
* Any other RPC (lists, searches, creations) must not return any of A's objects: their ids must not appear
  anywhere in B's answer. Resource references inside filters (``SearchFilter.videos``) are filled with A's
  objects too: NOT_FOUND or an answer without A's objects.
* An administrator sees A's objects; A does (positive controls, so the walk cannot pass by finding nothing).

A new RPC is covered the day it is added: its request is built from the descriptor, and a resource type the
walk has no object of fails the test until one is added to ``a_objects``. RPCs that answer UNIMPLEMENTED are
accepted only while they are listed in ``NOT_IMPLEMENTED``; once one is implemented the test fails until it is
taken off the list (and so walked).
"""

from __future__ import annotations

import importlib
import pkgutil
import uuid
from collections.abc import Iterator
from typing import Any

import clipmind
import grpc
import httpx
import pytest
from clipmind.ingest.v1 import ingest_service_pb2 as ingest_pb
from clipmind.ingest.v1 import ingest_service_pb2_grpc as ingest_grpc
from clipmind.pipeline.v1 import pipeline_service_pb2 as pipeline_pb
from clipmind.pipeline.v1 import pipeline_service_pb2_grpc as pipeline_grpc
from clipmind.search.v1 import search_service_pb2 as search_pb
from clipmind.search.v1 import search_service_pb2_grpc as search_grpc
from google.api import resource_pb2
from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message

from services.identity.servicer import ANONYMOUS_METHODS
from services.launcher.credentials import user_api_key
from tests.e2e.clients import authenticated_channel, bearer

pytestmark = pytest.mark.e2e

# Answer UNIMPLEMENTED today (issue 14); each must join the walk when it is built.
NOT_IMPLEMENTED = {
    "/clipmind.ingest.v1.IngestService/ImportVideo",
}
# Administrators' own RPCs, about no user's objects: a user is refused PERMISSION_DENIED, which tells nothing of A.
ADMIN_ONLY = {
    "/clipmind.pipeline.v1.PipelineService/GetQueueStats",
}
# Valid values for fields a request needs besides the resource names, so that a refusal is about ownership.
EXTRA_FIELDS: dict[str, dict[str, Any]] = {
    "/clipmind.search.v1.SearchService/Search": {"query": "the red scene"},
    "/clipmind.ingest.v1.IngestService/UpdateVideo": {"video.title": "taken over"},
    "/clipmind.ingest.v1.IngestService/WriteUpload": {"data.data": b"\x00" * 16, "offset": 0},
    "/clipmind.ingest.v1.IngestService/CompleteUpload": {"title": "taken over"},
    "/clipmind.ingest.v1.IngestService/CreateUpload": {"upload.filename": "b.mp4"},
    "/clipmind.identity.v1.IdentityService/CreateApiKey": {"api_key.display_name": "b's key on a's account"},
}


def _load_generated() -> None:
    for module in pkgutil.walk_packages(clipmind.__path__, "clipmind."):
        if module.name.endswith("_pb2"):
            importlib.import_module(module.name)


def _public_methods() -> Iterator[descriptor.MethodDescriptor]:
    _load_generated()
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.Default()
    for package in ("ingest", "pipeline", "search", "analytics", "identity"):
        file = pool.FindFileByName(f"clipmind/{package}/v1/{package}_service.proto")
        for service in file.services_by_name.values():
            yield from service.methods


def _path(method: descriptor.MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


METHODS = [m for m in _public_methods() if _path(m) not in ANONYMOUS_METHODS]


def _reference(field: descriptor.FieldDescriptor) -> str | None:
    """The resource type a string field names (``google.api.resource_reference``), if any."""
    options = field.GetOptions()
    if options.HasExtension(resource_pb2.resource_reference):
        ref = options.Extensions[resource_pb2.resource_reference]
        return ref.type or ref.child_type or None
    return None


def _resource_type(message: descriptor.Descriptor) -> str | None:
    options = message.GetOptions()
    if options.HasExtension(resource_pb2.resource):
        return options.Extensions[resource_pb2.resource].type or None
    return None


def _set(request: Message, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    target = request
    for part in parents:
        target = getattr(target, part)
    field = target.DESCRIPTOR.fields_by_name[leaf]
    if field.is_repeated:
        getattr(target, leaf).append(value)
    else:
        setattr(target, leaf, value)


def build_request(method: descriptor.MethodDescriptor, objects: dict[str, str]) -> tuple[Message, str]:
    """The request of ``method`` aimed at A's objects, and how B's call must fail: ``"not_found"`` when a
    top-level name/parent (or the resource the request carries) is A's, ``"absent"`` otherwise."""
    request = message_factory.GetMessageClass(method.input_type)()
    expect = "absent"
    for field in method.input_type.fields:
        kind = _reference(field)
        if kind is not None:
            if kind not in objects:
                pytest.fail(f"{_path(method)}.{field.name} names a {kind}: add one of A's to a_objects")
            _set(request, field.name, objects[kind])
            expect = "not_found" if field.name in ("name", "parent") else expect
        elif field.message_type is not None and _resource_type(field.message_type):
            kind = _resource_type(field.message_type)
            assert kind is not None
            if "name" in field.message_type.fields_by_name and kind in objects and method.name.startswith("Update"):
                _set(request, f"{field.name}.name", objects[kind])
                expect = "not_found"
        elif field.message_type is not None:  # filters: references one level down
            for inner in field.message_type.fields:
                inner_kind = _reference(inner)
                if inner_kind is not None:
                    if inner_kind not in objects:
                        pytest.fail(f"{_path(method)}.{field.name}.{inner.name} names a {inner_kind}: add one "
                                    "of A's to a_objects")
                    _set(request, f"{field.name}.{inner.name}", objects[inner_kind])
    for dotted, value in EXTRA_FIELDS.get(_path(method), {}).items():
        _set(request, dotted, value)
    return request, expect


def call(channel: grpc.Channel, method: descriptor.MethodDescriptor, request: Message) -> tuple[grpc.StatusCode, bytes]:
    """Status and raw response bytes (all messages of a stream) of one call."""
    path = _path(method)
    ser = {"request_serializer": lambda m: m.SerializeToString(), "response_deserializer": None}
    try:
        if method.client_streaming:
            reply = channel.stream_unary(path, **ser)(iter([request]), timeout=30)
        elif method.server_streaming:
            reply = b"".join(channel.unary_stream(path, **ser)(request, timeout=30))
        else:
            reply = channel.unary_unary(path, **ser)(request, timeout=30)
    except grpc.RpcError as err:
        return err.code(), b""
    return grpc.StatusCode.OK, reply


@pytest.fixture(scope="module")
def users(endpoints, credentials, rest: httpx.Client) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """A is the suite's ordinary user (who owns the processed video); B a fresh one; and the administrator."""
    email = f"b-{uuid.uuid4().hex[:8]}@example.com"
    return {"a": credentials.user, "b": user_api_key(endpoints.envoy_url, credentials.admin, email),
            "admin": credentials.admin}


@pytest.fixture(scope="module")
def a_objects(processed_video: dict, rest: httpx.Client, users: dict[str, str]) -> dict[str, str]:
    """One of A's objects of every resource type a public RPC names."""
    video = processed_video["video"]
    hits = rest.post("/v1/clips:search", json={"query": "the red scene"}).json()["results"]
    assert hits, "A finds her own clips"
    upload = rest.post("/v1/uploads", json={"filename": "a.mp4", "contentType": "video/mp4", "sizeBytes": "100"})
    assert upload.status_code == 200, upload.text
    me = rest.get("/v1/users:me").json()
    keys = rest.get("/v1/users/me/apiKeys").json()["apiKeys"]
    compilation = rest.post("/v1/compilations", json={"clips": [
        {"video": video["name"], "startSeconds": 0, "endSeconds": 2}]})
    assert compilation.status_code == 200, compilation.text
    return {
        "ingest.clipmind.dev/Video": video["name"],
        "ingest.clipmind.dev/Upload": upload.json()["name"],
        "pipeline.clipmind.dev/Job": video["job"],
        "search.clipmind.dev/Clip": hits[0]["clip"]["name"],
        "identity.clipmind.dev/User": me["name"],
        "identity.clipmind.dev/ApiKey": keys[0]["name"],
        "analytics.clipmind.dev/Usage": f"{me['name']}/usage",
        "pipeline.clipmind.dev/Compilation": compilation.json()["name"],
        # Not fetched by name: names that would be A's.
        "pipeline.clipmind.dev/DeadLetter": f"deadLetters/{uuid.uuid4()}",
        "analytics.clipmind.dev/Interaction": f"interactions/{uuid.uuid4()}",
    }


def _ids(objects: dict[str, str]) -> set[bytes]:
    """The ids of A's objects (the last segment of each name) as they would appear in a response."""
    return {name.rsplit("/", 1)[-1].encode() for name in objects.values() if "/" in name}


@pytest.mark.parametrize("method", METHODS, ids=_path)
def test_user_b_cannot_see_or_touch_user_a_objects(  # type: ignore[no-untyped-def]
    endpoints, users: dict[str, str], a_objects: dict[str, str], method: descriptor.MethodDescriptor
) -> None:
    request, expect = build_request(method, a_objects)
    with authenticated_channel(endpoints.envoy_url.removeprefix("http://"), users["b"]) as as_b:
        code, reply = call(as_b, method, request)
    if _path(method) in NOT_IMPLEMENTED:
        assert code == grpc.StatusCode.UNIMPLEMENTED, f"{_path(method)} is implemented now: walk it"
        return
    if _path(method) in ADMIN_ONLY:
        assert code == grpc.StatusCode.PERMISSION_DENIED, (code, request)
        assert not [i for i in _ids(a_objects) if i in reply]
        return
    if expect == "not_found":
        assert code == grpc.StatusCode.NOT_FOUND, (code, request)
        return
    # B's own list, search or creation: answered (or refused for B's own bad input) without A's objects.
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), (code, request)
    leaked = [i for i in _ids(a_objects) if i in reply]
    assert not leaked, f"B's answer holds A's objects {leaked}"


def test_a_and_an_administrator_do_see_a_objects(  # type: ignore[no-untyped-def]
    endpoints, users: dict[str, str], a_objects: dict[str, str]
) -> None:
    target = endpoints.envoy_url.removeprefix("http://")
    for who in ("a", "admin"):
        with authenticated_channel(target, users[who]) as channel:
            video = ingest_grpc.IngestServiceStub(channel).GetVideo(
                ingest_pb.GetVideoRequest(name=a_objects["ingest.clipmind.dev/Video"]), timeout=30)
            assert video.name == a_objects["ingest.clipmind.dev/Video"]
            job = pipeline_grpc.PipelineServiceStub(channel).GetJob(
                pipeline_pb.GetJobRequest(name=a_objects["pipeline.clipmind.dev/Job"]), timeout=30)
            assert job.name == a_objects["pipeline.clipmind.dev/Job"]
            clip = search_grpc.SearchServiceStub(channel).GetClip(
                search_pb.GetClipRequest(name=a_objects["search.clipmind.dev/Clip"]), timeout=30)
            assert clip.name == a_objects["search.clipmind.dev/Clip"]
            upload = ingest_grpc.IngestServiceStub(channel).GetUpload(
                ingest_pb.GetUploadRequest(name=a_objects["ingest.clipmind.dev/Upload"]), timeout=30)
            assert upload.name == a_objects["ingest.clipmind.dev/Upload"]


def test_b_sees_own_objects_and_search_is_filtered_in_the_query(  # type: ignore[no-untyped-def]
    endpoints, users: dict[str, str], a_objects: dict[str, str], rest: httpx.Client
) -> None:
    """B's search finds nothing of A's even for A's own words, and a list of B's videos holds none of A's."""
    with httpx.Client(base_url=endpoints.envoy_url, timeout=60, headers=bearer(users["b"])) as as_b:
        assert as_b.get("/v1/videos").json().get("videos", []) == []
        results = as_b.post("/v1/clips:search", json={"query": "the red scene"}).json().get("results", [])
        assert results == []
    assert rest.post("/v1/clips:search", json={"query": "the red scene"}).json()["results"]
