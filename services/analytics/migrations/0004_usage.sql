-- Usage (issue 12, GetUsage): what each user consumed, as facts the services where it happened commit to their
-- outboxes and deliver to AnalyticsInternalService.RecordUsage — ingest: a video stored, a video deleted, a video
-- ready (its length); the pipeline: each processing attempt's worker time; compilations when they render. Delivery
-- is at least once: the producer's event id makes recording idempotent.
CREATE TABLE usage_events (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('VIDEO_UPLOADED', 'VIDEO_DELETED', 'VIDEO_PROCESSED', 'PROCESSING_RUN',
                                              'COMPILATION_RENDERED')),
    event_time  timestamptz NOT NULL,
    video_id    uuid,
    bytes       bigint NOT NULL DEFAULT 0 CHECK (bytes >= 0),
    seconds     double precision NOT NULL DEFAULT 0 CHECK (seconds >= 0),
    caller      text NOT NULL DEFAULT '',
    record_time timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_events_user_time_idx ON usage_events (user_id, event_time);
CREATE INDEX usage_events_time_idx ON usage_events (event_time);

-- Per day (UTC), per user, and for everyone under the all-ones UUID (no user has it), kept current in the
-- transaction that records the events; GetUsage reads a window's whole days here and its partial first and last
-- days from the raw events.
CREATE TABLE usage_days (
    user_id             uuid NOT NULL,
    day                 date NOT NULL,
    uploads             bigint NOT NULL DEFAULT 0,
    uploaded_bytes      bigint NOT NULL DEFAULT 0,
    deletions           bigint NOT NULL DEFAULT 0,
    deleted_bytes       bigint NOT NULL DEFAULT 0,
    processed           bigint NOT NULL DEFAULT 0,
    processed_seconds   double precision NOT NULL DEFAULT 0,
    processing_seconds  double precision NOT NULL DEFAULT 0,
    compilations        bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, day)
);
