-- Ownership (issue 9): every clip, transcript segment and vector carries the user who owns its video, so a
-- search filters by owner inside its query (a user finds only their own; administrators everything). Rows
-- from before ownership get the nil UUID, the system's own id: no user owns them, so only administrators
-- (and the system) see them until their video is reindexed, which writes its real owner.
--
-- The default only fills existing rows (a metadata-only change in PostgreSQL 11+, no table rewrite) and is
-- dropped at once: every later write names its owner, and one that forgets fails instead of hiding rows.
ALTER TABLE videos ADD COLUMN owner_id uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000';
ALTER TABLE videos ALTER COLUMN owner_id DROP DEFAULT;
ALTER TABLE clips ADD COLUMN owner_id uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000';
ALTER TABLE clips ALTER COLUMN owner_id DROP DEFAULT;
ALTER TABLE transcript_segments ADD COLUMN owner_id uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000';
ALTER TABLE transcript_segments ALTER COLUMN owner_id DROP DEFAULT;
ALTER TABLE transcript_vectors ADD COLUMN owner_id uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000';
ALTER TABLE transcript_vectors ALTER COLUMN owner_id DROP DEFAULT;
ALTER TABLE visual_vectors ADD COLUMN owner_id uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000';
ALTER TABLE visual_vectors ALTER COLUMN owner_id DROP DEFAULT;

-- A user's rows without the HNSW index: pgvector 0.6 has no iterative index scans, so an HNSW scan filtered to
-- a small owner returns too few rows. A search counts the owner's vectors of the model through these indexes
-- (index-only) and, for a small owner, ranks exactly the rows they find (vectors.PgVectorIndex.query).
CREATE INDEX transcript_vectors_owner_model_idx ON transcript_vectors (owner_id, model);
CREATE INDEX visual_vectors_owner_model_idx ON visual_vectors (owner_id, model);
CREATE INDEX clips_owner_video_idx ON clips (owner_id, video_id);
CREATE INDEX transcript_segments_owner_video_idx ON transcript_segments (owner_id, video_id);
CREATE INDEX videos_owner_idx ON videos (owner_id);
