-- The search log, owned by analytics: one row per search as the search service answered it, and the ranked
-- results of the page it returned. Rows arrive over AnalyticsInternalService.LogSearches, idempotent by id.
CREATE TABLE searches (
    id           uuid PRIMARY KEY,
    query        text NOT NULL,
    image_query  boolean NOT NULL DEFAULT false,
    result_count integer NOT NULL,
    latency_ms   double precision NOT NULL,
    page_offset  integer NOT NULL DEFAULT 0,
    search_time  timestamptz NOT NULL,
    log_time     timestamptz NOT NULL DEFAULT now(),
    caller       text NOT NULL DEFAULT ''
);
CREATE INDEX searches_search_time_idx ON searches (search_time);

CREATE TABLE search_results (
    search_id uuid NOT NULL REFERENCES searches (id) ON DELETE CASCADE,
    rank      integer NOT NULL,
    clip_id   uuid NOT NULL,
    video_id  uuid NOT NULL,
    score     double precision NOT NULL,
    PRIMARY KEY (search_id, rank)
);
CREATE INDEX search_results_clip_idx ON search_results (clip_id);
