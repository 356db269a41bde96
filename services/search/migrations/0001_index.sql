-- The search service owns the index: clips (scenes), transcript segments and their vectors (pgvector HNSW).
-- This is the shape these tables had in the schema all services shared before the split (its migrations
-- 0001-0006), without the foreign keys to videos: videos belong to ingest, which deletes a video's index over
-- SearchInternalService.DeleteVideoIndex. A database from before the split has them moved here by
-- provisioning (db_provision.adopt_shared_schema). pgvector itself lives in `public` (provisioning makes it).
CREATE EXTENSION IF NOT EXISTS vector SCHEMA public;

-- A clip is one detected scene of a video. Ids are derived from (video, index) so reprocessing keeps them.
CREATE TABLE clips (
    id            uuid PRIMARY KEY,
    video_id      uuid NOT NULL,
    idx           integer NOT NULL,
    start_s       double precision NOT NULL,
    end_s         double precision NOT NULL,
    thumbnail_key text NOT NULL DEFAULT '',
    UNIQUE (video_id, idx),
    CHECK (end_s > start_s)
);

CREATE TABLE transcript_segments (
    id       uuid PRIMARY KEY,
    video_id uuid NOT NULL,
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
    video_id  uuid NOT NULL,
    model     text NOT NULL,
    embedding vector(384) NOT NULL
);
CREATE INDEX transcript_vectors_hnsw ON transcript_vectors USING hnsw (embedding vector_cosine_ops);
CREATE INDEX transcript_vectors_video_idx ON transcript_vectors (video_id);
CREATE INDEX transcript_vectors_model_idx ON transcript_vectors (model);

-- Visual vectors: one CLIP image embedding (512-d, normalized) per clip keyframe.
CREATE TABLE visual_vectors (
    id        uuid PRIMARY KEY REFERENCES clips (id) ON DELETE CASCADE,
    video_id  uuid NOT NULL,
    model     text NOT NULL,
    embedding vector(512) NOT NULL
);
CREATE INDEX visual_vectors_hnsw ON visual_vectors USING hnsw (embedding vector_cosine_ops);
CREATE INDEX visual_vectors_video_idx ON visual_vectors (video_id);
CREATE INDEX visual_vectors_model_idx ON visual_vectors (model);

-- The fence of the run whose index a video holds now: an older run's late write is refused.
CREATE TABLE video_index_fences (
    video_id    uuid PRIMARY KEY,
    fence       bigint NOT NULL,
    update_time timestamptz NOT NULL DEFAULT now()
);

-- Facts other services must act on (searches to log in analytics), committed before they are delivered.
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
