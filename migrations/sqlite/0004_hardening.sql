-- Hardening (see the PostgreSQL migration): refresh attempts get their own deadline (Unix
-- microseconds), grants a version bumped by every re-authorization.
ALTER TABLE refresh_leases ADD COLUMN attempt_until INTEGER;
ALTER TABLE grants ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
CREATE INDEX refresh_leases_holder ON refresh_leases (lease_holder) WHERE lease_holder IS NOT NULL;
