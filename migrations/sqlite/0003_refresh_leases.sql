-- Refresh coordination (see the PostgreSQL migration). SQLite serves one process, but runs
-- the same protocol so there is one code path. Timestamps are Unix microseconds.
CREATE TABLE refresh_leases (
    connection_id       BLOB NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    subject             TEXT NOT NULL,
    generation          INTEGER NOT NULL,
    lease_holder        TEXT,
    lease_until         INTEGER,
    refresh_attempt_gen INTEGER,
    last_error          TEXT,
    error_version       INTEGER,
    error_until         INTEGER,
    PRIMARY KEY (connection_id, subject)
);
