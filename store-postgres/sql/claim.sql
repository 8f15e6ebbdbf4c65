-- Claim, in one statement: insert a new record, take over an expired lease,
-- re-claim a retryable failure, turn an abandoned record with no attempts
-- left into a terminal failure, or return the live record untouched.
--
-- $1 key, $2 fingerprint, $3 new token, $4 lease (ms), $5 retention (ms),
-- $6 max attempts, $7 clock offset (ms).
--
-- `cur` reads the record from the statement's snapshot. When it is absent or
-- may be taken, the INSERT ... ON CONFLICT tries; ON CONFLICT re-checks the
-- condition against the latest committed version under a row lock, so among
-- concurrent claimers exactly one wins. Replays and in-flight answers write
-- nothing and lock nothing. No row at all means the snapshot was overtaken
-- by a concurrent claim: the caller runs the statement again.
--
-- Every claim that acquires draws its fence from the schema's sequence: a
-- takeover or retry under the row lock (so it exceeds every fence the row
-- ever held), a new record just before its row is inserted (so it exceeds
-- every fence drawn before this statement, whatever rows have been deleted
-- since).
--
-- The placeholder after `clock.now` is empty by default; with
-- `ClaimCommit::Asynchronous` it is a `set_config('synchronous_commit', 'off', true)` column of `clock`
-- (evaluated once, volatile, so never pruned): this statement's own
-- transaction then commits without waiting for its WAL flush.
WITH clock AS (
    SELECT statement_timestamp() + $7::float8 * interval '1 millisecond' AS now{claim_commit}
),
cur AS (
    SELECT r.*,
           {schema}.is_expired(r.state, r.expires_at, r.lease_deadline, c.now)
           OR (r.fingerprint = $2
               AND ((r.state = 'PENDING' AND r.lease_deadline <= c.now)
                    OR (r.state = 'FAILED' AND r.retryable AND r.attempts < $6))) AS takeable
    FROM {schema}.records r, clock c
    WHERE r.key = $1
),
written AS (
    INSERT INTO {schema}.records AS r
        (key, fingerprint, state, fence, attempts, claim_kind, token, lease_deadline,
         created_at, expires_at)
    SELECT $1, $2, 'PENDING', nextval('{schema}.fences'), 1, 'NEW', $3,
           c.now + $4::float8 * interval '1 millisecond',
           c.now,
           c.now + $5::float8 * interval '1 millisecond'
    FROM clock c
    WHERE NOT EXISTS (SELECT 1 FROM cur WHERE NOT cur.takeable)
    ON CONFLICT (key) DO UPDATE SET
        -- excluded.created_at is this statement's "now".
        fingerprint = excluded.fingerprint,
        state = CASE
            WHEN NOT {schema}.is_expired(r.state, r.expires_at, r.lease_deadline, excluded.created_at)
                 AND r.state = 'PENDING' AND r.attempts >= $6 THEN 'FAILED'
            ELSE 'PENDING' END,
        -- Drawn again under the row lock, not `excluded.fence`: greater than
        -- anything a concurrent claim of this row wrote before us.
        fence = CASE
            WHEN {schema}.is_expired(r.state, r.expires_at, r.lease_deadline, excluded.created_at)
            THEN nextval('{schema}.fences')
            WHEN r.state = 'PENDING' AND r.attempts >= $6 THEN r.fence
            ELSE nextval('{schema}.fences') END,
        attempts = CASE
            WHEN {schema}.is_expired(r.state, r.expires_at, r.lease_deadline, excluded.created_at) THEN 1
            WHEN r.state = 'PENDING' AND r.attempts >= $6 THEN r.attempts
            ELSE r.attempts + 1 END,
        claim_kind = CASE
            WHEN {schema}.is_expired(r.state, r.expires_at, r.lease_deadline, excluded.created_at) THEN 'NEW'
            WHEN r.state = 'PENDING' AND r.attempts >= $6 THEN r.claim_kind
            WHEN r.state = 'PENDING' THEN 'TAKEOVER'
            ELSE 'RETRY' END,
        token = CASE
            WHEN NOT {schema}.is_expired(r.state, r.expires_at, r.lease_deadline, excluded.created_at)
                 AND r.state = 'PENDING' AND r.attempts >= $6 THEN NULL
            ELSE excluded.token END,
        lease_deadline = CASE
            WHEN NOT {schema}.is_expired(r.state, r.expires_at, r.lease_deadline, excluded.created_at)
                 AND r.state = 'PENDING' AND r.attempts >= $6 THEN NULL
            ELSE excluded.lease_deadline END,
        outcome = NULL,
        resource = NULL,
        -- A new attempt starts unwatched: its first waiter marks it again.
        watched = false,
        reason = CASE
            WHEN NOT {schema}.is_expired(r.state, r.expires_at, r.lease_deadline, excluded.created_at)
                 AND r.state = 'PENDING' AND r.attempts >= $6
            THEN 'lease expired on attempt ' || r.attempts || ' of ' || $6 || ': no attempts left'
            END,
        retryable = CASE
            WHEN NOT {schema}.is_expired(r.state, r.expires_at, r.lease_deadline, excluded.created_at)
                 AND r.state = 'PENDING' AND r.attempts >= $6 THEN false
            END,
        created_at = CASE
            WHEN {schema}.is_expired(r.state, r.expires_at, r.lease_deadline, excluded.created_at)
            THEN excluded.created_at
            ELSE r.created_at END,
        finished_at = CASE
            WHEN NOT {schema}.is_expired(r.state, r.expires_at, r.lease_deadline, excluded.created_at)
                 AND r.state = 'PENDING' AND r.attempts >= $6 THEN excluded.created_at
            END,
        expires_at = CASE
            WHEN {schema}.is_expired(r.state, r.expires_at, r.lease_deadline, excluded.created_at)
                 OR (r.state = 'PENDING' AND r.attempts >= $6) THEN excluded.expires_at
            ELSE greatest(r.expires_at, excluded.lease_deadline) END
    -- Same condition as `cur.takeable`, against the latest committed version.
    WHERE {schema}.is_expired(r.state, r.expires_at, r.lease_deadline, excluded.created_at)
       OR (r.fingerprint = excluded.fingerprint
           AND ((r.state = 'PENDING' AND r.lease_deadline <= excluded.created_at)
                OR (r.state = 'FAILED' AND r.retryable AND r.attempts < $6)))
    RETURNING r.*
)
SELECT true AS written, w.state, w.fingerprint, w.fence, w.attempts, w.claim_kind, w.token,
       {schema}.epoch_ms(w.lease_deadline) AS lease_deadline_ms,
       w.outcome, w.resource, w.reason, w.retryable,
       {schema}.epoch_ms(w.finished_at) AS finished_ms,
       {schema}.epoch_ms(c.now) AS now_ms
FROM written w, clock c
UNION ALL
SELECT false, cur.state, cur.fingerprint, cur.fence, cur.attempts, cur.claim_kind, cur.token,
       {schema}.epoch_ms(cur.lease_deadline),
       cur.outcome, cur.resource, cur.reason, cur.retryable,
       {schema}.epoch_ms(cur.finished_at),
       {schema}.epoch_ms(c.now)
FROM cur, clock c
WHERE NOT cur.takeable AND NOT EXISTS (SELECT 1 FROM written)
