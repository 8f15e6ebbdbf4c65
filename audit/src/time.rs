//! [`EventTime`]: a UTC instant with microsecond precision, written as RFC 3339.
//!
//! Calendar arithmetic and RFC 3339 parsing are the `time` crate's; this
//! module adds the one thing the audit trail needs on top: a single,
//! fixed-width text form (six fractional digits, `Z`), so the canonical
//! encoding of an event never depends on how its time was written.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

const MICROS_PER_SEC: i64 = 1_000_000;
/// 0000-01-01T00:00:00Z in microseconds since the Unix epoch.
const MIN_MICROS: i64 = -62_167_219_200 * MICROS_PER_SEC;
/// 9999-12-31T23:59:59.999999Z in microseconds since the Unix epoch.
const MAX_MICROS: i64 = 253_402_300_800 * MICROS_PER_SEC - 1;

/// When an event happened: a UTC instant with microsecond precision.
///
/// Microseconds are what PostgreSQL's `timestamptz` keeps, so an event
/// survives a round trip through the database unchanged. The JSON form is
/// RFC 3339 in UTC with exactly six fractional digits
/// (`2025-03-01T09:30:00.250000Z`), the same for every instant, which keeps
/// the canonical encoding of an event stable. Years 0000 to 9999 are representable.
///
/// ```
/// use idempotency_audit::EventTime;
/// let t: EventTime = "2025-03-01T10:30:00.25+01:00".parse().unwrap();
/// assert_eq!(t.to_string(), "2025-03-01T09:30:00.250000Z");
/// assert_eq!(EventTime::from_unix_micros(0).unwrap().to_string(), "1970-01-01T00:00:00.000000Z");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventTime(i64);

/// Why a string is not an RFC 3339 timestamp this crate accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid RFC 3339 timestamp: {reason}")]
pub struct TimeParseError {
    reason: &'static str,
}

impl TimeParseError {
    const fn new(reason: &'static str) -> Self {
        Self { reason }
    }
}

impl EventTime {
    /// The system clock, truncated to microseconds.
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// From microseconds since the Unix epoch; `None` outside years 0000 to 9999.
    pub const fn from_unix_micros(micros: i64) -> Option<Self> {
        if micros < MIN_MICROS || micros > MAX_MICROS {
            None
        } else {
            Some(Self(micros))
        }
    }

    /// Microseconds since the Unix epoch (negative before 1970).
    pub const fn unix_micros(self) -> i64 {
        self.0
    }

    /// From a [`SystemTime`], truncated to microseconds and clamped to years 0000 to 9999.
    pub fn from_system_time(t: SystemTime) -> Self {
        let micros = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
            Err(e) => {
                // Before the epoch: round towards the past so truncation is consistent.
                let d = e.duration();
                let whole = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
                let partial = i64::from(d.subsec_nanos() % 1000 != 0);
                -whole.saturating_add(partial)
            }
        };
        Self(micros.clamp(MIN_MICROS, MAX_MICROS))
    }

    /// As a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        let magnitude = Duration::from_micros(self.0.unsigned_abs());
        if self.0 >= 0 {
            UNIX_EPOCH + magnitude
        } else {
            UNIX_EPOCH - magnitude
        }
    }

    /// Parses RFC 3339 (`2025-03-01T09:30:00Z`, `2025-03-01t10:30:00.5+01:00`).
    ///
    /// Fractions finer than a microsecond are truncated. Leap seconds
    /// (`:60`) are rejected: the instant they name has no form of its own
    /// in a count of microseconds, and reading one as `:59.999999` would
    /// give two different texts one instant.
    ///
    /// # Errors
    ///
    /// [`TimeParseError`] when the text is not RFC 3339 or the instant is out of range.
    pub fn parse_rfc3339(s: &str) -> Result<Self, TimeParseError> {
        // Two readings of `time`'s that this type narrows, checked on the
        // fixed positions of every RFC 3339 date-time: the date and the
        // time are separated by `T` (`time` also takes a space, which RFC
        // 3339 leaves to applications), and a leap second is refused
        // (`time` reads it as the last nanosecond of its minute).
        if !matches!(s.as_bytes().get(10), Some(b'T' | b't')) {
            return Err(TimeParseError::new("expected 'T' between date and time"));
        }
        if s.get(17..19) == Some("60") {
            return Err(TimeParseError::new("leap seconds are not supported"));
        }
        let parsed = OffsetDateTime::parse(s, &Rfc3339)
            .map_err(|_| TimeParseError::new("not an RFC 3339 date-time"))?;
        let micros = parsed.unix_timestamp_nanos().div_euclid(1_000);
        i64::try_from(micros)
            .ok()
            .and_then(Self::from_unix_micros)
            .ok_or(TimeParseError::new("outside years 0000 to 9999 in UTC"))
    }

    fn to_offset_date_time(self) -> OffsetDateTime {
        // Every value of this type is within years 0000 to 9999, which
        // `time` represents.
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
            .to_offset(UtcOffset::UTC)
    }
}

