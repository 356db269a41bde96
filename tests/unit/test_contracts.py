"""Contract checks over the generated descriptor set (gen/descriptors/clipmind.binpb).

These hold the API to the house rules that buf lint does not check: every RPC is reachable over
REST through Envoy's transcoder (a ``google.api.http`` rule whose path variables and body name real
request fields), every List method paginates, every enum has an ``_UNSPECIFIED`` zero value, and the
five services exist. The ``test_checker_*`` tests feed deliberately broken copies of the descriptor
set to the same checks, so a check that silently passes everything is caught too.

Regenerate the descriptor set with ``scripts/gen-protos``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

DESCRIPTOR_SET = Path(__file__).resolve().parents[2] / "gen" / "descriptors" / "clipmind.binpb"

EXPECTED_SERVICES = {
    "clipmind.ingest.v1.IngestService",
    "clipmind.pipeline.v1.PipelineService",
    "clipmind.search.v1.SearchService",
    "clipmind.analytics.v1.AnalyticsService",
    "clipmind.identity.v1.IdentityService",
}
EXPECTED_INTERNAL_SERVICES = {
    "clipmind.ingest.internal.v1.IngestInternalService",
    "clipmind.pipeline.internal.v1.PipelineInternalService",
    "clipmind.search.internal.v1.SearchInternalService",
    "clipmind.analytics.internal.v1.AnalyticsInternalService",
    "clipmind.identity.internal.v1.IdentityInternalService",
}

_FieldType = descriptor_pb2.FieldDescriptorProto
_TEMPLATE_VARIABLE = re.compile(r"\{([^}=]+)(?:=[^}]*)?\}")


# --------------------------------------------------------------------------------------------------
# Descriptor helpers
# --------------------------------------------------------------------------------------------------


def load_descriptor_set(path: Path = DESCRIPTOR_SET) -> descriptor_pb2.FileDescriptorSet:
    if not path.is_file():
        pytest.fail(f"{path} is missing: run scripts/gen-protos")
    # Importing annotations_pb2 registers the google.api.http extension, so MethodOptions
    # parse it instead of keeping it as unknown fields.
    return descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())


_PUBLIC_PACKAGE = re.compile(r"clipmind\.[a-z]+\.v\d+")
_INTERNAL_PACKAGE = re.compile(r"clipmind\.[a-z]+\.internal\.v\d+")


def clipmind_files(fds: descriptor_pb2.FileDescriptorSet) -> list[descriptor_pb2.FileDescriptorProto]:
    """The public contracts (``clipmind.<svc>.v1``): what Envoy serves to clients."""
    return [f for f in fds.file if _PUBLIC_PACKAGE.fullmatch(f.package)]


def internal_files(fds: descriptor_pb2.FileDescriptorSet) -> list[descriptor_pb2.FileDescriptorProto]:
    """The internal contracts (``clipmind.<svc>.internal.v1``): service-to-service only."""
    return [f for f in fds.file if _INTERNAL_PACKAGE.fullmatch(f.package)]


def message_index(fds: descriptor_pb2.FileDescriptorSet) -> dict[str, descriptor_pb2.DescriptorProto]:
    """Every message in the set (nested ones included) by fully qualified name with leading dot."""
    index: dict[str, descriptor_pb2.DescriptorProto] = {}

    def add(prefix: str, message: descriptor_pb2.DescriptorProto) -> None:
        full = f"{prefix}.{message.name}"
        index[full] = message
        for nested in message.nested_type:
            add(full, nested)

    for file in fds.file:
        prefix = f".{file.package}" if file.package else ""
        for message in file.message_type:
            add(prefix, message)
    return index


def iter_methods(
    fds: descriptor_pb2.FileDescriptorSet,
) -> Iterator[tuple[str, descriptor_pb2.MethodDescriptorProto]]:
    for file in clipmind_files(fds):
        for service in file.service:
            for method in service.method:
                yield f"{file.package}.{service.name}.{method.name}", method


def iter_enums(fds: descriptor_pb2.FileDescriptorSet) -> Iterator[tuple[str, descriptor_pb2.EnumDescriptorProto]]:
    def from_message(prefix: str, message: descriptor_pb2.DescriptorProto) -> Iterator[tuple[str, object]]:
        full = f"{prefix}.{message.name}"
        for enum in message.enum_type:
            yield f"{full}.{enum.name}", enum
        for nested in message.nested_type:
            yield from from_message(full, nested)

    for file in clipmind_files(fds):
        for enum in file.enum_type:
            yield f"{file.package}.{enum.name}", enum
        for message in file.message_type:
            yield from from_message(file.package, message)  # type: ignore[misc]


def field(message: descriptor_pb2.DescriptorProto, name: str) -> descriptor_pb2.FieldDescriptorProto | None:
    return next((f for f in message.field if f.name == name), None)


def resolve_field_path(
    messages: dict[str, descriptor_pb2.DescriptorProto], message: descriptor_pb2.DescriptorProto, path: str
) -> descriptor_pb2.FieldDescriptorProto | None:
    """Follows a dotted field path such as ``video.name`` through message-typed fields."""
    current: descriptor_pb2.DescriptorProto | None = message
    found = None
    for part in path.split("."):
        if current is None:
            return None
        found = field(current, part)
        if found is None:
            return None
        current = messages.get(found.type_name) if found.type == _FieldType.TYPE_MESSAGE else None
    return found


def http_rule(method: descriptor_pb2.MethodDescriptorProto) -> http_pb2.HttpRule | None:
    if not method.options.HasExtension(annotations_pb2.http):
        return None
    rule = method.options.Extensions[annotations_pb2.http]
    return rule if rule.WhichOneof("pattern") else None


def http_path(rule: http_pb2.HttpRule) -> str:
    kind = rule.WhichOneof("pattern")
    return rule.custom.path if kind == "custom" else getattr(rule, kind)


# --------------------------------------------------------------------------------------------------
# Checks: each returns a list of human-readable problems (empty = OK)
# --------------------------------------------------------------------------------------------------


def missing_services(fds: descriptor_pb2.FileDescriptorSet) -> list[str]:
    present = {f"{file.package}.{service.name}" for file in clipmind_files(fds) for service in file.service}
    return sorted(EXPECTED_SERVICES - present)


def http_rule_problems(fds: descriptor_pb2.FileDescriptorSet) -> list[str]:
    messages = message_index(fds)
    problems = []
    for rpc, method in iter_methods(fds):
        rule = http_rule(method)
        if rule is None:
            problems.append(f"{rpc}: no google.api.http rule")
            continue
        request = messages.get(method.input_type)
        if request is None:
            problems.append(f"{rpc}: request type {method.input_type} not in the descriptor set")
            continue
        path = http_path(rule)
        if not path.startswith("/v1/"):
            problems.append(f"{rpc}: http path {path!r} does not start with /v1/")
        for variable in _TEMPLATE_VARIABLE.findall(path):
            if resolve_field_path(messages, request, variable) is None:
                problems.append(f"{rpc}: path variable {{{variable}}} is not a field of {method.input_type}")
        if rule.body and rule.body != "*" and field(request, rule.body) is None:
            problems.append(f"{rpc}: body {rule.body!r} is not a field of {method.input_type}")
        if rule.WhichOneof("pattern") in ("get", "delete") and rule.body:
            problems.append(f"{rpc}: {rule.WhichOneof('pattern').upper()} must not have a body")
    return problems


def pagination_problems(fds: descriptor_pb2.FileDescriptorSet) -> list[str]:
    messages = message_index(fds)
    problems = []
    for rpc, method in iter_methods(fds):
        request, response = messages[method.input_type], messages[method.output_type]
        # List* methods must paginate; any other method that takes a page_token must do it fully.
        if not (method.name.startswith("List") or field(request, "page_token") is not None):
            continue
        expected = (
            (request, method.input_type, "page_size", _FieldType.TYPE_INT32),
            (request, method.input_type, "page_token", _FieldType.TYPE_STRING),
            (response, method.output_type, "next_page_token", _FieldType.TYPE_STRING),
        )
        for message, type_name, name, kind in expected:
            found = field(message, name)
            if found is None:
                problems.append(f"{rpc}: {type_name} has no {name}")
            elif found.type != kind or found.label == _FieldType.LABEL_REPEATED:
                problems.append(f"{rpc}: {type_name}.{name} has the wrong type")
    return problems


def enum_problems(fds: descriptor_pb2.FileDescriptorSet) -> list[str]:
    problems = []
    for name, enum in iter_enums(fds):
        zero = next((v for v in enum.value if v.number == 0), None)  # type: ignore[attr-defined]
        if zero is None:
            problems.append(f"{name}: no value numbered 0")
        elif not zero.name.endswith("_UNSPECIFIED"):
            problems.append(f"{name}: zero value {zero.name} does not end with _UNSPECIFIED")
    return problems


# --------------------------------------------------------------------------------------------------
# The contract
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fds() -> descriptor_pb2.FileDescriptorSet:
    return load_descriptor_set()


def test_descriptor_set_has_clipmind_files_with_source_info(fds: descriptor_pb2.FileDescriptorSet) -> None:
    files = clipmind_files(fds) + internal_files(fds)
    assert files, "no clipmind.* files in the descriptor set"
    assert {f.name for f in files} == {f.name for f in fds.file if f.package.startswith("clipmind.")}, (
        "every clipmind package is clipmind.<svc>.v<n> (public) or clipmind.<svc>.internal.v<n> (internal)"
    )
    for file in files:
        # Envoy and docs tooling need comments: the set must be built with --include_source_info.
        assert file.source_code_info.location, f"{file.name}: no source info"


def test_all_services_exist(fds: descriptor_pb2.FileDescriptorSet) -> None:
    assert missing_services(fds) == [], "missing services"
    present = {f"{file.package}.{service.name}" for file in internal_files(fds) for service in file.service}
    assert present == EXPECTED_INTERNAL_SERVICES


def test_internal_rpcs_have_no_rest_mapping(fds: descriptor_pb2.FileDescriptorSet) -> None:
    """Internal contracts are never transcoded or routed to the outside: not one carries an http rule."""
    mapped = [f"{file.package}.{service.name}.{method.name}"
              for file in internal_files(fds) for service in file.service for method in service.method
              if http_rule(method) is not None]
    assert mapped == []
    assert sum(len(s.method) for f in internal_files(fds) for s in f.service) >= 6


def test_every_rpc_has_a_valid_http_rule(fds: descriptor_pb2.FileDescriptorSet) -> None:
    problems = http_rule_problems(fds)
    assert not problems, "RPCs without a usable google.api.http rule:\n" + "\n".join(problems)


def test_list_methods_paginate(fds: descriptor_pb2.FileDescriptorSet) -> None:
    problems = pagination_problems(fds)
    assert not problems, "pagination problems:\n" + "\n".join(problems)


def test_enum_zero_values_are_unspecified(fds: descriptor_pb2.FileDescriptorSet) -> None:
    problems = enum_problems(fds)
    assert not problems, "enum problems:\n" + "\n".join(problems)


def test_rest_routes_are_unique(fds: descriptor_pb2.FileDescriptorSet) -> None:
    seen: dict[tuple[str, str], str] = {}
    for rpc, method in iter_methods(fds):
        rule = http_rule(method)
        if rule is None:
            continue
        key = (rule.WhichOneof("pattern"), http_path(rule))
        assert key not in seen, f"{rpc} and {seen[key]} share the route {key}"
        seen[key] = rpc


# --------------------------------------------------------------------------------------------------
# The checks themselves must be able to fail
# --------------------------------------------------------------------------------------------------


def _broken_copy(fds: descriptor_pb2.FileDescriptorSet) -> descriptor_pb2.FileDescriptorSet:
    copy = descriptor_pb2.FileDescriptorSet()
    copy.CopyFrom(fds)
    return copy


def _find(copy: descriptor_pb2.FileDescriptorSet, rpc_name: str) -> descriptor_pb2.MethodDescriptorProto:
    return next(method for name, method in iter_methods(copy) if name == rpc_name)


def test_checker_reports_rpc_without_http_rule(fds: descriptor_pb2.FileDescriptorSet) -> None:
    broken = _broken_copy(fds)
    _find(broken, "clipmind.ingest.v1.IngestService.GetVideo").options.ClearExtension(annotations_pb2.http)
    assert http_rule_problems(broken) == ["clipmind.ingest.v1.IngestService.GetVideo: no google.api.http rule"]


def test_checker_reports_bad_path_variable(fds: descriptor_pb2.FileDescriptorSet) -> None:
    broken = _broken_copy(fds)
    rule = _find(broken, "clipmind.ingest.v1.IngestService.UpdateVideo").options.Extensions[annotations_pb2.http]
    rule.patch = "/v1/{video.nme=videos/*}"
    assert any("UpdateVideo: path variable {video.nme}" in p for p in http_rule_problems(broken))


def test_checker_reports_missing_page_token(fds: descriptor_pb2.FileDescriptorSet) -> None:
    broken = _broken_copy(fds)
    request = message_index(broken)[".clipmind.pipeline.v1.ListJobsRequest"]
    next(f for f in request.field if f.name == "page_token").name = "cursor"
    assert pagination_problems(broken) == [
        "clipmind.pipeline.v1.PipelineService.ListJobs: .clipmind.pipeline.v1.ListJobsRequest has no page_token"
    ]


def test_checker_reports_missing_next_page_token(fds: descriptor_pb2.FileDescriptorSet) -> None:
    broken = _broken_copy(fds)
    response = message_index(broken)[".clipmind.analytics.v1.ListPopularClipsResponse"]
    next(f for f in response.field if f.name == "next_page_token").name = "more"
    assert [p for p in pagination_problems(broken) if "ListPopularClips" in p]


def test_checker_reports_enum_without_unspecified(fds: descriptor_pb2.FileDescriptorSet) -> None:
    broken = _broken_copy(fds)
    video = message_index(broken)[".clipmind.ingest.v1.Video"]
    state = next(e for e in video.enum_type if e.name == "State")
    state.value[0].name = "STATE_NONE"
    assert enum_problems(broken) == [
        "clipmind.ingest.v1.Video.State: zero value STATE_NONE does not end with _UNSPECIFIED"
    ]


def test_checker_reports_missing_service(fds: descriptor_pb2.FileDescriptorSet) -> None:
    broken = _broken_copy(fds)
    for file in broken.file:
        if file.package == "clipmind.search.v1":
            del file.service[:]
    assert missing_services(broken) == ["clipmind.search.v1.SearchService"]
