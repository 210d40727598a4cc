-- Operations (issue 11): each (connection, subject)'s refresh history, for GetConnection's
-- refresh state — written in the same transaction that ends a refresh lease.
ALTER TABLE refresh_leases ADD COLUMN refreshed_at INTEGER;
ALTER TABLE refresh_leases ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE refresh_leases ADD COLUMN failure_class TEXT;
ALTER TABLE refresh_leases ADD COLUMN failed_at INTEGER;
