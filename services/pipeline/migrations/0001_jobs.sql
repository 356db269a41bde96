-- The pipeline owns processing jobs, their ordered events and dead letters. This is the shape these tables had
-- in the schema all services shared before the split (its migrations 0001-0006), without the foreign keys to
-- videos: videos belong to ingest, which deletes a video's jobs over PipelineInternalService.DeleteVideoJobs.
-- A database from before the split has them moved here by provisioning (db_provision.adopt_shared_schema).
CREATE TABLE jobs (
    id                uuid PRIMARY KEY,
    video_id          uuid NOT NULL,
    state             text NOT NULL CHECK (state IN ('QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED')),
    stage             text NOT NULL DEFAULT 'STAGE_UNSPECIFIED',
    progress          real NOT NULL DEFAULT 0,
    attempt           integer NOT NULL DEFAULT 0,
    max_attempts      integer NOT NULL DEFAULT 3,
    failure_reason    text NOT NULL DEFAULT '',
    create_time       timestamptz NOT NULL DEFAULT now(),
    start_time        timestamptz,
    end_time          timestamptz,
    update_time       timestamptz NOT NULL DEFAULT now(),
    -- The arq job id it was last enqueued under (`<job id>:<generation>`), written in the transaction that
    -- creates or re-queues the job, so the sweep can enqueue again a job whose queue entry was lost.
    queue_key         text NOT NULL DEFAULT '',
    -- The run that owns the job now: its fencing token, its lease (pushed forward by its heartbeat), who.
    run_id            uuid,
    lease_expire_time timestamptz,
    worker            text NOT NULL DEFAULT '',
    -- The stable reason of a failure (WORKER_LOST, UNREADABLE_MEDIA, ...), beside the message.
    failure_code      text NOT NULL DEFAULT '',
    -- Grows with every claim and cancel: the fence that a run's (or a cancel's) writes to other services carry.
    fence             bigint NOT NULL DEFAULT 0
);
CREATE INDEX jobs_video_idx ON jobs (video_id);
CREATE INDEX jobs_create_time_idx ON jobs (create_time DESC, id DESC);
CREATE INDEX jobs_pending_idx ON jobs (update_time) WHERE state IN ('QUEUED', 'RUNNING');
CREATE INDEX jobs_lease_idx ON jobs (lease_expire_time) WHERE state = 'RUNNING';

CREATE TABLE job_events (
    job_id      uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    sequence    bigint NOT NULL,
    stage       text NOT NULL,
    stage_state text NOT NULL,
    progress    real NOT NULL DEFAULT 0,
    message     text NOT NULL DEFAULT '',
    job_state   text NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, sequence)
);

CREATE TABLE dead_letters (
    id             uuid PRIMARY KEY,
    job_id         uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    video_id       uuid NOT NULL,
    failure_reason text NOT NULL,
    attempts       integer NOT NULL,
    create_time    timestamptz NOT NULL DEFAULT now(),
    failure_code   text NOT NULL DEFAULT ''
);

-- Facts other services must act on (a video processed, failed or cancelled: ingest's record of it),
-- committed with the job change that makes them (services/common/outbox.py).
CREATE TABLE outbox (
    id                bigserial PRIMARY KEY,
    topic             text NOT NULL,
    payload           bytea NOT NULL,
    create_time       timestamptz NOT NULL DEFAULT now(),
    attempts          integer NOT NULL DEFAULT 0,
    next_attempt_time timestamptz NOT NULL DEFAULT now(),
    last_error        text NOT NULL DEFAULT ''
);
CREATE INDEX outbox_due_idx ON outbox (next_attempt_time, id);
