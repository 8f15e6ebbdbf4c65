-- The order-intake tables, in the schema the service was given: every name
-- below lands there (and the service's connections have it first on their
-- `search_path`).
SET LOCAL search_path TO {{schema}};

-- The lifecycle, enforced by the database: only these values can be stored.
CREATE TYPE order_status AS ENUM (
    'CREATED', 'VALIDATED', 'RESERVED', 'FULFILLING', 'SHIPPED', 'CANCELLED', 'FAILED'
);
CREATE TYPE order_channel AS ENUM ('MANUAL', 'SHOPIFY', 'OTHER');
CREATE TYPE order_priority AS ENUM ('LOW', 'NORMAL', 'HIGH');
CREATE TYPE line_status AS ENUM ('OPEN', 'RESERVED', 'SHIPPED', 'CANCELLED');

CREATE TABLE orders (
    id                   uuid           PRIMARY KEY,
    -- The caller's id of the order, unique per channel; absent for orders
    -- taken in by `Idempotency-Key`.
    external_order_id    text           CHECK (length(external_order_id) BETWEEN 1 AND 100),
    channel              order_channel  NOT NULL,
    -- SHA-256 of the `Idempotency-Key` (the raw key is never stored).
    idempotency_key_hash bytea          CHECK (length(idempotency_key_hash) = 32),
    -- SHA-256 of the canonical intake request: a duplicate with another
    -- body is told apart from a retry.
    request_hash         bytea          NOT NULL CHECK (length(request_hash) = 32),
    status               order_status   NOT NULL DEFAULT 'CREATED',
    priority             order_priority NOT NULL DEFAULT 'NORMAL',
    ship_to_name         text           NOT NULL CHECK (length(ship_to_name) BETWEEN 1 AND 200),
    ship_to_line1        text           NOT NULL CHECK (length(ship_to_line1) BETWEEN 1 AND 200),
    ship_to_city         text           NOT NULL CHECK (length(ship_to_city) BETWEEN 1 AND 100),
    ship_to_postal_code  text           NOT NULL CHECK (length(ship_to_postal_code) BETWEEN 1 AND 20),
    ship_to_country      text           NOT NULL CHECK (ship_to_country ~ '^[A-Z]{2}$'),
    failure_reason       text,
    cancel_reason        text,
    tracking_number      text,
    created_at           timestamptz    NOT NULL DEFAULT now(),
    updated_at           timestamptz    NOT NULL DEFAULT now(),
    CONSTRAINT orders_channel_external_order_id_key UNIQUE (channel, external_order_id),
    CONSTRAINT orders_idempotency_key_hash_key UNIQUE (idempotency_key_hash),
    -- Exactly one intake key.
    CONSTRAINT orders_one_intake_key
        CHECK ((external_order_id IS NULL) <> (idempotency_key_hash IS NULL)),
    -- What a terminal state carries.
    CONSTRAINT orders_failed_has_reason CHECK (status <> 'FAILED' OR failure_reason IS NOT NULL),
    CONSTRAINT orders_cancelled_has_reason CHECK (status <> 'CANCELLED' OR cancel_reason IS NOT NULL),
    CONSTRAINT orders_shipped_has_tracking CHECK (status <> 'SHIPPED' OR tracking_number IS NOT NULL)
);

-- `GET /orders?status=...` pages by id (UUIDv7: time-ordered) within a status.
CREATE INDEX orders_status_id_idx ON orders (status, id);

-- The state machine, enforced by the database too: an UPDATE that changes
-- the status along an edge that is not in the lifecycle is refused, whatever
-- the code does.
CREATE FUNCTION orders_legal_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status AND NOT (
           (OLD.status = 'CREATED'    AND NEW.status IN ('VALIDATED', 'CANCELLED', 'FAILED'))
        OR (OLD.status = 'VALIDATED'  AND NEW.status IN ('RESERVED', 'CANCELLED', 'FAILED'))
        OR (OLD.status = 'RESERVED'   AND NEW.status IN ('FULFILLING', 'CANCELLED', 'FAILED'))
        OR (OLD.status = 'FULFILLING' AND NEW.status IN ('SHIPPED', 'FAILED'))
    ) THEN
        RAISE EXCEPTION 'illegal order transition from % to %', OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER orders_legal_transition BEFORE UPDATE OF status ON orders
    FOR EACH ROW EXECUTE FUNCTION orders_legal_transition();

CREATE TABLE order_lines (
    id         uuid        PRIMARY KEY,
    order_id   uuid        NOT NULL REFERENCES orders (id),
    line_no    integer     NOT NULL CHECK (line_no > 0),
    sku        text        NOT NULL CHECK (length(sku) BETWEEN 1 AND 64),
    quantity   integer     NOT NULL CHECK (quantity > 0 AND quantity <= 10000),
    -- A decimal amount, never a float.
    unit_price numeric(12, 2) NOT NULL CHECK (unit_price >= 0),
    status     line_status NOT NULL DEFAULT 'OPEN',
    CONSTRAINT order_lines_order_line_no_key UNIQUE (order_id, line_no)
);

-- The order's history: append-only.
CREATE TABLE order_events (
    -- The order of occurrence.
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id   uuid        NOT NULL REFERENCES orders (id),
    type       text        NOT NULL CHECK (type IN (
        'ORDER_CREATED', 'ORDER_VALIDATED', 'ORDER_RESERVED', 'ORDER_FULFILLING',
        'ORDER_SHIPPED', 'ORDER_CANCELLED', 'ORDER_FAILED'
    )),
    payload    jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Every event marks one edge of a lifecycle without cycles: an order has
    -- each type at most once (one ORDER_CREATED per order, ever).
    CONSTRAINT order_events_order_type_key UNIQUE (order_id, type)
);

CREATE FUNCTION order_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'order_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER order_events_no_update BEFORE UPDATE OR DELETE ON order_events
    FOR EACH ROW EXECUTE FUNCTION order_events_append_only();
CREATE TRIGGER order_events_no_truncate BEFORE TRUNCATE ON order_events
    FOR EACH STATEMENT EXECUTE FUNCTION order_events_append_only();

-- The outbox of workflow starts: written in the order's transaction, read
-- by the relay, which starts `order-intake-{orderId}` and marks the row.
CREATE TABLE workflow_starts (
    order_id    uuid        PRIMARY KEY REFERENCES orders (id),
    workflow_id text        NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    run_id      text,
    attempts    integer     NOT NULL DEFAULT 0,
    last_error  text
);

CREATE INDEX workflow_starts_pending_idx ON workflow_starts (created_at) WHERE started_at IS NULL;

-- Every activity attempt the workers saw (an operations log, not the
-- system of record of the steps: that is the idempotency record).
CREATE TABLE activity_attempts (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_id   text        NOT NULL,
    activity_id   text        NOT NULL,
    activity_type text        NOT NULL,
    attempt       integer     NOT NULL,
    order_id      uuid        NOT NULL,
    at            timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX activity_attempts_order_idx ON activity_attempts (order_id, id);
