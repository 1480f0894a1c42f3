-- Refold on PostgreSQL, migration 2: read models under leases.
--
-- One runner per projection version across all hosts: it holds the lease
-- named after the version. Every takeover bumps the fencing token, and a
-- commit is made under the token it holds: a runner that lost its lease
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

-- A projection version's current generation (a rebuild moves to the next;
-- the scratch generation of a verify is never current).
CREATE TABLE refold_read_models (
    name text NOT NULL,
    version text NOT NULL,
    generation bigint NOT NULL,
    PRIMARY KEY (name, version)
);

-- One row per generation: its checkpoint (sled's encoding), the position in
-- it (for the compare-and-set), the schema versions seen, and the lease
-- token of the last commit.
CREATE TABLE refold_read_model_state (
    name text NOT NULL,
    version text NOT NULL,
    generation bigint NOT NULL,
    position bigint NOT NULL,
    checkpoint bytea NOT NULL,
    schema_versions bytea,
    token bigint NOT NULL,
    PRIMARY KEY (name, version, generation)
);

CREATE TABLE refold_documents (
    name text NOT NULL,
    version text NOT NULL,
    generation bigint NOT NULL,
    key text COLLATE "C" NOT NULL,
    doc text NOT NULL,
    PRIMARY KEY (name, version, generation, key)
);

CREATE TABLE refold_skips (
    name text NOT NULL,
    version text NOT NULL,
    generation bigint NOT NULL,
    position bigint NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (name, version, generation, position)
);
