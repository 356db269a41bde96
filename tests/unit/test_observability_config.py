"""The alerting rules (deploy/prometheus/alerts.yml) and the Grafana dashboard (deploy/grafana/clipmind-dashboard.json)
refer only to what the processes export.

Every PromQL expression of both files is tokenized here (strings, ranges and label matchers apart; functions,
keywords and the label lists of ``by``/``without``/``on``/``ignoring``/``group_*`` skipped) and each series it
selects must be a sample name the processes expose: computed from the prometheus_client objects themselves (the
default registry after importing services.common.metrics and services.common.grpc_metrics, with the suffixes of
each family's type for labelled metrics that have no children yet, and prometheus_client's process/python
collectors), or a recording rule of the rules file. The one allowance is the ``node_`` prefix: node_exporter's
series, deployed beside the mesh, for the disk alert (no ClipMind process exports disk usage). Label names in
matchers must be the metric's own (or ``job``/``instance``, added by the scrape), and values of the bounded
labels (service, method, code, le, state, queue, outcome, result) must be values the processes can produce.
No Prometheus or promtool is needed: this is a structural check, not an evaluation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from prometheus_client import REGISTRY
from prometheus_client.metrics import Histogram, MetricWrapperBase
from prometheus_client.utils import floatToGoString

import services.common.grpc_metrics  # noqa: F401  (the interceptor's metrics: imported for the registry's sake)
from services.common import metrics as clipmind_metrics
from services.common.queue import QUEUE_NAME
from services.pipeline.worker import JOB_STATES

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "clipmind-dashboard.json"
DESCRIPTORS = ROOT / "gen" / "descriptors" / "clipmind.binpb"

#: node_exporter's series (node_filesystem_*), deployed beside the mesh and scraped by the same Prometheus: the
#: disk alert's only source, since no ClipMind process exports disk usage. Nothing else outside the mesh is allowed.
EXTERNAL_PREFIXES = ("node_",)
#: Labels the scrape adds to every series.
TARGET_LABELS = frozenset({"job", "instance"})
#: prometheus_client's ProcessCollector (Linux only; the registry has it there already): named for other systems.
PROCESS_SAMPLES = frozenset({
    "process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
    "process_start_time_seconds", "process_open_fds", "process_max_fds",
})
#: The sample names of a family of each type (prometheus_client's exposition).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}

AGGREGATIONS = frozenset({
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio",
})
FUNCTIONS = AGGREGATIONS | frozenset({
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "avg_over_time",
    "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh", "count_over_time", "day_of_month",
    "day_of_week", "day_of_year", "days_in_month", "deg", "delta", "deriv", "end", "exp", "floor",
    "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile", "histogram_stddev",
    "histogram_stdvar", "histogram_sum", "holt_winters", "double_exponential_smoothing", "hour", "idelta",
    "increase", "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2",
    "mad_over_time", "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear",
    "present_over_time", "quantile_over_time", "rad", "rate", "resets", "round", "scalar", "sgn", "sin", "sinh",
    "sort", "sort_by_label", "sort_by_label_desc", "sort_desc", "sqrt", "start", "stddev_over_time",
    "stdvar_over_time", "sum_over_time", "tan", "tanh", "time", "timestamp", "vector", "year",
})
#: Keywords followed by a parenthesized list of label names (optional for group_left/group_right).
LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"and", "or", "unless", "atan2", "bool", "offset", "inf", "nan"})
MATCH_OPS = frozenset({"=", "!=", "=~", "!~"})

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\[\]]*\])
  | (?P<duration>\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*(?![A-Za-z0-9_:]))
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=@,(){}])
""", re.VERBOSE)
_DURATION = r"(?:\d+(?:ms|[smhdwy]))+|\$__(?:rate_interval|interval|range)|\$\{?\w+\}?"
_RANGE = re.compile(rf"\[\s*(?:{_DURATION})\s*(?::\s*(?:{_DURATION})?\s*)?\]")
_FOR = re.compile(r"(?:\d+(?:ms|[smhdwy]))+")
_PLAIN_ALTERNATION = re.compile(r"[\w.]+(?:\|[\w.]+)*")


class PromQLError(ValueError):
    pass


@dataclass
class Selector:
    metric: str | None
    matchers: list[tuple[str, str, str]] = field(default_factory=list)  # (label, op, value)


def _tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise PromQLError(f"unexpected {expr[pos:pos + 20]!r} at {pos}")
        kind = match.lastgroup
        assert kind is not None
        if kind not in ("ws", "comment"):
            out.append((kind, match.group()))
        pos = match.end()
    return out


