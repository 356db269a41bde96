-- Users deleted (or whose role changed) while their access tokens may still be alive: every service refuses
-- tokens issued up to revoke_time. The mark is published to Redis (services.common.revocations); this row is
-- what identity publishes again should Redis lose it, until the last such token has expired.
CREATE TABLE revoked_users (
    user_id     uuid PRIMARY KEY,
    revoke_time timestamptz NOT NULL,
    expire_time timestamptz NOT NULL
);
CREATE INDEX revoked_users_expire_idx ON revoked_users (expire_time);
