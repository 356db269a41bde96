-- Compilations (issue 13): spans of a user's videos joined into one file by a render job. The compilation's state
-- is its job's (queued, running, succeeded, failed or cancelled), read through the join; the row keeps what was
-- asked for and, once rendered, what came out.
CREATE TABLE compilations (
    id            uuid PRIMARY KEY,
    owner_id      uuid NOT NULL,
    pieces        jsonb NOT NULL,             -- [{"video": uuid, "start_s": float, "end_s": float}, ...]
    options       jsonb NOT NULL DEFAULT '{}',
    output_key    text NOT NULL DEFAULT '',   -- blob key of the rendered file once rendered
    duration_s    double precision NOT NULL DEFAULT 0,
    size_bytes    bigint NOT NULL DEFAULT 0,
    render_method text NOT NULL DEFAULT '',
    create_time   timestamptz NOT NULL DEFAULT now(),
    update_time   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX compilations_owner_time_idx ON compilations (owner_id, create_time DESC, id DESC);
CREATE INDEX compilations_time_idx ON compilations (create_time DESC, id DESC);

-- A job processes a video or renders a compilation: exactly one of the two. A compilation's job goes with it.
ALTER TABLE jobs ALTER COLUMN video_id DROP NOT NULL;
ALTER TABLE jobs ADD COLUMN compilation_id uuid REFERENCES compilations (id) ON DELETE CASCADE;
ALTER TABLE jobs ADD CONSTRAINT jobs_one_subject CHECK ((video_id IS NULL) <> (compilation_id IS NULL));
CREATE INDEX jobs_compilation_idx ON jobs (compilation_id) WHERE compilation_id IS NOT NULL;
ALTER TABLE dead_letters ALTER COLUMN video_id DROP NOT NULL;
