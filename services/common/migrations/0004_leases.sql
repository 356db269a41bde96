-- Leases instead of held connections and queue-side claims.
--
-- An upload's writes and its completion take the upload's lock in turn. The lock is a row lease (token +
-- expiry) rather than a session advisory lock, so a request holds no database connection while it writes
-- bytes or validates a video; a crashed process's lease simply expires.
ALTER TABLE uploads ADD COLUMN lock_token uuid;
ALTER TABLE uploads ADD COLUMN lock_expire_time timestamptz;

-- A job run holds a lease: `run_id` is the fencing token of the run that owns the job now (every write of a
-- run checks it), `lease_expire_time` is pushed forward by the run's heartbeat, `worker` says who runs it.
-- A RUNNING job whose lease expired lost its worker: the sweep takes it over as a new attempt.
ALTER TABLE jobs ADD COLUMN run_id uuid;
ALTER TABLE jobs ADD COLUMN lease_expire_time timestamptz;
ALTER TABLE jobs ADD COLUMN worker text NOT NULL DEFAULT '';
CREATE INDEX jobs_lease_idx ON jobs (lease_expire_time) WHERE state = 'RUNNING';
-- The reason of a failure, stable and machine-readable (WORKER_LOST, UNREADABLE_MEDIA, ...), beside the
-- short human message in failure_reason.
ALTER TABLE jobs ADD COLUMN failure_code text NOT NULL DEFAULT '';
ALTER TABLE dead_letters ADD COLUMN failure_code text NOT NULL DEFAULT '';
