-- The promotion service's own tables, in schema `promotion`. The idempotency
-- records live in the store's schema (`idempotency`), the audit trail in
-- `audit`; both are migrated by their crates.

CREATE SEQUENCE promotion.estimate_number;
CREATE SEQUENCE promotion.work_order_number;

CREATE TABLE promotion.estimates (
    id              text        PRIMARY KEY DEFAULT 'E-' || nextval('promotion.estimate_number'),
    customer_id     text        NOT NULL CHECK (length(customer_id) BETWEEN 1 AND 200),
    current_version integer     NOT NULL CHECK (current_version >= 1),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per snapshot version. Only a FINALIZED snapshot can be promoted; a
-- revision supersedes a DRAFT, a FINALIZED snapshot stays promotable.
CREATE TABLE promotion.estimate_snapshots (
    estimate_id  text        NOT NULL REFERENCES promotion.estimates (id),
    version      integer     NOT NULL CHECK (version >= 1),
    status       text        NOT NULL CHECK (status IN ('DRAFT', 'FINALIZED', 'SUPERSEDED')),
    lines        jsonb       NOT NULL,
    total_cents  bigint      NOT NULL CHECK (total_cents >= 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    finalized_at timestamptz,
    PRIMARY KEY (estimate_id, version)
);

CREATE TABLE promotion.work_orders (
    id               text        PRIMARY KEY DEFAULT 'WO-' || nextval('promotion.work_order_number'),
    estimate_id      text        NOT NULL,
    snapshot_version integer     NOT NULL,
    customer_id      text        NOT NULL,
    lines            jsonb       NOT NULL,
    total_cents      bigint      NOT NULL,
    status           text        NOT NULL DEFAULT 'OPEN',
    created_at       timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (estimate_id, snapshot_version)
        REFERENCES promotion.estimate_snapshots (estimate_id, version),
    -- The last line of defence: one work order per snapshot, whatever happens above.
    CONSTRAINT work_orders_one_per_snapshot UNIQUE (estimate_id, snapshot_version)
);

-- The promotion record: the authoritative link between a snapshot and its
-- work order. Its status, attempts and lease are the idempotency record's
-- (key_hash names it); this row carries the business link. `workorder_id`
-- has no foreign key on purpose: a work order deleted behind the service's
-- back must leave a dangling link that the service detects (CORRUPTED).
CREATE TABLE promotion.promotions (
    id               uuid        PRIMARY KEY,
    estimate_id      text        NOT NULL,
    snapshot_version integer     NOT NULL,
    key_hash         text        NOT NULL UNIQUE CHECK (length(key_hash) = 64),
    workorder_id     text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (estimate_id, snapshot_version)
        REFERENCES promotion.estimate_snapshots (estimate_id, version),
    CONSTRAINT promotions_one_per_snapshot UNIQUE (estimate_id, snapshot_version)
);

CREATE INDEX promotions_workorder ON promotion.promotions (workorder_id);
