-- Refresh coordination across replicas (DESIGN.md "Refresh coordination").
-- One row per token key: who may call the provider now (a fenced lease with a generation),
-- whether a refresh-token request was sent under some generation and never finished, and
-- the last definitive provider error (a brief negative cache shared by every replica).
CREATE TABLE refresh_leases (
    connection_id       uuid NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    subject             text NOT NULL,
    generation          bigint NOT NULL,
    lease_holder        text,
    lease_until         timestamptz,
    refresh_attempt_gen bigint,
    last_error          text,
    error_version       bigint,
    error_until         timestamptz,
    PRIMARY KEY (connection_id, subject)
);
