-- Refold on PostgreSQL, migration 2: read models under leases.
--
-- One runner per projection version across all hosts: it holds the lease
-- named after the version. Every takeover bumps the fencing token, and a
-- commit carries the token it was made under: a runner that lost its lease
-- (paused, partitioned, its host presumed dead) can never commit again, even
-- if it wakes up still believing it holds it.

CREATE TABLE refold_leases (
    name text PRIMARY KEY,
    holder text NOT NULL,
    -- The fencing token: 1 for the first holder, +1 on every takeover.
    token bigint NOT NULL,
    -- The database's clock, so hosts' clocks do not matter.
    expires_at timestamptz NOT NULL
);

-- A read model's documents and checkpoint, per projection version.
CREATE TABLE refold_read_models (
    name text PRIMARY KEY,
    -- The last log position folded in (0: none yet).
    checkpoint bigint NOT NULL,
    -- The token of the lease the last commit was made under.
    token bigint NOT NULL
);

CREATE TABLE refold_documents (
    name text NOT NULL REFERENCES refold_read_models (name) ON DELETE CASCADE,
    key text NOT NULL,
    doc text NOT NULL,
    PRIMARY KEY (name, key)
);
