-- End-user grants (authorization code + PKCE) and the flows waiting for their callback.

-- A started authorization, keyed by the SHA-256 of its state: the database never holds a
-- usable state value. Taken (deleted) exactly once by the callback.
CREATE TABLE pending_authorizations (
    state_sha256  bytea PRIMARY KEY,
    id            uuid NOT NULL UNIQUE,
    connection_id uuid NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    subject       text NOT NULL,
    code_verifier bytea NOT NULL,
    redirect_uri  text NOT NULL,
    scopes        text NOT NULL,
    expires_at    timestamptz NOT NULL,
    created_at    timestamptz NOT NULL
);

CREATE TABLE grants (
    id            uuid PRIMARY KEY,
    connection_id uuid NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    subject       text NOT NULL,
    refresh_token bytea,
    scopes        text NOT NULL,
    status        text NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    UNIQUE (connection_id, subject)
);
