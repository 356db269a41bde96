-- Every job belongs to the user who uploaded its video (SubmitVideoJob's `owner`); a user sees and changes only
-- their own jobs, an administrator (and the system) every job. Jobs from before owners get the nil UUID: no user
-- has it, so only administrators see them. The default exists only to fill those rows: it is dropped at once, so
-- a job made without an owner fails here instead of silently becoming an administrators-only job.
ALTER TABLE jobs ADD COLUMN owner_id uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000';
ALTER TABLE jobs ALTER COLUMN owner_id DROP DEFAULT;

-- A user's jobs newest first (ListJobs, keyset pages by (create_time, id)), filtered by owner in the query.
CREATE INDEX jobs_owner_create_time_idx ON jobs (owner_id, create_time DESC, id DESC);

-- Events and dead letters have no owner of their own: they are reached through their job (a join on its primary
-- key), since they live and die with it (ON DELETE CASCADE) and a job's owner never changes, so one column says
-- who owns all three and no copy can disagree. This index serves that join for dead letters (and the deletes of
-- a job's dead letters on retry); events are keyed by (job_id, sequence) already.
CREATE INDEX dead_letters_job_idx ON dead_letters (job_id);
