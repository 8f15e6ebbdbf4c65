//! Conflict checks and resource assignment for one time slot of one shop,
//! inside the caller's transaction (which holds the shop's row lock, so two
//! schedulings of one shop never pick the same bay or mechanic).

use serde_json::{Value, json};
use sqlx::PgConnection;
use time::{Duration, OffsetDateTime};

use crate::body::format_time;

/// The states in which an appointment holds its resources.
pub const ACTIVE: &str = "('SCHEDULED', 'CONFIRMED', 'AWAITING_PARTS', 'IN_PROGRESS')";

/// A time slot to check.
#[derive(Debug, Clone)]
pub struct Slot<'a> {
    /// The shop.
    pub shop: &'a str,
    /// Start (UTC).
    pub start: OffsetDateTime,
    /// Length.
    pub minutes: i32,
    /// The bay type needed.
    pub bay_type: &'a str,
    /// Skills a mechanic must all have.
    pub skills: &'a [String],
    /// An appointment to leave out (the one being rescheduled).
    pub exclude: Option<&'a str>,
}

impl Slot<'_> {
    fn end(&self) -> OffsetDateTime {
        self.start + Duration::minutes(i64::from(self.minutes))
    }
}

/// A hard conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// `OUTSIDE_SHOP_HOURS`, `BAY_UNAVAILABLE` or `CAPACITY_EXCEEDED`.
    pub kind: &'static str,
    /// What was found.
    pub detail: String,
}

/// The conflicts as JSON.
pub fn conflicts_json(conflicts: &[Conflict]) -> Value {
    Value::Array(
        conflicts
            .iter()
            .map(|c| json!({"type": c.kind, "severity": "HARD", "detail": c.detail}))
            .collect(),
    )
}

/// What a slot offers.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Hard conflicts (empty: the slot is free).
    pub conflicts: Vec<Conflict>,
    /// A free bay of the type, if any.
    pub bay: Option<String>,
    /// A free, on-shift mechanic with every required skill, if any.
    pub mechanic: Option<String>,
    /// Whether any active mechanic of the shop has every required skill.
    pub skilled_exists: bool,
}

impl Plan {
    /// `ASSIGNED` (bay and mechanic), `AWAITING_SKILL_FULFILLMENT` (no
    /// mechanic has the skills) or `DEFERRED` (skilled mechanics are busy or
    /// off shift, or no bay is free: the dispatcher assigns later).
    pub fn assignment_status(&self) -> &'static str {
        if !self.skilled_exists {
            "AWAITING_SKILL_FULFILLMENT"
        } else if self.bay.is_some() && self.mechanic.is_some() {
            "ASSIGNED"
        } else {
            "DEFERRED"
        }
    }
}

fn minute_of_day(t: OffsetDateTime) -> i32 {
    i32::from(t.hour()) * 60 + i32::from(t.minute())
}

/// Whether `[start, end)` lies within `[from, to]` minutes of one UTC day.
pub fn within(start: OffsetDateTime, end: OffsetDateTime, from: i32, to: i32) -> bool {
    let same_day = start.date() == end.date()
        || (end.date() == start.date().next_day().unwrap_or(start.date())
            && end.hour() == 0
            && end.minute() == 0);
    let end_min = if end.date() == start.date() {
        minute_of_day(end)
    } else {
        1440
    };
    same_day && minute_of_day(start) >= from && end_min <= to
}

/// Checks `slot` and finds free resources.
///
/// # Errors
///
/// Database errors.
pub async fn plan(conn: &mut PgConnection, slot: &Slot<'_>) -> Result<Plan, sqlx::Error> {
    let (start, end) = (format_time(slot.start), format_time(slot.end()));
    let mut conflicts = Vec::new();
    let (opens, closes, capacity): (i32, i32, i32) = sqlx::query_as(
        "SELECT opens_at, closes_at, capacity FROM appointments.shops WHERE id = $1",
    )
    .bind(slot.shop)
    .fetch_one(&mut *conn)
    .await?;
    if !within(slot.start, slot.end(), opens, closes) {
        conflicts.push(Conflict {
            kind: "OUTSIDE_SHOP_HOURS",
            detail: format!(
                "the shop is open {} to {} UTC",
                crate::body::format_clock(opens),
                crate::body::format_clock(closes)
            ),
        });
    }
    let overlap = "a.status IN ('SCHEDULED', 'CONFIRMED', 'AWAITING_PARTS', 'IN_PROGRESS') \
         AND a.id IS DISTINCT FROM $4 AND a.scheduled_start < $3::timestamptz \
         AND a.scheduled_start + a.duration_minutes * interval '1 minute' > $2::timestamptz";
    let busy: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM appointments.appointments a WHERE a.shop_id = $1 AND {overlap}"
    )))
    .bind(slot.shop)
    .bind(&start)
    .bind(&end)
    .bind(slot.exclude)
    .fetch_one(&mut *conn)
    .await?;
    if busy >= i64::from(capacity) {
        conflicts.push(Conflict {
            kind: "CAPACITY_EXCEEDED",
            detail: format!(
                "{busy} appointments already overlap; the shop's capacity is {capacity}"
            ),
        });
    }
    let bay: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT b.id FROM appointments.bays b WHERE b.shop_id = $1 AND b.bay_type = $5 \
         AND NOT EXISTS (SELECT 1 FROM appointments.appointments a WHERE a.bay_id = b.id AND {overlap}) \
         ORDER BY b.id LIMIT 1"
    )))
    .bind(slot.shop)
    .bind(&start)
    .bind(&end)
    .bind(slot.exclude)
    .bind(slot.bay_type)
    .fetch_optional(&mut *conn)
    .await?;
    if bay.is_none() {
        conflicts.push(Conflict {
            kind: "BAY_UNAVAILABLE",
            detail: format!("no {} is free at that time", slot.bay_type),
        });
    }
    let (mechanic, skilled_exists) = mechanic(conn, slot, None).await?;
    Ok(Plan {
        conflicts,
        bay,
        mechanic,
        skilled_exists,
    })
}

