-- tokenvend schema, PostgreSQL. Secrets are AES-256-GCM ciphertexts (see core::crypto),
-- bound to the immutable row ids below; slugs can be re-used after a delete, ids cannot.

CREATE TABLE data_keys (
    id            uuid PRIMARY KEY,
    master_key_id text NOT NULL,
    wrapped       bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tenants (
    id           uuid PRIMARY KEY,
    slug         text NOT NULL UNIQUE,
    display_name text NOT NULL,
    created_at   timestamptz NOT NULL
);

CREATE TABLE connections (
    id                 uuid PRIMARY KEY,
    tenant_id          uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    provider           text NOT NULL,
    version            bigint NOT NULL,
    settings           text NOT NULL,
    client_secret      bytea,
    api_key            bytea,
    secret_fingerprint text NOT NULL DEFAULT '',
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    UNIQUE (tenant_id, provider)
);

-- One row per (connection, subject); subject '' is the client-credentials token.
CREATE TABLE tokens (
    connection_id      uuid NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    subject            text NOT NULL,
    connection_version bigint NOT NULL,
    access_token       bytea NOT NULL,
    token_sha256       bytea NOT NULL,
    scopes             text NOT NULL,
    expires_at         timestamptz NOT NULL,
    fetched_at         timestamptz NOT NULL,
    PRIMARY KEY (connection_id, subject)
);
