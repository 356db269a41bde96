-- How urgently each job is wanted (issue 13): its queue entries are ordered by it (services/common/queue.py).
ALTER TABLE jobs ADD COLUMN priority text NOT NULL DEFAULT 'STANDARD'
    CHECK (priority IN ('HIGH', 'STANDARD', 'BATCH'));
CREATE INDEX jobs_waiting_priority_idx ON jobs (priority, state) WHERE state IN ('QUEUED', 'RUNNING');
