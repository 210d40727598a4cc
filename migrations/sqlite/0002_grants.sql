-- End-user grants (authorization code + PKCE) and the flows waiting for their callback.

-- A started authorization, keyed by the SHA-256 of its state: the database never holds a
-- usable state value. Taken (deleted) exactly once by the callback.
CREATE TABLE pending_authorizations (
    state_sha256  BLOB PRIMARY KEY,
    id            BLOB NOT NULL UNIQUE,
    connection_id BLOB NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    subject       TEXT NOT NULL,
    code_verifier BLOB NOT NULL,
    redirect_uri  TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    expires_at    INTEGER NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE TABLE grants (
    id            BLOB PRIMARY KEY,
    connection_id BLOB NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    subject       TEXT NOT NULL,
    refresh_token BLOB,
    scopes        TEXT NOT NULL,
    status        TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    UNIQUE (connection_id, subject)
);
