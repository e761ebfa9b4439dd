-- Topic versions (see domain/topic_versions.py and docs/OPERATIONS.md "Re-partitioning with topic
-- versions"). The active version lives here, not in configuration, so the one active relay (it holds
-- the relay advisory lock) switches between two outbox passes, and every worker follows at run time.
CREATE TABLE topic_versions (
    family       TEXT        NOT NULL,  -- the topic name without its ".vN" suffix
    version      INTEGER     NOT NULL CHECK (version >= 1),
    topic        TEXT        NOT NULL UNIQUE,
    partitions   INTEGER     NOT NULL CHECK (partitions >= 1),
    state        TEXT        NOT NULL CHECK (state IN ('PENDING', 'ACTIVE', 'DRAINING', 'DRAINED', 'RETIRED')),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    activated_at TIMESTAMPTZ,
    switched_at  TIMESTAMPTZ,  -- when the relay stopped writing it (and wrote its switch markers)
    drained_at   TIMESTAMPTZ,
    retired_at   TIMESTAMPTZ,
    PRIMARY KEY (family, version)
);
-- At most one version is written, and at most one switch is asked for, per family.
CREATE UNIQUE INDEX topic_versions_one_active ON topic_versions (family) WHERE state = 'ACTIVE';
CREATE UNIQUE INDEX topic_versions_one_pending ON topic_versions (family) WHERE state = 'PENDING';

-- One row per partition of a DRAINING version whose switch marker the worker group has committed past.
CREATE TABLE topic_version_drains (
    family        TEXT        NOT NULL,
    version       INTEGER     NOT NULL,
    partition     INTEGER     NOT NULL,
    marker_offset BIGINT      NOT NULL,
    drained_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (family, version, partition),
    FOREIGN KEY (family, version) REFERENCES topic_versions (family, version) ON DELETE CASCADE
);
