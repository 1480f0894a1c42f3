-- Refold on PostgreSQL, migration 3: the module registry, module bytes and
-- snapshots, shared by every host. Records keep the sled backend's encodings
-- (postcard, `format::encode_v1`) in `record` columns; the other columns key them.

CREATE TABLE refold_modules (
    name text NOT NULL,
    version text NOT NULL,
    digest bytea NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (name, version)
);

-- Component bytes by sha256: every host compiles what it loads from here.
CREATE TABLE refold_module_bytes (
    digest bytea PRIMARY KEY,
    bytes bytea NOT NULL
);

CREATE TABLE refold_active (
    name text PRIMARY KEY,
    version text NOT NULL
);

CREATE TABLE refold_activations (
    name text NOT NULL,
    seq integer NOT NULL,
    version text NOT NULL,
    at_ms bigint NOT NULL,
    PRIMARY KEY (name, seq)
);

CREATE TABLE refold_routing (
    name text PRIMARY KEY,
    record bytea NOT NULL
);

CREATE TABLE refold_checks (
    name text NOT NULL,
    version text NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE refold_process_checkpoints (
    name text PRIMARY KEY,
    position bigint NOT NULL
);

CREATE TABLE refold_snapshots (
    stream_type text NOT NULL,
    stream_id text NOT NULL,
    module_digest bytea NOT NULL,
    version bigint NOT NULL,
    state bytea NOT NULL,
    PRIMARY KEY (stream_type, stream_id, module_digest)
);

-- Bumped by every change of what runs (activations, routing, uploads,
-- deletions): hosts poll it, and `refold_catalog` notifications wake them.
CREATE TABLE refold_catalog_version (
    id smallint PRIMARY KEY CHECK (id = 1),
    version bigint NOT NULL
);
INSERT INTO refold_catalog_version VALUES (1, 0);
