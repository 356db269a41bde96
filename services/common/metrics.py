"""The process's Prometheus metrics (``prometheus_client``) and their HTTP exposition.

Every process of the mesh serves ``GET /metrics`` on its own port (``CLIPMIND_METRICS_PORT``; ``clipmind up``
gives each one, 0 turns it off). The metrics are module-level objects of the default registry, so any module may
count without being handed anything; this module imports no gRPC, database or Redis client, so domain modules
(the pipeline's reporter and runner) may import it under the import-linter contracts. The gRPC server interceptor
that fills the ``clipmind_grpc_server_*`` metrics lives in ``services.common.grpc_metrics``.

Label values stay bounded: gRPC methods are those registered on the server, codes are status-code names, stages
and job states are the pipeline's fixed names, models the four inference models, pools the services' schemas.

Two kinds of value are read when scraped rather than pushed (``_LiveCollector``): the state of each Triton
circuit breaker (an open breaker turns half-open by the clock alone, with no call to push it) and the use of each
database pool (asyncpg keeps the counts; copying them on every acquire would be busier than reading them). Both
reads are plain attribute reads, safe from the exposition's thread and never waiting on the event loop.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# -- gRPC servers (filled by services.common.grpc_metrics.MetricsInterceptor) ------------------------------

#: Latency buckets of RPCs (seconds): fast reads around a millisecond up to uploads of minutes.
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

GRPC_REQUESTS = Counter(
    "clipmind_grpc_server_requests_total", "RPCs finished by this server, by method and status code.",
    ["service", "method", "code"],
)
GRPC_LATENCY = Histogram(
    "clipmind_grpc_server_request_duration_seconds", "Time from an RPC's arrival to its status, by method.",
    ["service", "method"], buckets=RPC_BUCKETS,
)
GRPC_STREAMS = Gauge(
    "clipmind_grpc_server_streams_in_flight", "Streaming RPCs (client, server or both) open on this server now.",
    ["service", "method"],
)

# -- the worker ---------------------------------------------------------------------------------------------

#: Stage buckets (seconds): a probe takes well under a second, scenes of a long video many minutes.
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)

STAGE_DURATION = Histogram(
    "clipmind_worker_stage_duration_seconds", "How long each processing stage took (from its start to its "
    "completion, or to its skip), by stage and outcome (completed, skipped).",
    ["stage", "outcome"], buckets=STAGE_BUCKETS,
)
ATTEMPTS = Counter("clipmind_worker_attempts_total", "Attempts at jobs this worker claimed and ran, by how they "
                   "ended (succeeded, failed, retry, handed_back, stopped, deleted, interrupted).", ["outcome"])
ATTEMPT_DURATION = Histogram(
    "clipmind_worker_attempt_duration_seconds", "Time of one attempt at a job (a video's processing), from claim "
    "to end, by outcome.", ["outcome"], buckets=STAGE_BUCKETS,
)
DEAD_LETTERS = Counter("clipmind_worker_dead_letters_total", "Jobs that failed for good (a dead letter was "
                       "written), by failure code.", ["code"])
JOBS = Gauge("clipmind_worker_jobs", "Jobs in the job store by state (refreshed by the worker every few seconds).",
             ["state"])
OLDEST_RUN = Gauge("clipmind_worker_oldest_run_seconds", "Age of the oldest attempt running now, from its claim (0 "
                   "when none runs; refreshed by the worker every few seconds): a stuck video shows here before "
                   "its attempt ends.")
QUEUE_DEPTH = Gauge("clipmind_worker_queue_depth", "Entries waiting in a Redis work queue (queued and deferred; "
                    "refreshed by the worker every few seconds).", ["queue"])

# -- Triton client ------------------------------------------------------------------------------------------

INFERENCE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

TRITON_LATENCY = Histogram(
    "clipmind_triton_request_duration_seconds", "Time of one inference request to Triton (retries included), by "
    "model and outcome (ok, error).", ["model", "outcome"], buckets=INFERENCE_BUCKETS,
)

# -- search query cache -------------------------------------------------------------------------------------

CACHE_LOOKUPS = Counter(
    "clipmind_search_cache_lookups_total", "Query cache lookups by result: l1 (hit in this process), l2 (hit in "
    "Redis), miss. Hit ratio: sum(result!=\"miss\") / sum.", ["result"],
)

# -- database pools -----------------------------------------------------------------------------------------

POOL_ACQUIRE_TIMEOUTS = Counter(
    "clipmind_db_pool_acquire_timeouts_total", "Requests that found no free database connection in time (the pool "
    "was exhausted; answered UNAVAILABLE DATABASE_BUSY).", ["pool"],
)


class _Breaker(Protocol):
    @property
    def state(self) -> str: ...


class _Pool(Protocol):
    def get_size(self) -> int: ...
    def get_idle_size(self) -> int: ...
    def get_max_size(self) -> int: ...


_lock = threading.Lock()
# owner -> (label value, how to read the live object from its owner). The reader takes the owner as argument
# (it must not hold it), so an owner that is dropped leaves the map by itself.
_circuits: weakref.WeakKeyDictionary[Any, tuple[str, Callable[[Any], _Breaker]]] = weakref.WeakKeyDictionary()
_pools: weakref.WeakKeyDictionary[Any, tuple[str, Callable[[Any], _Pool]]] = weakref.WeakKeyDictionary()

BREAKER_STATES = ("closed", "open", "half_open")


def track_circuit(owner: Any, target: str, breaker: Callable[[Any], _Breaker]) -> None:
    """Show the circuit breaker ``breaker(owner)`` of ``owner`` (a client, held weakly) as
    ``clipmind_triton_circuit_state{target, state}``, read when scraped."""
    with _lock:
        _circuits[owner] = (target, breaker)


def track_pool(owner: Any, name: str, pool: Callable[[Any], _Pool]) -> None:
    """Show the connection pool ``pool(owner)`` of ``owner`` (held weakly) as ``clipmind_db_pool_*{pool=name}``."""
    with _lock:
        _pools[owner] = (name, pool)


class _LiveCollector(Collector):
    """Circuit states and pool use, read from the live objects at each scrape (see the module doc)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with _lock:
            circuits = [(owner, *entry) for owner, entry in list(_circuits.items())]
            pools = [(owner, *entry) for owner, entry in list(_pools.items())]
        state = GaugeMetricFamily("clipmind_triton_circuit_state", "1 for the state each Triton client's circuit "
                                  "breaker is in (closed: calls pass; open: calls fail fast; half_open: one probe).",
                                  labels=["target", "state"])
        for owner, target, read in circuits:
            try:
                now = read(owner).state
            except Exception:  # a client closing meanwhile: skip it this once
                continue
            for name in BREAKER_STATES:
                state.add_metric([target, name], 1.0 if name == now else 0.0)
        yield state
        size = GaugeMetricFamily("clipmind_db_pool_size", "Connections the database pool holds open.", labels=["pool"])
        in_use = GaugeMetricFamily("clipmind_db_pool_in_use", "Connections of the pool handed out now.",
                                   labels=["pool"])
        most = GaugeMetricFamily("clipmind_db_pool_max_size", "Most connections the pool opens.", labels=["pool"])
        for owner, name, read_pool in pools:
            try:
                pool = read_pool(owner)
                opened, idle, limit = pool.get_size(), pool.get_idle_size(), pool.get_max_size()
            except Exception:  # a pool closing meanwhile: skip it this once
                continue
            size.add_metric([name], opened)
            in_use.add_metric([name], max(0, opened - idle))
            most.add_metric([name], limit)
        yield from (size, in_use, most)

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []  # collected live only (describe() would otherwise call collect() at registration)


REGISTRY.register(_LiveCollector())


def start_metrics_server(port: int, host: str) -> Callable[[], None] | None:
    """Serve ``GET /metrics`` on ``host:port`` (None and nothing served when ``port`` is 0); returns how to stop.

    prometheus_client's own server: a daemon thread, so a scrape never waits for the event loop (a loop stuck
    on a slow call still shows its metrics) and the loop never serves HTTP."""
    if port <= 0:
        return None
    server, thread = start_http_server(port, addr=host)
    log.info("metrics on http://%s:%d/metrics", host, port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
