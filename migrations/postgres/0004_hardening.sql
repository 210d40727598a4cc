-- Hardening (issue 8).
-- A refresh attempt has its own deadline in database time: a new lease holder may resolve an
-- unfinished attempt (try the stored refresh token once) only after it, when the request it
-- recorded can no longer be in flight. Leases themselves are short and renewed by heartbeats.
ALTER TABLE refresh_leases ADD COLUMN attempt_until timestamptz;
-- Grants carry a version that every re-authorization bumps; a refresh writes its result only
-- under the version it read, so it never revives a revoked grant or overwrites a new chain.
ALTER TABLE grants ADD COLUMN version bigint NOT NULL DEFAULT 1;
-- Shutdown releases this replica's leases by holder.
CREATE INDEX refresh_leases_holder ON refresh_leases (lease_holder) WHERE lease_holder IS NOT NULL;
