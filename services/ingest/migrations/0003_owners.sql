-- Every upload and video belongs to a user (issue 9): a user sees and changes only their own, administrators
-- and the system everyone's. Stores filter by owner inside their queries (`owner_id = $n`, or every owner for
-- an administrator), so a user's list reads only their rows, newest first, from one index.
-- Rows from before ownership get the nil UUID: no user has it (it is the system's identity), so only
-- administrators see them. The default is dropped once they have it: every new row names its owner, and
-- one that forgets fails at once rather than becoming invisible to its uploader.
ALTER TABLE videos ADD COLUMN owner_id uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000';
ALTER TABLE videos ALTER COLUMN owner_id DROP DEFAULT;
ALTER TABLE uploads ADD COLUMN owner_id uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000';
ALTER TABLE uploads ALTER COLUMN owner_id DROP DEFAULT;

CREATE INDEX videos_owner_create_time_idx ON videos (owner_id, create_time DESC, id DESC);
