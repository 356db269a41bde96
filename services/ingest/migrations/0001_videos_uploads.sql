-- Ingest owns videos (what was uploaded, and what processing reported about it) and resumable uploads.
-- This is the shape these tables had in the schema all services shared before the split (its migrations
-- 0001-0006): a database from before the split has them moved here by `clipmind` provisioning
-- (services/common/db_provision.py, adopt_shared_schema), which records this migration as applied.
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
    update_time       timestamptz NOT NULL DEFAULT now(),
    transcript_model  text NOT NULL DEFAULT '',
    visual_model      text NOT NULL DEFAULT ''
);
CREATE INDEX videos_create_time_idx ON videos (create_time DESC, id DESC);

-- An upload's writes and its completion take the upload's lock in turn: a row lease (token + expiry), so a
-- request holds no database connection while it writes bytes or validates a video.
CREATE TABLE uploads (
    id               uuid PRIMARY KEY,
    filename         text NOT NULL DEFAULT '',
    content_type     text NOT NULL DEFAULT '',
    size_bytes       bigint NOT NULL DEFAULT 0,
    committed_size   bigint NOT NULL DEFAULT 0,
    state            text NOT NULL CHECK (state IN ('ACTIVE', 'COMPLETED', 'CANCELLED')),
    video_id         uuid REFERENCES videos (id) ON DELETE SET NULL,
    create_time      timestamptz NOT NULL DEFAULT now(),
    expire_time      timestamptz NOT NULL,
    lock_token       uuid,
    lock_expire_time timestamptz
);

-- Facts other services must act on (submit a job, publish video facts, delete a video's jobs and index),
-- committed with the change that makes them (services/common/outbox.py).
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
