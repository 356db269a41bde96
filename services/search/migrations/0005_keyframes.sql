-- Several keyframes per scene (issue 11): a scene has one keyframe per few seconds, each standing for its
-- stretch of the scene ([start_s, end_s)) and each with its CLIP vector; a clip's visual score is its best
-- frame's, and that frame is the search result's thumbnail and match time (retrieval.PgRetrieval.visual).
-- A visual vector now belongs to a keyframe (visual_vectors.id = keyframes.id), not to a clip.
--
-- The vector also names its clip (visual_vectors.clip_id), so that a search's HNSW scan joins the clip it
-- filters on directly and keyframes only for the few best rows: through keyframes, a selective upload-date
-- filter over 100,000 vectors took 28.8 ms p50, joining the clip directly 16.7 ms (one vector per clip before:
-- 16.0 ms; a clip-duration filter 80.8 / 68.7 / 64.6 ms; 30 queries each, the three interleaved in one run).
-- Vectors from before have none (NULL: their id is their clip's) rather than an UPDATE of every vector, which
-- would write each one again into the HNSW graph.
CREATE TABLE keyframes (
    id            uuid PRIMARY KEY,
    video_id      uuid NOT NULL,
    owner_id      uuid NOT NULL,
    clip_id       uuid NOT NULL REFERENCES clips (id) ON DELETE CASCADE,
    idx           integer NOT NULL,
    time_s        double precision NOT NULL,
    start_s       double precision NOT NULL,
    end_s         double precision NOT NULL,
    thumbnail_key text NOT NULL DEFAULT '',
    UNIQUE (clip_id, idx),
    CHECK (end_s > start_s)
);
CREATE INDEX keyframes_video_idx ON keyframes (video_id);

-- Each clip indexed before had one vector, of its middle frame: it becomes one keyframe that stands for the
-- whole scene, under the clip's own id (which its vector already has). Every clip gets one, vector or not.
INSERT INTO keyframes (id, video_id, owner_id, clip_id, idx, time_s, start_s, end_s, thumbnail_key)
SELECT id, video_id, owner_id, id, 0, (start_s + end_s) / 2, start_s, end_s, thumbnail_key FROM clips;

ALTER TABLE visual_vectors ADD COLUMN clip_id uuid;

-- The vector's row now hangs off its keyframe (deleting a clip deletes its keyframes and so their vectors).
DO $$
DECLARE fk text;
BEGIN
    FOR fk IN SELECT conname FROM pg_constraint
               WHERE conrelid = 'visual_vectors'::regclass AND contype = 'f' LOOP
        EXECUTE format('ALTER TABLE visual_vectors DROP CONSTRAINT %I', fk);
    END LOOP;
END $$;
ALTER TABLE visual_vectors ADD CONSTRAINT visual_vectors_keyframe_fkey
    FOREIGN KEY (id) REFERENCES keyframes (id) ON DELETE CASCADE;
