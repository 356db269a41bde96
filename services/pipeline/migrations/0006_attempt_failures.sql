-- Why each failed attempt of a job failed (issue 13: a dead letter shows its attempt history to operators). One row
-- per failed attempt (a retry or the last one, a lost worker's too), written with the run's end; a RetryJob's fresh
-- set of attempts starts a new history.
CREATE TABLE attempt_failures (
    job_id       uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    failure_code text NOT NULL DEFAULT '',
    message      text NOT NULL,
    worker       text NOT NULL DEFAULT '',
    create_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, attempt)
);
CREATE INDEX dead_letters_create_time_idx ON dead_letters (create_time);
