-- The claim of a key that has no record yet, or the answer a claim would
-- give without writing; `claim.sql` for everything else.
--
-- $1 key, $2 fingerprint, $3 new token, $4 lease (ms), $5 retention (ms),
-- $6 max attempts, $7 clock offset (ms): the parameters of `claim.sql`.
--
-- `claim.sql` without its conflict arm. `cur` reads the record from the
-- statement's snapshot. Absent, `written` inserts the new record (a
-- concurrent claim of the same new key makes the insert wait for that
-- claim's commit and then do nothing). Present, nothing is inserted, so a
-- row locked by a transaction that completes it (`complete_in`) is never
-- waited for; the second branch returns it when a claim would leave it
-- untouched (`peek.sql`'s condition). No row at all (an expired record,
-- an abandoned lease, a retryable failure, or a new key claimed
-- concurrently) sends the caller on to `claim.sql`, which decides under
-- its own snapshot and row lock.
--
-- The fence is drawn just before the insert, as in `claim.sql`'s new-record
-- branch; an insert that does nothing leaves a gap in the sequence, which
-- fences allow.
--
-- The placeholder after `clock.now` is `claim.sql`'s: empty, or the column
-- that turns off `synchronous_commit` for this statement's transaction.
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
    WHERE NOT EXISTS (SELECT 1 FROM cur)
    ON CONFLICT (key) DO NOTHING
    RETURNING r.state, r.fingerprint, r.fence, r.attempts, r.claim_kind, r.token,
              r.lease_deadline, r.outcome, r.resource, r.reason, r.retryable, r.finished_at
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
WHERE NOT cur.takeable
