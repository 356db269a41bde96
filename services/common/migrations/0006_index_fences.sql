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
