-- The job creation service's own tables, in one schema ({{schema}} is the
-- configured schema, quoted). The audit trail lives in the audit sink's
-- schema and the stage records in the idempotency store's; both are
-- migrated by their crates.

-- A patient's assessment of one funnel. Completing it sets status,
-- completed_at and the correlation id once, in one statement.
CREATE TABLE {{schema}}.assessments (
    id             uuid        PRIMARY KEY,
    funnel         text        NOT NULL CHECK (funnel ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    patient_id     text        NOT NULL CHECK (length(patient_id) BETWEEN 1 AND 200),
    status         text        NOT NULL DEFAULT 'in_progress'
                               CHECK (status IN ('in_progress', 'completed')),
    -- Fixed by the first completion; every later completion reuses it.
    correlation_id text        CHECK (length(correlation_id) BETWEEN 1 AND 128),
    started_at     timestamptz NOT NULL DEFAULT now(),
    completed_at   timestamptz,
    CONSTRAINT assessments_completed_once CHECK (
        (status = 'completed') = (completed_at IS NOT NULL AND correlation_id IS NOT NULL)
    )
);

-- One processing job per (assessment, correlation, schema version): the
-- UNIQUE constraint is the idempotency guard, no idempotency table.
CREATE TABLE {{schema}}.processing_jobs (
    id             uuid        PRIMARY KEY,
    assessment_id  uuid        NOT NULL REFERENCES {{schema}}.assessments (id),
    correlation_id text        NOT NULL CHECK (length(correlation_id) BETWEEN 1 AND 128),
    schema_version text        NOT NULL CHECK (schema_version = 'v1'),
    status         text        NOT NULL DEFAULT 'queued'
                               CHECK (status IN ('queued', 'in_progress', 'completed', 'failed')),
    stage          text        NOT NULL DEFAULT 'pending'
                               CHECK (stage IN ('pending', 'risk', 'ranking', 'report', 'done')),
    attempt        integer     NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts   integer     NOT NULL DEFAULT 3 CHECK (max_attempts BETWEEN 1 AND 100),
    last_error     text,
    -- queued: not claimable before; in_progress: the claim's lease.
    lease_until    timestamptz,
    worker_id      text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    completed_at   timestamptz,
    CONSTRAINT processing_jobs_assessment_correlation_version_unique
        UNIQUE (assessment_id, correlation_id, schema_version),
    CONSTRAINT processing_jobs_attempts CHECK (attempt <= max_attempts + 1)
);

CREATE INDEX processing_jobs_claimable ON {{schema}}.processing_jobs (created_at)
    WHERE status IN ('queued', 'in_progress');

-- The status machine, enforced for every writer: queued -> in_progress ->
-- (queued | completed | failed); completed and failed are final; a job's
-- identity never changes.
CREATE FUNCTION {{schema}}.processing_jobs_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id <> OLD.id OR NEW.assessment_id <> OLD.assessment_id
       OR NEW.correlation_id <> OLD.correlation_id OR NEW.schema_version <> OLD.schema_version THEN
        RAISE EXCEPTION 'a processing job''s identity never changes'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'processing_jobs_transition';
    END IF;
    IF OLD.status IN ('completed', 'failed')
       OR (NEW.status <> OLD.status AND NOT (
              (OLD.status = 'queued' AND NEW.status = 'in_progress')
           OR (OLD.status = 'in_progress' AND NEW.status IN ('queued', 'completed', 'failed'))))
    THEN
        RAISE EXCEPTION 'illegal processing job transition % -> %', OLD.status, NEW.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'processing_jobs_transition';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER processing_jobs_guard BEFORE UPDATE ON {{schema}}.processing_jobs
    FOR EACH ROW EXECUTE FUNCTION {{schema}}.processing_jobs_guard();

-- What each stage produced. Deliberately without UNIQUE (job_id, stage):
-- a stage runs once per (job, stage) because the worker runs it through
-- the idempotency runner and commits this row with the stage's record, and
-- the tests prove it by counting these rows.
CREATE TABLE {{schema}}.stage_outputs (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id     uuid        NOT NULL REFERENCES {{schema}}.processing_jobs (id),
    stage      text        NOT NULL CHECK (stage IN ('risk', 'ranking', 'report')),
    attempt    integer     NOT NULL,
    fence      bigint      NOT NULL,
    output     jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX stage_outputs_job ON {{schema}}.stage_outputs (job_id);
