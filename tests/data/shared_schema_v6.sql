-- The database schema as it stood before the services were split (commit c037013): every table in public, made
-- by the shared migrations services/common/migrations/0001-0006 (concatenated below, unchanged) and recorded in
-- public.schema_migrations the way services.common.db.migrate recorded them then. Fixture of
-- tests/integration/test_schema_adoption.py (db_provision.adopt_shared_schema).

-- ---- 0001_initial.sql ----
-- ClipMind initial schema: videos, uploads, jobs and their events, clips (scenes), transcript segments,
-- transcript vectors (pgvector HNSW), search log.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE videos (
    id                uuid PRIMARY KEY,
    title             text NOT NULL DEFAULT '',
    description       text NOT NULL DEFAULT '',
    filename          text NOT NULL DEFAULT '',
    content_type      text NOT NULL DEFAULT '',
    size_bytes        bigint NOT NULL DEFAULT 0,
    blob_key          text NOT NULL,
    state             text NOT NULL CHECK (state IN ('PENDING', 'PROCESSING', 'READY', 'FAILED')),
    duration_s        double precision NOT NULL DEFAULT 0,
    width             integer NOT NULL DEFAULT 0,
    height            integer NOT NULL DEFAULT 0,
    frame_rate        double precision NOT NULL DEFAULT 0,
    video_codec       text NOT NULL DEFAULT '',
    audio_codec       text NOT NULL DEFAULT '',
    has_audio         boolean NOT NULL DEFAULT false,
    thumbnail_key     text NOT NULL DEFAULT '',
    scene_count       integer NOT NULL DEFAULT 0,
    transcript_source text NOT NULL DEFAULT 'NONE',
    sidecar_key       text NOT NULL DEFAULT '',
    sidecar_format    text NOT NULL DEFAULT '',
    sidecar_language  text NOT NULL DEFAULT '',
    failure_reason    text NOT NULL DEFAULT '',
    create_time       timestamptz NOT NULL DEFAULT now(),
    update_time       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX videos_create_time_idx ON videos (create_time DESC, id DESC);

CREATE TABLE uploads (
    id             uuid PRIMARY KEY,
    filename       text NOT NULL DEFAULT '',
    content_type   text NOT NULL DEFAULT '',
    size_bytes     bigint NOT NULL DEFAULT 0,
    committed_size bigint NOT NULL DEFAULT 0,
    state          text NOT NULL CHECK (state IN ('ACTIVE', 'COMPLETED', 'CANCELLED')),
    video_id       uuid REFERENCES videos (id) ON DELETE SET NULL,
    create_time    timestamptz NOT NULL DEFAULT now(),
    expire_time    timestamptz NOT NULL
);

CREATE TABLE jobs (
    id             uuid PRIMARY KEY,
    video_id       uuid NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    state          text NOT NULL CHECK (state IN ('QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED')),
    stage          text NOT NULL DEFAULT 'STAGE_UNSPECIFIED',
    progress       real NOT NULL DEFAULT 0,
    attempt        integer NOT NULL DEFAULT 0,
    max_attempts   integer NOT NULL DEFAULT 3,
    failure_reason text NOT NULL DEFAULT '',
    create_time    timestamptz NOT NULL DEFAULT now(),
    start_time     timestamptz,
    end_time       timestamptz,
    update_time    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_video_idx ON jobs (video_id);
CREATE INDEX jobs_create_time_idx ON jobs (create_time DESC, id DESC);

CREATE TABLE job_events (
    job_id      uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    sequence    bigint NOT NULL,
    stage       text NOT NULL,
    stage_state text NOT NULL,
    progress    real NOT NULL DEFAULT 0,
    message     text NOT NULL DEFAULT '',
    job_state   text NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, sequence)
);

CREATE TABLE dead_letters (
    id             uuid PRIMARY KEY,
    job_id         uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    video_id       uuid NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    failure_reason text NOT NULL,
    attempts       integer NOT NULL,
    create_time    timestamptz NOT NULL DEFAULT now()
);

-- A clip is one detected scene of a video. Ids are derived from (video, index) so reprocessing keeps them.
CREATE TABLE clips (
    id            uuid PRIMARY KEY,
    video_id      uuid NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    idx           integer NOT NULL,
    start_s       double precision NOT NULL,
    end_s         double precision NOT NULL,
    thumbnail_key text NOT NULL DEFAULT '',
    UNIQUE (video_id, idx),
    CHECK (end_s > start_s)
);

CREATE TABLE transcript_segments (
    id       uuid PRIMARY KEY,
    video_id uuid NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    clip_id  uuid NOT NULL REFERENCES clips (id) ON DELETE CASCADE,
    idx      integer NOT NULL,
    start_s  double precision NOT NULL,
    end_s    double precision NOT NULL,
    text     text NOT NULL,
    source   text NOT NULL,
    UNIQUE (video_id, idx)
);
CREATE INDEX transcript_segments_clip_idx ON transcript_segments (clip_id);

-- Transcript vectors (Sentence-BERT, 384-d, normalized). `model` records model and weights version.
CREATE TABLE transcript_vectors (
    id        uuid PRIMARY KEY REFERENCES transcript_segments (id) ON DELETE CASCADE,
    video_id  uuid NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    model     text NOT NULL,
    embedding vector(384) NOT NULL
);
CREATE INDEX transcript_vectors_hnsw ON transcript_vectors USING hnsw (embedding vector_cosine_ops);
CREATE INDEX transcript_vectors_video_idx ON transcript_vectors (video_id);

CREATE TABLE searches (
    id           uuid PRIMARY KEY,
    query        text NOT NULL,
    result_count integer NOT NULL,
    latency_ms   double precision NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX searches_create_time_idx ON searches (create_time);

-- ---- 0002_visual_vectors.sql ----
-- Visual vectors: one CLIP image embedding (512-d, normalized) per clip keyframe. `model` records the
-- model and weights version; searches only compare vectors of the model in use.
CREATE TABLE visual_vectors (
    id        uuid PRIMARY KEY REFERENCES clips (id) ON DELETE CASCADE,
    video_id  uuid NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    model     text NOT NULL,
    embedding vector(512) NOT NULL
);
CREATE INDEX visual_vectors_hnsw ON visual_vectors USING hnsw (embedding vector_cosine_ops);
CREATE INDEX visual_vectors_video_idx ON visual_vectors (video_id);
CREATE INDEX transcript_vectors_model_idx ON transcript_vectors (model);
CREATE INDEX visual_vectors_model_idx ON visual_vectors (model);

-- What produced a video's vectors, so a changed model is detected (reindex needed) instead of mixed.
ALTER TABLE videos ADD COLUMN transcript_model text NOT NULL DEFAULT '';
ALTER TABLE videos ADD COLUMN visual_model text NOT NULL DEFAULT '';

-- ---- 0003_job_queue_key.sql ----
-- The arq job id a job was last enqueued under (``<job id>:<generation>``). Written in the same transaction
-- that creates or re-queues the job, so the worker's sweep can ask the queue whether that entry still exists
-- and enqueue again any job whose entry was lost (Redis down at enqueue time, or restarted without its data).
ALTER TABLE jobs ADD COLUMN queue_key text NOT NULL DEFAULT '';
UPDATE jobs SET queue_key = id::text || ':0' WHERE queue_key = '';
CREATE INDEX jobs_pending_idx ON jobs (update_time) WHERE state IN ('QUEUED', 'RUNNING');

-- ---- 0004_leases.sql ----
-- Leases instead of held connections and queue-side claims.
--
-- An upload's writes and its completion take the upload's lock in turn. The lock is a row lease (token +
-- expiry) rather than a session advisory lock, so a request holds no database connection while it writes
-- bytes or validates a video; a crashed process's lease simply expires.
ALTER TABLE uploads ADD COLUMN lock_token uuid;
ALTER TABLE uploads ADD COLUMN lock_expire_time timestamptz;

-- A job run holds a lease: `run_id` is the fencing token of the run that owns the job now (every write of a
-- run checks it), `lease_expire_time` is pushed forward by the run's heartbeat, `worker` says who runs it.
-- A RUNNING job whose lease expired lost its worker: the sweep takes it over as a new attempt.
ALTER TABLE jobs ADD COLUMN run_id uuid;
ALTER TABLE jobs ADD COLUMN lease_expire_time timestamptz;
ALTER TABLE jobs ADD COLUMN worker text NOT NULL DEFAULT '';
CREATE INDEX jobs_lease_idx ON jobs (lease_expire_time) WHERE state = 'RUNNING';
-- The reason of a failure, stable and machine-readable (WORKER_LOST, UNREADABLE_MEDIA, ...), beside the
-- short human message in failure_reason.
ALTER TABLE jobs ADD COLUMN failure_code text NOT NULL DEFAULT '';
ALTER TABLE dead_letters ADD COLUMN failure_code text NOT NULL DEFAULT '';

-- ---- 0005_outbox.sql ----
-- A transactional outbox (services/common/outbox.py): facts committed here that another service must act
-- on (a search to log in analytics, a job to submit) wait in this table until the relay delivered them.
CREATE TABLE outbox (
    id                bigserial PRIMARY KEY,
    topic             text NOT NULL,
    payload           bytea NOT NULL,
    create_time       timestamptz NOT NULL DEFAULT now(),
    attempts          integer NOT NULL DEFAULT 0,
    next_attempt_time timestamptz NOT NULL DEFAULT now(),
    last_error        text NOT NULL DEFAULT ''
);
CREATE INDEX outbox_due_idx ON outbox (next_attempt_time, id);


-- ---- 0006_index_fences.sql ----
-- Writes of a job run to other services carry a fence that only grows: every claim of the job takes the next
-- one, so a later run's writes always carry a larger fence than an earlier run's.
ALTER TABLE jobs ADD COLUMN fence bigint NOT NULL DEFAULT 0;

-- Search: the fence of the run whose index (clips, segments, vectors) a video holds now.
-- SearchInternalService.ReplaceVideoIndex refuses an older fence, so a superseded run never overwrites a
-- newer run's index, however late its call arrives.
CREATE TABLE video_index_fences (
    video_id    uuid PRIMARY KEY REFERENCES videos (id) ON DELETE CASCADE,
    fence       bigint NOT NULL,
    update_time timestamptz NOT NULL DEFAULT now()
);

-- ---- schema_migrations, as services.common.db.migrate kept it ----
CREATE TABLE schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (version, name) VALUES
    (1, 'initial'), (2, 'visual_vectors'), (3, 'job_queue_key'), (4, 'leases'), (5, 'outbox'), (6, 'index_fences');
