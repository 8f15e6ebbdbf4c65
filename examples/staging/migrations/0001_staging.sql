-- The staging service's tables ({{schema}} is the configured schema).

-- An uploaded file's ingestion: one row per deduplication key, which is the
-- client's idempotency key (scoped by vendor and user) or, without one,
-- vendor + SHA-256 of the file + user. The UNIQUE constraint is the guard.
CREATE TABLE {{schema}}.ingestion_jobs (
    id             uuid        PRIMARY KEY,
    dedup_key      text        NOT NULL,
    keyed_by       text        NOT NULL CHECK (keyed_by IN ('content', 'client')),
    vendor_id      text        NOT NULL,
    uploaded_by    text        NOT NULL,
    file_hash      text        NOT NULL,
    file_size      bigint      NOT NULL,
    content_type   text        NOT NULL,
    file_name      text,
    status         text        NOT NULL,
    invoice_id     uuid        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ingestion_jobs_dedup_key_unique UNIQUE (dedup_key)
);

-- The invoice extracted from an upload; amounts are NUMERIC, never floats.
CREATE TABLE {{schema}}.invoices (
    id                  uuid        PRIMARY KEY,
    vendor_id           text        NOT NULL,
    status              text        NOT NULL,
    data                jsonb       NOT NULL,
    total_amount        numeric(18, 2),
    currency            text,
    validation_errors   jsonb       NOT NULL DEFAULT '[]',
    validation_warnings jsonb       NOT NULL DEFAULT '[]',
    quality_score       integer     NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);

-- A reused client key with another file: recorded, never executed.
CREATE TABLE {{schema}}.idempotency_conflicts (
    id                uuid        PRIMARY KEY,
    operation         text        NOT NULL,
    dedup_key         text        NOT NULL,
    existing_job_id   uuid        NOT NULL REFERENCES {{schema}}.ingestion_jobs (id),
    existing_hash     text        NOT NULL,
    offered_hash      text        NOT NULL,
    offered_by        text        NOT NULL,
    resolution        text        NOT NULL DEFAULT 'rejected',
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE {{schema}}.staging_batches (
    id            uuid        PRIMARY KEY,
    submitted_by  text        NOT NULL,
    total_items   integer     NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- An export staged for a destination: one per invoice, destination and format.
CREATE TABLE {{schema}}.staged_exports (
    id                  uuid        PRIMARY KEY,
    invoice_id          uuid        NOT NULL REFERENCES {{schema}}.invoices (id),
    status              text        NOT NULL CHECK (status IN ('PREPARED', 'UNDER_REVIEW',
                            'APPROVED', 'REJECTED', 'POSTED', 'FAILED', 'ROLLED_BACK')),
    export_format       text        NOT NULL,
    destination_system  text        NOT NULL,
    original_data       jsonb       NOT NULL,
    prepared_data       jsonb       NOT NULL,
    approved_data       jsonb,
    posted_data         jsonb,
    total_amount        numeric(18, 2),
    prepared_by         text        NOT NULL,
    reviewer            text,
    approved_by         text,
    rejected_by         text,
    posted_by           text,
    rolled_back_by      text,
    change_reason       text,
    rejection_reason    text,
    rollback_reason     text,
    field_changes       jsonb,
    validation_errors   jsonb       NOT NULL DEFAULT '[]',
    validation_warnings jsonb       NOT NULL DEFAULT '[]',
    quality_score       integer     NOT NULL,
    required_approvals  integer     NOT NULL DEFAULT 1,
    priority            integer     NOT NULL,
    compliance_flags    text[]      NOT NULL,
    external_reference  text,
    export_filename     text,
    destination_key     text,
    booking_id          text,
    reversal_id         text,
    error_code          text,
    error_message       text,
    retry_count         integer     NOT NULL DEFAULT 0,
    batch_id            uuid        REFERENCES {{schema}}.staging_batches (id),
    prepared_at         timestamptz NOT NULL DEFAULT now(),
    approved_at         timestamptz,
    posted_at           timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT staged_exports_invoice_destination_format_unique
        UNIQUE (invoice_id, destination_system, export_format)
);

CREATE INDEX staged_exports_batch ON {{schema}}.staged_exports (batch_id);

-- Every version of an export's data, with its field-level changes and reason.
CREATE TABLE {{schema}}.export_versions (
    export_id   uuid        NOT NULL REFERENCES {{schema}}.staged_exports (id),
    version     integer     NOT NULL,
    data        jsonb       NOT NULL,
    changes     jsonb       NOT NULL,
    reason      text,
    changed_by  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (export_id, version)
);

-- Approvals of an export; a level-1 approval of a two-level chain expires.
CREATE TABLE {{schema}}.approvals (
    export_id   uuid        NOT NULL REFERENCES {{schema}}.staged_exports (id),
    level       integer     NOT NULL,
    approver    text        NOT NULL,
    comments    text,
    status      text        NOT NULL CHECK (status IN ('APPROVED', 'EXPIRED')),
    decided_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (export_id, level, decided_at)
);
