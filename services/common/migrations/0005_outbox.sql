-- A transactional outbox (services/common/outbox.py): facts committed here that another service must act
-- on (a search to log in analytics, a job to submit) wait in this table until the relay delivered them.
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

