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
