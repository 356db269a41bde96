-- The search service's copy of the video facts that ingest publishes (a read model): what filters and results
-- need (title, playback blob, state, duration, upload time), so a search reads one schema in one query and
-- never calls ingest. Ingest sends every change (SearchInternalService.UpsertVideoFacts, through its outbox)
-- with a revision that only grows; an older or repeated one changes nothing.
--
-- The same row holds the index fence (the fence of the run whose index the video holds now) and a tombstone:
-- a deleted video keeps `deleted`, so a late facts update or a late index write of a run that was still going
-- cannot bring it back.
CREATE TABLE videos (
    id          uuid PRIMARY KEY,
    revision    bigint NOT NULL DEFAULT 0,
    title       text NOT NULL DEFAULT '',
    blob_key    text NOT NULL DEFAULT '',
    state       text NOT NULL DEFAULT 'PENDING',
    duration_s  double precision NOT NULL DEFAULT 0,
    create_time timestamptz,
    index_fence bigint NOT NULL DEFAULT 0,
    deleted     boolean NOT NULL DEFAULT false,
    update_time timestamptz NOT NULL DEFAULT now()
);

INSERT INTO videos (id, index_fence) SELECT video_id, fence FROM video_index_fences;
DROP TABLE video_index_fences;
