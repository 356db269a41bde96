-- The arq job id a job was last enqueued under (``<job id>:<generation>``). Written in the same transaction
-- that creates or re-queues the job, so the worker's sweep can ask the queue whether that entry still exists
-- and enqueue again any job whose entry was lost (Redis down at enqueue time, or restarted without its data).
ALTER TABLE jobs ADD COLUMN queue_key text NOT NULL DEFAULT '';
UPDATE jobs SET queue_key = id::text || ':0' WHERE queue_key = '';
CREATE INDEX jobs_pending_idx ON jobs (update_time) WHERE state IN ('QUEUED', 'RUNNING');
