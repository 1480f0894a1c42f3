-- Refold on PostgreSQL, migration 1: the event log.
--
-- Events keep exactly the bytes the sled backend keeps (docs/store-format.md):
-- `chain` is the hash-chain value at the event and `body` the canonical record
-- after it, so proofs, `refold verify` and a migration from sled see the same
-- bytes on either backend. The other columns index them.

-- The log's head: one row, bumped by the last statement of every append's
-- transaction. Its row lock orders commits, so positions are gapless and in
-- commit order: a reader never sees position N+1 without N.
CREATE TABLE refold_head (
    id smallint PRIMARY KEY CHECK (id = 1),
    position bigint NOT NULL,
    -- The chain value at `position` (32 zero bytes before the first event).
    chain bytea NOT NULL,
    -- The newest `recorded_at_ms`: an append may not go below it.
    recorded_at_ms bigint NOT NULL
);
INSERT INTO refold_head VALUES (1, 0, '\x0000000000000000000000000000000000000000000000000000000000000000', 0);

CREATE TABLE refold_streams (
    stream_type text NOT NULL,
    stream_id text NOT NULL,
    version bigint NOT NULL CHECK (version > 0),
    PRIMARY KEY (stream_type, stream_id)
);

CREATE TABLE refold_events (
    position bigint PRIMARY KEY,
    stream_type text NOT NULL,
    stream_id text NOT NULL,
    version bigint NOT NULL,
    event_type text NOT NULL,
    chain bytea NOT NULL,
    body bytea NOT NULL,
    -- The backstop of optimistic concurrency: one event per stream version.
    UNIQUE (stream_type, stream_id, version)
);

CREATE TABLE refold_commands (
    command_id text PRIMARY KEY,
    stream_type text NOT NULL,
    stream_id text NOT NULL,
    stream_version bigint NOT NULL,
    first_position bigint NOT NULL,
    last_position bigint NOT NULL,
    -- The request's fingerprint (32 bytes), when the caller gave one.
    fingerprint bytea
);

-- The command journal (what-if replays it): every decided command. An
-- accepted command's entry commits with its events (refold_append), with the
-- positions they got; a refused one is a plain insert. Derived, diagnostic
-- data: retention deletes it.
CREATE TABLE refold_journal (
    received_at_ms bigint NOT NULL,
    command_id text COLLATE "C" NOT NULL,
    aggregate_type text NOT NULL,
    first_position bigint,
    last_position bigint,
    -- sled's encoding of the entry; an accepted one's positions are the columns.
    entry bytea NOT NULL,
    PRIMARY KEY (received_at_ms, command_id)
);

