-- Ebb's shared store. Every grant commit is one transaction over these tables;
-- `ebb_head`'s one row, locked FOR UPDATE by each writer, orders the audit chain.

-- One row per grant: the record exactly as tagged (JSON bytes), its tag, and the
-- columns queries need. `due_at` is when some host next has work on it: its
-- logical due, or a lease (`lease_host` holds it, `lease_due` is the logical due).
CREATE TABLE ebb_grants (
    id            text    PRIMARY KEY,
    version       bigint  NOT NULL,
    state         text    NOT NULL,
    connector     text    NOT NULL,
    subject       text    NOT NULL,
    requested_by  text    NOT NULL,
    escalated     boolean NOT NULL,
    due_at        bigint,
    lease_host    text,
    lease_due     bigint,
    record        bytea   NOT NULL,
    tag           bytea   NOT NULL
);
CREATE INDEX ebb_grants_due ON ebb_grants (due_at, id) WHERE due_at IS NOT NULL;
CREATE INDEX ebb_grants_state ON ebb_grants (state, id);
CREATE INDEX ebb_grants_requester ON ebb_grants (requested_by, id);
CREATE INDEX ebb_grants_lease ON ebb_grants (lease_host) WHERE lease_host IS NOT NULL;

-- Sealed credentials (already encrypted by the host key), deleted when shredded.
CREATE TABLE ebb_credentials (
    grant_id  text  PRIMARY KEY REFERENCES ebb_grants (id),
    sealed    bytea NOT NULL
);

-- The audit chain: events as JSON bytes, in seq order, without gaps.
CREATE TABLE ebb_audit (
    seq       bigint PRIMARY KEY,
    grant_id  text,
    event     bytea  NOT NULL
);
CREATE INDEX ebb_audit_grant ON ebb_audit (grant_id, seq) WHERE grant_id IS NOT NULL;

-- The keyed head of the chain (one row).
CREATE TABLE ebb_head (
    id       integer PRIMARY KEY CHECK (id = 1),
    seq      bigint  NOT NULL,
    hash     text    NOT NULL,
    records  bigint  NOT NULL,
    mac      text    NOT NULL
);

-- The store's own facts: the key check, the last verified head.
CREATE TABLE ebb_meta (
    key    text  PRIMARY KEY,
    value  bytea NOT NULL
);

-- Host state that is no grant (anomaly flags, instances being drained). Keys are
-- bytes: some hold a NUL between their parts, which text cannot.
CREATE TABLE ebb_state (
    key    bytea PRIMARY KEY,
    value  bytea NOT NULL
);

-- The hosts serving this database, as each last said.
CREATE TABLE ebb_hosts (
    id            text   PRIMARY KEY,
    version       text   NOT NULL,
    started_at    bigint NOT NULL,
    heartbeat_at  bigint NOT NULL
);