def _unquote(literal: str) -> str:
    if literal.startswith("`"):
        return literal[1:-1]
    if literal.startswith("'"):
        literal = '"' + literal[1:-1].replace('"', '\\"').replace("\\'", "'") + '"'
    try:
        return str(json.loads(literal))
    except ValueError:
        return literal[1:-1]


def parse_selectors(expr: str) -> list[Selector]:
    """The series selectors of a PromQL expression (metric name and label matchers), checking along the way that
    parentheses and braces balance, every function is one PromQL has and every range is a duration."""
    tokens, selectors, depth, i = _tokens(expr), [], 0, 0

    def peek(at: int) -> tuple[str, str]:
        return tokens[at] if at < len(tokens) else ("end", "")

    def matchers(at: int) -> tuple[list[tuple[str, str, str]], int]:
        """Label matchers from the ``{`` at ``at``; returns them and the index after the closing ``}``."""
        found, at = [], at + 1
        while True:
            kind, text = peek(at)
            if kind == "end":
                raise PromQLError("unbalanced braces: '{' never closed")
            if text == "}":
                return found, at + 1
            (lk, label), (_, op), (vk, value) = peek(at), peek(at + 1), peek(at + 2)
            if lk != "ident" or op not in MATCH_OPS or vk != "string":
                raise PromQLError(f"bad label matcher near {label!r} {op!r} {value!r} (unbalanced braces?)")
            found.append((label, op, _unquote(value)))
            at += 3
            if peek(at)[1] == ",":
                at += 1
            elif peek(at)[0] == "end":
                raise PromQLError("unbalanced braces: '{' never closed")
            elif peek(at)[1] != "}":
                raise PromQLError(f"expected ',' or '}}' after the matcher on {label!r}, got {peek(at)[1]!r}")

    while i < len(tokens):
        kind, text = tokens[i]
        if kind == "range":
            if not _RANGE.fullmatch(text):
                raise PromQLError(f"bad range {text}")
        elif kind == "op" and text == "(":
            depth += 1
        elif kind == "op" and text == ")":
            depth -= 1
            if depth < 0:
                raise PromQLError("unbalanced parentheses: ')' without '('")
        elif kind == "op" and text == "}":
            raise PromQLError("unbalanced braces: '}' without '{'")
        elif kind == "op" and text == "{":  # a selector without a metric name: {__name__="..."}
            found, i = matchers(i)
            names = [v for label, op, v in found if label == "__name__" and op == "="]
            selectors.append(Selector(names[0] if names else None, found))
            continue
        elif kind == "ident":
            word, following = text.lower(), peek(i + 1)[1]
            if word in LABEL_LIST_KEYWORDS:
                if following == "(":
                    close = next((j for j in range(i + 2, len(tokens)) if tokens[j][1] == ")"), None)
                    if close is None:
                        raise PromQLError(f"unbalanced parentheses: {text}( never closed")
                    inner = tokens[i + 2:close]
                    if any(k != "ident" and t != "," for k, t in inner):
                        raise PromQLError(f"{text}(...) must list label names, got {[t for _, t in inner]}")
                    i = close + 1
                    continue
                if word in ("by", "without", "on", "ignoring"):
                    raise PromQLError(f"{text} needs a list of label names")
            elif following == "(":
                if text not in FUNCTIONS:
                    raise PromQLError(f"unknown function {text}()")
            elif text in AGGREGATIONS and peek(i + 1)[1] in ("by", "without"):
                pass
            elif word in KEYWORDS:
                pass
            else:  # a metric name (or a recording rule's)
                found: list[tuple[str, str, str]] = []
                if following == "{":
                    found, i = matchers(i + 1)
                    selectors.append(Selector(text, found))
                    continue
                selectors.append(Selector(text, found))
        i += 1
    if depth != 0:
        raise PromQLError("unbalanced parentheses: '(' never closed")
    return selectors


# -- what the processes export ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """One sample name the processes expose: its label names (None: not known) and its help text."""

    labels: frozenset[str] | None
    help: str = ""
    family: str = ""


def _wrappers() -> Iterator[MetricWrapperBase]:
    for value in vars(clipmind_metrics).values():
        if isinstance(value, MetricWrapperBase):
            yield value