/// A free, on-shift mechanic of the shop with every required skill
/// (`only`: that mechanic or none), and whether any active one has the skills.
///
/// # Errors
///
/// Database errors.
pub async fn mechanic(
    conn: &mut PgConnection,
    slot: &Slot<'_>,
    only: Option<&str>,
) -> Result<(Option<String>, bool), sqlx::Error> {
    let (start, end) = (format_time(slot.start), format_time(slot.end()));
    let end_min = if slot.end().date() == slot.start.date() {
        minute_of_day(slot.end())
    } else {
        1440
    };
    let found: Option<String> = sqlx::query_scalar(
        "SELECT m.id FROM appointments.mechanics m \
         WHERE m.shop_id = $1 AND m.active AND m.skills @> $5 \
           AND m.shift_start <= $6 AND m.shift_end >= $7 AND ($8::text IS NULL OR m.id = $8) \
           AND NOT EXISTS (SELECT 1 FROM appointments.appointments a WHERE a.mechanic_id = m.id \
               AND a.status IN ('SCHEDULED', 'CONFIRMED', 'AWAITING_PARTS', 'IN_PROGRESS') \
               AND a.id IS DISTINCT FROM $4 AND a.scheduled_start < $3::timestamptz \
               AND a.scheduled_start + a.duration_minutes * interval '1 minute' > $2::timestamptz) \
         ORDER BY m.id LIMIT 1",
    )
    .bind(slot.shop)
    .bind(&start)
    .bind(&end)
    .bind(slot.exclude)
    .bind(slot.skills)
    .bind(minute_of_day(slot.start))
    .bind(end_min)
    .bind(only)
    .fetch_optional(&mut *conn)
    .await?;
    let skilled: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM appointments.mechanics \
                        WHERE shop_id = $1 AND active AND skills @> $2)",
    )
    .bind(slot.shop)
    .bind(slot.skills)
    .fetch_one(&mut *conn)
    .await?;
    Ok((found, skilled))
}

/// Whether `bay` is free during `slot`.
///
/// # Errors
///
/// Database errors.
pub async fn bay_free(
    conn: &mut PgConnection,
    slot: &Slot<'_>,
    bay: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT NOT EXISTS (SELECT 1 FROM appointments.appointments a WHERE a.bay_id = $1 \
             AND a.status IN ('SCHEDULED', 'CONFIRMED', 'AWAITING_PARTS', 'IN_PROGRESS') \
             AND a.id IS DISTINCT FROM $4 AND a.scheduled_start < $3::timestamptz \
             AND a.scheduled_start + a.duration_minutes * interval '1 minute' > $2::timestamptz)",
    )
    .bind(bay)
    .bind(format_time(slot.start))
    .bind(format_time(slot.end()))
    .bind(slot.exclude)
    .fetch_one(conn)
    .await
}

/// Up to three conflict-free starts after `slot`'s, in half-hour steps
/// over the next three days.
///
/// # Errors
///
/// Database errors.
pub async fn alternatives(
    conn: &mut PgConnection,
    slot: &Slot<'_>,
) -> Result<Vec<String>, sqlx::Error> {
    let mut found = Vec::new();
    for step in 1..=144 {
        let candidate = Slot {
            start: slot.start + Duration::minutes(30 * step),
            ..slot.clone()
        };
        if plan(conn, &candidate).await?.conflicts.is_empty() {
            found.push(format_time(candidate.start));
            if found.len() == 3 {
                break;
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::parse_time;

    #[test]
    fn shop_hours() {
        let t = |s: &str| parse_time(s).unwrap();
        assert!(within(
            t("2030-01-01T08:00:00Z"),
            t("2030-01-01T09:00:00Z"),
            420,
            1140
        ));
        assert!(!within(
            t("2030-01-01T06:59:00Z"),
            t("2030-01-01T08:00:00Z"),
            420,
            1140
        ));
        assert!(!within(
            t("2030-01-01T18:30:00Z"),
            t("2030-01-01T19:30:00Z"),
            420,
            1140
        ));
        assert!(within(
            t("2030-01-01T23:00:00Z"),
            t("2030-01-02T00:00:00Z"),
            0,
            1440
        ));
        assert!(!within(
            t("2030-01-01T23:00:00Z"),
            t("2030-01-02T00:30:00Z"),
            0,
            1440
        ));
    }
}