-- One group commit of one host, in one statement (so one round trip).
--
-- The host decided every append against the stream versions it believes
-- (`s_assumed`, 0 for a new stream) and encoded each event's body with its
-- version and `p_recorded_at`. This function checks those beliefs under row
-- locks and commits all or nothing:
--   RF001  a stream is not at the version the host assumed (another host wrote)
--   RF002  a command id is already recorded
--   RF003  p_recorded_at is below the head's (the message holds the head's)
--   RF004  the head or a stream row does not match the events: the database
--          was altered by hand; nothing is written until that is repaired
-- The host then re-reads what it needs and decides again. Streams are locked
-- in one order and the head last, so two hosts' batches never deadlock.
CREATE FUNCTION refold_append(
    s_types text[], s_ids text[], s_assumed bigint[], s_new bigint[],
    e_types text[], e_ids text[], e_versions bigint[], e_event_types text[], e_bodies bytea[],
    c_ids text[], c_types text[], c_sids text[], c_versions bigint[],
    c_first int[], c_last int[], c_fingerprints bytea[],
    j_received bigint[], j_ids text[], j_types text[], j_first int[], j_last int[], j_entries bytea[],
    p_recorded_at bigint
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n int := coalesce(array_length(e_bodies, 1), 0);
    r record;
    touched int;
    base bigint;
    prev bytea;
    head_recorded bigint;
    chains bytea[] := '{}';
    i int;
BEGIN
    FOR r IN
        SELECT t.ty, t.id, t.assumed, t.nv
        FROM unnest(s_types, s_ids, s_assumed, s_new) AS t(ty, id, assumed, nv)
        ORDER BY t.ty COLLATE "C", t.id COLLATE "C"
    LOOP
        IF r.assumed > 0 AND NOT EXISTS (
            SELECT 1 FROM refold_events
            WHERE stream_type = r.ty AND stream_id = r.id AND version = r.assumed
        ) THEN
            RAISE EXCEPTION USING ERRCODE = 'RF004',
                MESSAGE = format('stream %s/%s is at version %s, but it has no event there', r.ty, r.id, r.assumed);
        END IF;
        IF r.assumed = 0 THEN
            INSERT INTO refold_streams VALUES (r.ty, r.id, r.nv) ON CONFLICT DO NOTHING;
        ELSE
            UPDATE refold_streams SET version = r.nv
            WHERE stream_type = r.ty AND stream_id = r.id AND version = r.assumed;
        END IF;
        GET DIAGNOSTICS touched = ROW_COUNT;
        IF touched = 0 THEN
            RAISE EXCEPTION USING ERRCODE = 'RF001',
                MESSAGE = format('stream %s/%s moved past version %s', r.ty, r.id, r.assumed);
        END IF;
    END LOOP;

    -- The head, last: its lock is held only for the rest of this statement.
    SELECT position, chain, recorded_at_ms INTO base, prev, head_recorded
    FROM refold_head WHERE id = 1 FOR UPDATE;
    -- The head must be the last event, with its chain value: a head moved by
    -- hand would leave a gap or break the chain.
    IF base > 0 AND NOT EXISTS (
        SELECT 1 FROM refold_events WHERE position = base AND chain = prev
    ) THEN
        RAISE EXCEPTION USING ERRCODE = 'RF004',
            MESSAGE = format('the head (position %s) is not the last event with its chain value', base);
    END IF;
    IF p_recorded_at < head_recorded THEN
        RAISE EXCEPTION USING ERRCODE = 'RF003', MESSAGE = head_recorded::text;
    END IF;
    FOR i IN 1..n LOOP
        prev := sha256(prev || int8send(base + i) || e_bodies[i]);
        chains := chains || prev;
    END LOOP;
    INSERT INTO refold_events (position, stream_type, stream_id, version, event_type, chain, body)
    SELECT base + t.ord, t.ty, t.id, t.v, t.et, t.ch, t.b
    FROM unnest(e_types, e_ids, e_versions, e_event_types, chains, e_bodies)
        WITH ORDINALITY AS t(ty, id, v, et, ch, b, ord);
    INSERT INTO refold_commands
    SELECT t.cid, t.ty, t.id, t.v, base + t.f, base + t.l, t.fp
    FROM unnest(c_ids, c_types, c_sids, c_versions, c_first, c_last, c_fingerprints)
        AS t(cid, ty, id, v, f, l, fp)
    ORDER BY t.cid COLLATE "C"
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS touched = ROW_COUNT;
    IF touched <> coalesce(array_length(c_ids, 1), 0) THEN
        RAISE EXCEPTION USING ERRCODE = 'RF002', MESSAGE = 'a command id is already recorded';
    END IF;
    INSERT INTO refold_journal
    SELECT t.r, t.id, t.ty, base + t.f, base + t.l, t.e
    FROM unnest(j_received, j_ids, j_types, j_first, j_last, j_entries) AS t(r, id, ty, f, l, e)
    ON CONFLICT (received_at_ms, command_id) DO UPDATE
        SET first_position = EXCLUDED.first_position, last_position = EXCLUDED.last_position,
            entry = EXCLUDED.entry;
    UPDATE refold_head SET position = base + n, chain = prev, recorded_at_ms = p_recorded_at
    WHERE id = 1;
    PERFORM pg_notify('refold_log', (base + n)::text);
    RETURN base;
END
$$;