@cache
def exported() -> dict[str, Series]:
    """Sample name → Series, from the default registry (every family, with or without children yet)."""
    known: dict[str, Series] = {}
    wrapper_labels = {w._name: frozenset(w._labelnames) for w in _wrappers()}
    for family in REGISTRY.collect():
        labels = wrapper_labels.get(family.name)
        if labels is None and hasattr(family, "_labelnames"):  # the live collector's GaugeMetricFamily
            labels = frozenset(family._labelnames)
        if labels is None and family.samples:
            labels = frozenset(k for s in family.samples for k in s.labels) - {"le", "quantile"}
        names = {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
        names |= {s.name for s in family.samples}
        for name in names:
            extra = {"le"} if name.endswith("_bucket") else set()
            known[name] = Series(None if labels is None else labels | extra, family.documentation, family.name)
    for name in PROCESS_SAMPLES:
        known.setdefault(name, Series(frozenset(), "", name))
    return known


@cache
def buckets() -> dict[str, frozenset[str]]:
    """``<histogram>_bucket`` → its ``le`` values, as the exposition writes them (``1800.0``, ``+Inf``)."""
    return {f"{w._name}_bucket": frozenset(floatToGoString(b) for b in w._upper_bounds)
            for w in _wrappers() if isinstance(w, Histogram)}


@cache
def grpc_services() -> dict[str, frozenset[str]]:
    """Every gRPC service a ClipMind server registers (its own, health, reflection) → its method names."""
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes()).file
    found = {f"{f.package}.{s.name}": frozenset(m.name for m in s.method)
             for f in files if f.package.startswith("clipmind.") for s in f.service}
    for module in (health_pb2, reflection_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            found[service.full_name] = frozenset(m.name for m in service.methods)
    return found


def label_values(series: Series, sample: str, label: str) -> frozenset[str] | None:
    """The values ``label`` can take on ``sample`` (None: unbounded or not known)."""
    if label == "le" and sample in buckets():
        return buckets()[sample]
    if label == "service" and series.family.startswith("clipmind_grpc_server"):
        return frozenset(grpc_services())
    if label == "method" and series.family.startswith("clipmind_grpc_server"):
        return frozenset().union(*grpc_services().values())
    if label == "code":
        if series.family.startswith("clipmind_grpc_server"):
            return frozenset(code.name for code in grpc.StatusCode)
        return None  # dead letters: the pipeline's failure codes, open-ended
    if label == "state" and series.family == "clipmind_worker_jobs":
        return frozenset(JOB_STATES)
    if label == "state" and series.family == "clipmind_triton_circuit_state":
        return frozenset(clipmind_metrics.BREAKER_STATES)
    if label == "queue":
        return frozenset({QUEUE_NAME})
    if label in ("outcome", "result"):  # fixed words that the metric's help text lists
        return frozenset(re.findall(r"[a-z_0-9]+", series.help))
    return None


def _matches(op: str, value: str, domain: frozenset[str]) -> list[str]:
    """Problems with one matcher's value against the values the label can take."""
    if op in ("=", "!="):
        return [] if value in domain else [f"{value!r} is not one of {sorted(domain)}"]
    if _PLAIN_ALTERNATION.fullmatch(value):
        unknown = [v for v in value.split("|") if v not in domain]
        return [f"{unknown} not among {sorted(domain)}"] if unknown else []
    try:
        pattern = re.compile(value)
    except re.error as exc:
        return [f"bad regex {value!r}: {exc}"]
    return [] if any(pattern.fullmatch(v) for v in domain) else [f"regex {value!r} matches none of {sorted(domain)}"]


def problems(expr: str, recorded: frozenset[str] = frozenset()) -> list[str]:
    """What is wrong with ``expr``: syntax (balance, functions, ranges), series that no process exports (neither a
    recording rule in ``recorded`` nor node_exporter's), label names the metric lacks, label values it never has."""
    try:
        selectors = parse_selectors(expr)
    except PromQLError as exc:
        return [str(exc)]
    if not selectors:
        return ["selects no series"]
    found, known = [], exported()
    for selector in selectors:
        name = selector.metric
        if name is None:
            found.append("a selector without a metric name")
            continue
        if name in recorded or name.startswith(EXTERNAL_PREFIXES):
            continue
        series = known.get(name)
        if series is None:
            found.append(f"{name}: not exported by any process")
            continue
        for label, op, value in selector.matchers:
            if series.labels is not None and label not in series.labels | TARGET_LABELS:
                found.append(f"{name}: no label {label!r} (has {sorted(series.labels)})")
                continue
            if "$" in value:  # a Grafana variable
                continue
            domain = label_values(series, name, label)
            if domain is not None:
                found.extend(f"{name}{{{label}{op}...}}: {p}" for p in _matches(op, value, domain))
    return found


# -- the files ----------------------------------------------------------------------------------------------


@cache
def rules_file() -> dict[str, Any]:
    loaded = yaml.safe_load(RULES.read_text())
    assert isinstance(loaded, dict), "the rules file is not a mapping"
    return loaded


def rules() -> list[dict[str, Any]]:
    return [rule for group in rules_file()["groups"] for rule in group["rules"]]


def recorded() -> frozenset[str]:
    return frozenset(rule["record"] for rule in rules() if "record" in rule)


@cache
def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text())
    assert isinstance(loaded, dict)
    return loaded


