-- Security (issue 10): callers, their API keys and permissions, and the audit log.
-- Keys are stored as the SHA-256 of the whole key; the key id is its public part, so a key
-- presented by a caller is found by primary key, never by scanning.
CREATE TABLE principals (
    id                   uuid PRIMARY KEY,
    name                 text NOT NULL UNIQUE,
    role                 text NOT NULL,
    description          text NOT NULL,
    certificate_identity text UNIQUE,
    created_at           timestamptz NOT NULL
);

CREATE TABLE api_keys (
    key_id       text PRIMARY KEY,
    principal_id uuid NOT NULL REFERENCES principals (id) ON DELETE CASCADE,
    key_sha256   bytea NOT NULL,
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz,
    last_used_at timestamptz
);
CREATE INDEX api_keys_principal ON api_keys (principal_id, key_id);

-- By tenant row id: deleting a tenant takes its permissions with it, so a tenant re-created
-- under the same slug is not reachable by the old callers.
CREATE TABLE permissions (
    principal_id uuid NOT NULL REFERENCES principals (id) ON DELETE CASCADE,
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    provider     text NOT NULL,
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (principal_id, tenant_id, provider)
);
CREATE INDEX permissions_tenant ON permissions (tenant_id);

-- Names, not row ids: an audit entry outlives what it names.
CREATE TABLE audit_events (
    id        uuid PRIMARY KEY,
    time      timestamptz NOT NULL,
    principal text NOT NULL,
    action    text NOT NULL,
    tenant    text NOT NULL,
    provider  text NOT NULL,
    subject   text NOT NULL,
    outcome   text NOT NULL,
    peer      text NOT NULL
);
CREATE INDEX audit_events_tenant ON audit_events (tenant, id);
CREATE INDEX audit_events_principal ON audit_events (principal, id);
CREATE INDEX audit_events_time ON audit_events (time);
