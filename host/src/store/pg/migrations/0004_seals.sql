-- Refold on PostgreSQL, migration 4: seals (signed checkpoints) over the hash
-- chain, as sled keeps them: each covers the positions after the previous
-- one, with the Merkle root of their chain values. `record` is sled's
-- encoding (`format::encode_seal`).

CREATE TABLE refold_seals (
    last_position bigint PRIMARY KEY,
    first_position bigint NOT NULL UNIQUE,
    record bytea NOT NULL
);

-- How far the seals reach. Its row lock serializes sealers across hosts.
CREATE TABLE refold_seal_head (
    id smallint PRIMARY KEY CHECK (id = 1),
    sealed bigint NOT NULL
);
INSERT INTO refold_seal_head VALUES (1, 0);
