-- Identity owns users, their refresh tokens and API keys, and the access tokens revoked before they expire.
CREATE TABLE users (
    id            uuid PRIMARY KEY,
    email         text NOT NULL,
    display_name  text NOT NULL DEFAULT '',
    role          text NOT NULL CHECK (role IN ('user', 'admin')),
    password_hash text NOT NULL,
    create_time   timestamptz NOT NULL DEFAULT now(),
    update_time   timestamptz NOT NULL DEFAULT now()
);
-- Emails are compared case-insensitively.
CREATE UNIQUE INDEX users_email_idx ON users (lower(email));

-- Refresh tokens are opaque and rotate on every use: each use marks the token used and issues the next one
-- of the same family. A used token presented again means it was stolen: the whole family is revoked.
-- Only a SHA-256 of each token is kept (they are 256-bit random values: a slow hash adds nothing).
CREATE TABLE refresh_tokens (
    id           uuid PRIMARY KEY,
    family_id    uuid NOT NULL,
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash   bytea NOT NULL UNIQUE,
    create_time  timestamptz NOT NULL DEFAULT now(),
    expire_time  timestamptz NOT NULL,
    used_time    timestamptz,
    revoked_time timestamptz
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_expire_idx ON refresh_tokens (expire_time);

-- API keys act as their user; only a SHA-256 of the key is kept, and its first characters to recognize it.
CREATE TABLE api_keys (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    display_name  text NOT NULL DEFAULT '',
    key_prefix    text NOT NULL,
    key_hash      bytea NOT NULL UNIQUE,
    create_time   timestamptz NOT NULL DEFAULT now(),
    last_use_time timestamptz,
    revoked_time  timestamptz
);
CREATE INDEX api_keys_user_idx ON api_keys (user_id, create_time DESC, id DESC);

-- Access tokens revoked by a logout before they expire (kept until then).
CREATE TABLE revoked_access_tokens (
    jti         text PRIMARY KEY,
    expire_time timestamptz NOT NULL
);
CREATE INDEX revoked_access_tokens_expire_idx ON revoked_access_tokens (expire_time);
