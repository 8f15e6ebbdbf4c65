-- Shop management (schema `appointments`): fixtures, appointments, their
-- history and audit trail, the event outbox and the notification outbox.
-- Work Execution (schema `work_execution`): the planned times its consumer
-- applies from the events. All times are UTC.

CREATE TABLE appointments.shops (
    id         text        PRIMARY KEY,
    -- Opening hours, minutes after midnight UTC, every day.
    opens_at   integer     NOT NULL CHECK (opens_at BETWEEN 0 AND 1440),
    closes_at  integer     NOT NULL CHECK (closes_at BETWEEN 0 AND 1440 AND closes_at > opens_at),
    -- Appointments that may overlap at any moment (hard capacity).
    capacity   integer     NOT NULL CHECK (capacity BETWEEN 1 AND 1000),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE appointments.bays (
    id       text PRIMARY KEY,
    shop_id  text NOT NULL REFERENCES appointments.shops (id),
    bay_type text NOT NULL CHECK (bay_type IN ('GENERAL_SERVICE_BAY', 'LIFT_BAY', 'ALIGNMENT_BAY',
                                               'TIRE_BAY', 'INSPECTION_BAY', 'MOBILE_UNIT')),
    name     text NOT NULL
);

CREATE TABLE appointments.mechanics (
    id          text    PRIMARY KEY,
    shop_id     text    NOT NULL REFERENCES appointments.shops (id),
    name        text    NOT NULL,
    skills      text[]  NOT NULL,
    shift_start integer NOT NULL CHECK (shift_start BETWEEN 0 AND 1440),
    shift_end   integer NOT NULL CHECK (shift_end BETWEEN 0 AND 1440 AND shift_end > shift_start),
    active      boolean NOT NULL DEFAULT true,
    phone       text
);

-- Estimates and work orders: what an appointment is made from.
CREATE TABLE appointments.sources (
    source_type         text    NOT NULL CHECK (source_type IN ('ESTIMATE', 'WORK_ORDER')),
    id                  text    NOT NULL,
    shop_id             text    NOT NULL REFERENCES appointments.shops (id),
    customer_id         text    NOT NULL,
    vehicle_id          text    NOT NULL,
    customer_phone      text,
    customer_email      text,
    status              text    NOT NULL,
    service_description text    NOT NULL,
    duration_minutes    integer NOT NULL CHECK (duration_minutes BETWEEN 15 AND 1440),
    required_skills     text[]  NOT NULL,
    bay_type            text    NOT NULL,
    PRIMARY KEY (source_type, id)
);

CREATE TABLE appointments.appointments (
    id                 text        PRIMARY KEY,
    shop_id            text        NOT NULL REFERENCES appointments.shops (id),
    source_type        text        NOT NULL,
    source_id          text        NOT NULL,
    customer_id        text        NOT NULL,
    vehicle_id         text        NOT NULL,
    status             text        NOT NULL CHECK (status IN ('SCHEDULED', 'CONFIRMED', 'AWAITING_PARTS',
                                                              'IN_PROGRESS', 'COMPLETED', 'CANCELLED')),
    scheduled_start    timestamptz NOT NULL,
    duration_minutes   integer     NOT NULL,
    bay_type           text        NOT NULL,
    bay_id             text        REFERENCES appointments.bays (id),
    mechanic_id        text        REFERENCES appointments.mechanics (id),
    assignment_status  text        NOT NULL,
    needs_reassignment boolean     NOT NULL DEFAULT false,
    required_skills    text[]      NOT NULL,
    service_description text       NOT NULL,
    reschedule_count   integer     NOT NULL DEFAULT 0,
    -- The version of the appointment's events: 1 when created, +1 per reschedule.
    version            bigint      NOT NULL DEFAULT 1,
    created_by         text        NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (source_type, source_id) REFERENCES appointments.sources (source_type, id)
);

-- The business rule: one active appointment per estimate or work order.
CREATE UNIQUE INDEX appointments_one_active_per_source
    ON appointments.appointments (source_type, source_id)
    WHERE status IN ('SCHEDULED', 'CONFIRMED', 'AWAITING_PARTS', 'IN_PROGRESS');

CREATE INDEX appointments_shop_time ON appointments.appointments (shop_id, scheduled_start);

-- Links to the source never change.
CREATE FUNCTION appointments.links_are_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.source_type <> OLD.source_type OR NEW.source_id <> OLD.source_id THEN
        RAISE EXCEPTION 'appointment % links to its source are immutable', OLD.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER appointments_links_immutable
    BEFORE UPDATE ON appointments.appointments
    FOR EACH ROW EXECUTE FUNCTION appointments.links_are_immutable();

CREATE TABLE appointments.history (
    id                bigserial   PRIMARY KEY,
    appointment_id    text        NOT NULL REFERENCES appointments.appointments (id),
    previous_start    timestamptz NOT NULL,
    new_start         timestamptz NOT NULL,
    reason            text        NOT NULL,
    notes             text,
    rescheduled_by    text        NOT NULL,
    rescheduled_at    timestamptz NOT NULL DEFAULT now(),
    conflicts         jsonb       NOT NULL,
    override_applied  boolean     NOT NULL,
    assignment_status text        NOT NULL,
    version           bigint      NOT NULL
);

-- Append-only: written in the business transaction, never changed.
CREATE TABLE appointments.audit_log (
    id              bigserial   PRIMARY KEY,
    appointment_id  text        NOT NULL,
    event_type      text        NOT NULL,
    actor_id        text        NOT NULL,
    actor_role      text        NOT NULL,
    action          text        NOT NULL,
    previous_values jsonb,
    new_values      jsonb,
    reason          text,
    conflicts       jsonb       NOT NULL,
    override        jsonb,
    at              timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION appointments.audit_is_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON appointments.audit_log
    FOR EACH ROW EXECUTE FUNCTION appointments.audit_is_append_only();

-- Events, written in the business transaction; the relay publishes them to
-- JetStream with `Nats-Msg-Id` = event id and stamps `published_at`.
CREATE TABLE appointments.outbox (
    event_id     uuid        PRIMARY KEY,
    subject      text        NOT NULL,
    event_type   text        NOT NULL,
    aggregate_id text        NOT NULL,
    version      bigint,
    payload      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);

CREATE INDEX outbox_unpublished ON appointments.outbox (created_at) WHERE published_at IS NULL;

-- Notifications, one row per recipient and channel, sent by the dispatcher.
CREATE TABLE appointments.notifications (
    id               uuid        PRIMARY KEY,
    -- The service instance that dispatches it (its subject prefix).
    instance         text        NOT NULL,
    appointment_id   text        NOT NULL REFERENCES appointments.appointments (id),
    recipient_type   text        NOT NULL CHECK (recipient_type IN ('CUSTOMER', 'MECHANIC')),
    recipient_id     text        NOT NULL,
    address          text        NOT NULL,
    channel          text        NOT NULL CHECK (channel IN ('SMS', 'EMAIL')),
    kind             text        NOT NULL,
    content          text        NOT NULL,
    status           text        NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'SENT', 'FAILED')),
    attempts         integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    manual_follow_up boolean     NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz
);

CREATE INDEX notifications_due ON appointments.notifications (instance, next_attempt_at)
    WHERE status = 'PENDING';

CREATE SCHEMA IF NOT EXISTS work_execution;

-- Work Execution's view, written only by its consumer.
CREATE TABLE work_execution.planned (
    appointment_id   text        PRIMARY KEY,
    source_type      text        NOT NULL,
    source_id        text        NOT NULL,
    planned_start    timestamptz NOT NULL,
    duration_minutes integer     NOT NULL,
    version          bigint      NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX planned_source ON work_execution.planned (source_type, source_id);

-- Every application of an event, in order (no key on purpose: a second
-- application would show as a second row).
CREATE TABLE work_execution.applied_events (
    id             bigserial   PRIMARY KEY,
    consumer       text        NOT NULL,
    event_id       uuid        NOT NULL,
    event_type     text        NOT NULL,
    appointment_id text        NOT NULL,
    version        bigint      NOT NULL,
    applied_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX applied_events_appointment ON work_execution.applied_events (appointment_id);

-- RFC 3339 text of a time, in UTC, to the second.
CREATE FUNCTION appointments.iso(t timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') $$;