def panels() -> list[dict[str, Any]]:
    out = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # a collapsed row keeps its panels
    return out


def dashboard_exprs() -> list[tuple[str, str]]:
    return [(f"{panel['title']}/{target['refId']}", target["expr"])
            for panel in panels() if panel["type"] != "row" for target in panel.get("targets", [])]


# -- the rules file -----------------------------------------------------------------------------------------


def test_rules_file_structure() -> None:
    loaded = rules_file()
    assert set(loaded) == {"groups"}, set(loaded)
    groups = loaded["groups"]
    group_names = [group["name"] for group in groups]
    assert group_names and len(group_names) == len(set(group_names)), f"group names repeat: {group_names}"
    names: list[str] = []
    for group in groups:
        assert set(group) <= {"name", "interval", "rules", "limit", "query_offset"}, group.keys()
        assert group["rules"], f"group {group['name']} has no rules"
        for rule in group["rules"]:
            assert ("alert" in rule) != ("record" in rule), f"a rule needs alert or record: {rule}"
            assert isinstance(rule.get("expr"), str) and rule["expr"].strip(), f"no expr: {rule}"
            if "record" in rule:
                assert set(rule) <= {"record", "expr", "labels"}, rule.keys()
                assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["record"]), rule["record"]
                assert ":" in rule["record"], f"recording rule names are level:metric:operations: {rule['record']}"
                names.append(rule["record"])
                continue
            name = rule["alert"]
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule.keys()
            assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name), name
            assert isinstance(rule.get("for"), str) and _FOR.fullmatch(rule["for"]), f"{name}: for {rule.get('for')}"
            assert rule.get("labels", {}).get("severity") in ("critical", "warning", "info"), f"{name}: severity"
            annotations = rule.get("annotations", {})
            for key in ("summary", "description"):
                text = annotations.get(key)
                assert isinstance(text, str) and text.strip(), f"{name}: no {key}"
                assert text.count("{{") == text.count("}}"), f"{name}: unbalanced template in {key}"
            names.append(name)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"rule names used twice: {duplicates}"


def test_rules_refer_only_to_exported_metrics() -> None:
    found = {rule.get("alert") or rule["record"]: problems(rule["expr"], recorded()) for rule in rules()}
    assert not {name: p for name, p in found.items() if p}


def test_recording_rules_are_defined_before_use() -> None:
    """A rule group evaluates in order: a recording rule used in its own group must come earlier in it."""
    for group in rules_file()["groups"]:
        seen: set[str] = set()
        own = {rule["record"] for rule in group["rules"] if "record" in rule}
        for rule in group["rules"]:
            used = {s.metric for s in parse_selectors(rule["expr"])} & own
            assert used <= seen, f"{rule.get('alert') or rule['record']} uses {used - seen} before it is recorded"
            if "record" in rule:
                seen.add(rule["record"])


def test_seed_alerts_are_there() -> None:
    """The seed's alerts, each on the series it is about."""
    expected = {
        "ClipMindHighErrorRate": ("service:clipmind_grpc_server_errors:ratio_rate5m", "> 0.01"),
        "ClipMindQueueBacklog": ("clipmind_worker_queue_depth", "> 1000"),
        "ClipMindDBPoolExhausted": ("clipmind_db_pool_acquire_timeouts_total", "> 0"),
        "ClipMindUploadFailures": ("clipmind_grpc_server_requests_total", "> 0.01"),
        "ClipMindHighLatencyP95": ("service:clipmind_grpc_server_request_duration_seconds:p95_5m", "> 1"),
        "ClipMindSlowVideoProcessing": ("clipmind_worker_attempt_duration_seconds_bucket", 'le="1800.0"'),
        "ClipMindDiskAlmostFull": ("node_filesystem_avail_bytes", "> 0.80"),
    }
    alerts = {rule["alert"]: rule["expr"] for rule in rules() if "alert" in rule}
    for name, (series, text) in expected.items():
        assert name in alerts, f"missing alert {name}"
        assert series in {s.metric for s in parse_selectors(alerts[name])}, f"{name} does not read {series}"
        assert text in " ".join(alerts[name].split()), f"{name}: expected {text!r} in {alerts[name]}"
    # the slow-processing alert needs a bucket boundary at 30 min in the attempt histogram
    assert "1800.0" in buckets()["clipmind_worker_attempt_duration_seconds_bucket"]