impl fmt::Display for EventTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.to_offset_date_time();
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.microsecond()
        )
    }
}
impl fmt::Debug for EventTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventTime({self})")
    }
}

impl FromStr for EventTime {
    type Err = TimeParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_rfc3339(s)
    }
}

impl From<SystemTime> for EventTime {
    fn from(t: SystemTime) -> Self {
        Self::from_system_time(t)
    }
}

impl Serialize for EventTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_instants() {
        let cases = [
            (0, "1970-01-01T00:00:00.000000Z"),
            (-1, "1969-12-31T23:59:59.999999Z"),
            (946_684_800_000_000, "2000-01-01T00:00:00.000000Z"),
            (951_782_400_000_000, "2000-02-29T00:00:00.000000Z"),
            (1_709_210_096_789_012, "2024-02-29T12:34:56.789012Z"),
            (MIN_MICROS, "0000-01-01T00:00:00.000000Z"),
            (MAX_MICROS, "9999-12-31T23:59:59.999999Z"),
        ];
        for (micros, text) in cases {
            let t = EventTime::from_unix_micros(micros).unwrap();
            assert_eq!(t.to_string(), text);
            assert_eq!(EventTime::parse_rfc3339(text).unwrap(), t, "{text}");
        }
    }

    #[test]
    fn offsets_fractions_and_case() {
        let utc = EventTime::parse_rfc3339("2025-03-01T09:30:00.250000Z").unwrap();
        for text in [
            "2025-03-01T10:30:00.25+01:00",
            "2025-03-01t09:30:00.25z",
            "2025-03-01T04:00:00.250000999-05:30",
        ] {
            assert_eq!(EventTime::parse_rfc3339(text).unwrap(), utc, "{text}");
        }
        assert_eq!(
            EventTime::parse_rfc3339("2025-03-01T09:30:00Z")
                .unwrap()
                .unix_micros()
                % 1_000_000,
            0
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "2025-03-01",
            "2025-03-01 09:30:00Z",
            "2025-13-01T09:30:00Z",
            "2025-02-29T09:30:00Z",
            "2025-04-31T09:30:00Z",
            "2025-03-01T24:00:00Z",
            "2025-03-01T09:60:00Z",
            "2025-03-01T09:30:60Z",
            "2025-03-01T09:30:61Z",
            "2025-03-01T09:30:00",
            "2025-03-01T09:30:00.Z",
            "2025-03-01T09:30:00+0100",
            "2025-03-01T09:30:00+24:00",
            "2025-03-01T09:30:00Zjunk",
            "2O25-03-01T09:30:00Z",
            "0000-01-01T00:00:00+00:01",
        ] {
            assert!(EventTime::parse_rfc3339(bad).is_err(), "{bad:?} accepted");
        }
        assert!(EventTime::from_unix_micros(MAX_MICROS + 1).is_none());
        assert!(EventTime::from_unix_micros(MIN_MICROS - 1).is_none());
    }

    #[test]
    fn system_time_round_trip_truncates_to_micros() {
        let st = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let t = EventTime::from_system_time(st);
        assert_eq!(t.unix_micros(), 1_700_000_000_123_456);
        assert_eq!(
            t.to_system_time(),
            UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_000)
        );
        let before = UNIX_EPOCH - Duration::new(1, 500);
        let t = EventTime::from_system_time(before);
        assert_eq!(t.unix_micros(), -1_000_001);
        assert!(t.to_system_time() <= before);
    }

    #[test]
    fn serde_uses_the_rfc3339_string() {
        let t = EventTime::from_unix_micros(1_500_000).unwrap();
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, r#""1970-01-01T00:00:01.500000Z""#);
        assert_eq!(serde_json::from_str::<EventTime>(&json).unwrap(), t);
        assert!(serde_json::from_str::<EventTime>(r#""yesterday""#).is_err());
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(micros in MIN_MICROS..=MAX_MICROS) {
            let t = EventTime::from_unix_micros(micros).unwrap();
            prop_assert_eq!(EventTime::parse_rfc3339(&t.to_string()).unwrap(), t);
        }
    }
}
