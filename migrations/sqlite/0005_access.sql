-- Security (issue 10): callers, their API keys and permissions, and the audit log.
-- Keys are stored as the SHA-256 of the whole key; the key id is its public part, so a key
-- presented by a caller is found by primary key, never by scanning.
CREATE TABLE principals (
    id                   BLOB PRIMARY KEY,
    name                 TEXT NOT NULL UNIQUE,
    role                 TEXT NOT NULL,
    description          TEXT NOT NULL,
    certificate_identity TEXT UNIQUE,
    created_at           INTEGER NOT NULL
);

CREATE TABLE api_keys (
    key_id       TEXT PRIMARY KEY,
    principal_id BLOB NOT NULL REFERENCES principals (id) ON DELETE CASCADE,
    key_sha256   BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    last_used_at INTEGER
);
CREATE INDEX api_keys_principal ON api_keys (principal_id, key_id);

-- By tenant row id: deleting a tenant takes its permissions with it, so a tenant re-created
-- under the same slug is not reachable by the old callers.
CREATE TABLE permissions (
    principal_id BLOB NOT NULL REFERENCES principals (id) ON DELETE CASCADE,
    tenant_id    BLOB NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    provider     TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (principal_id, tenant_id, provider)
);
CREATE INDEX permissions_tenant ON permissions (tenant_id);

-- Names, not row ids: an audit entry outlives what it names.
CREATE TABLE audit_events (
    id        BLOB PRIMARY KEY,
    time      INTEGER NOT NULL,
    principal TEXT NOT NULL,
    action    TEXT NOT NULL,
    tenant    TEXT NOT NULL,
    provider  TEXT NOT NULL,
    subject   TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    peer      TEXT NOT NULL
);
CREATE INDEX audit_events_tenant ON audit_events (tenant, id);
CREATE INDEX audit_events_principal ON audit_events (principal, id);
CREATE INDEX audit_events_time ON audit_events (time);