# -- the dashboard ------------------------------------------------------------------------------------------


def test_dashboard_structure() -> None:
    board = dashboard()
    assert board["title"] == "ClipMind" and board["uid"] and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels():
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        targets = panel["targets"]
        assert targets and all(t.get("expr") for t in targets), f"{panel['title']}: no query"
        refs = [t["refId"] for t in targets]
        assert len(refs) == len(set(refs)), f"{panel['title']}: refIds repeat"
        for target in targets:
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], panel["title"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${datasource}", variable["name"]


def test_dashboard_refers_only_to_exported_metrics() -> None:
    found = {where: problems(expr) for where, expr in dashboard_exprs()}
    assert not {where: p for where, p in found.items() if p}
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match, f"variable {variable['name']}: {query}"
        assert not problems(match[1]), problems(match[1])
        series = exported()[parse_selectors(match[1])[0].metric or ""]
        assert match[2] in (series.labels or frozenset()) | TARGET_LABELS, f"{variable['name']}: no {match[2]}"


def test_dashboard_shows_every_clipmind_metric() -> None:
    """Each family of services/common/metrics.py is on some panel."""
    shown = {exported()[s.metric].family for _, expr in dashboard_exprs() for s in parse_selectors(expr)
             if s.metric in exported()}
    families = {series.family for series in exported().values() if series.family.startswith("clipmind_")}
    assert families and not families - shown, f"not on the dashboard: {sorted(families - shown)}"
    assert {"process_cpu_seconds", "process_resident_memory_bytes"} <= shown


# -- the checker itself can fail ----------------------------------------------------------------------------


@pytest.mark.parametrize(("expr", "reported"), [
    ("sum(rate(clipmind_made_up_total[5m]))", "clipmind_made_up_total: not exported"),
    ("rate(clipmind_worker_queue_depth{queue=\"x\"}[5m]) + clipmind_grpc_server_requests[1m]",
     "clipmind_grpc_server_requests: not exported"),  # a counter without _total
    ("histogram_quantile(0.9, clipmind_grpc_server_request_duration_seconds)", "not exported"),  # no _bucket
    ("sum(rate(clipmind_grpc_server_requests_total{status=\"OK\"}[5m]))", "no label 'status'"),
    ("clipmind_grpc_server_requests_total{code=\"ERROR\"}", "'ERROR' is not one of"),
    ("clipmind_grpc_server_requests_total{method=~\"UploadVideo|UploadVideos\"}", "['UploadVideos'] not among"),
    ("clipmind_worker_attempt_duration_seconds_bucket{le=\"1801.0\"}", "'1801.0' is not one of"),
    ("histogram_quantil(0.9, rate(clipmind_worker_stage_duration_seconds_bucket[5m]))", "unknown function"),
    ("sum(rate(clipmind_worker_attempts_total[5m])", "unbalanced parentheses"),
    ("clipmind_worker_jobs{state=\"RUNNING\"", "unbalanced braces"),
    ("rate(clipmind_worker_attempts_total[5 minutes])", "bad range"),
    ("rate(clipmind_worker_attempts_total[5m]) offset 5 minutes", "minutes: not exported"),
    ("clipmind_worker_jobs $ 2", "unexpected '$ 2'"),
    ("service:clipmind_grpc_server_errors:ratio_rate5m > 0.01", "not exported"),  # not recorded here
    ("disk_used_ratio > 0.8", "disk_used_ratio: not exported"),
    ("sum by (service (clipmind_grpc_server_requests_total)", "must list label names"),
])
def test_checker_reports_mistakes(expr: str, reported: str) -> None:
    found = problems(expr)
    assert any(reported in p for p in found), found


def test_checker_accepts_what_is_exported() -> None:
    assert problems('sum by (service, le) (rate(clipmind_grpc_server_request_duration_seconds_bucket'
                    '{service=~"clipmind\\\\..+", le="+Inf"}[$__rate_interval] offset 5m))') == []
    assert problems("1 - node_filesystem_avail_bytes / node_filesystem_size_bytes > 0.8") == []  # node_exporter
    assert problems("a:b:rate5m > 1", recorded=frozenset({"a:b:rate5m"})) == []
    assert problems('python_info + on (instance) group_left (version) process_start_time_seconds') == []
    assert [s.metric for s in parse_selectors('{__name__="clipmind_worker_jobs", state!="QUEUED"}')] == [
        "clipmind_worker_jobs"]
    assert problems('clipmind_triton_circuit_state{state="half_open"} == bool 1') == []
