-- tokenvend schema, SQLite (embedded, one replica). Timestamps are Unix microseconds (UTC)
-- so comparisons in SQL are numeric. Secrets are ciphertexts bound to the row ids.

CREATE TABLE data_keys (
    id            BLOB PRIMARY KEY,
    master_key_id TEXT NOT NULL,
    wrapped       BLOB NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE TABLE tenants (
    id           BLOB PRIMARY KEY,
    slug         TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    created_at   INTEGER NOT NULL
);

CREATE TABLE connections (
    id                 BLOB PRIMARY KEY,
    tenant_id          BLOB NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    provider           TEXT NOT NULL,
    version            INTEGER NOT NULL,
    settings           TEXT NOT NULL,
    client_secret      BLOB,
    api_key            BLOB,
    secret_fingerprint TEXT NOT NULL DEFAULT '',
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    UNIQUE (tenant_id, provider)
);

CREATE TABLE tokens (
    connection_id      BLOB NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    subject            TEXT NOT NULL,
    connection_version INTEGER NOT NULL,
    access_token       BLOB NOT NULL,
    token_sha256       BLOB NOT NULL,
    scopes             TEXT NOT NULL,
    expires_at         INTEGER NOT NULL,
    fetched_at         INTEGER NOT NULL,
    PRIMARY KEY (connection_id, subject)
);
