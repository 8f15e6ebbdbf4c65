//! [`EventTime`]: a UTC instant with microsecond precision, written as RFC 3339.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const MICROS_PER_SEC: i64 = 1_000_000;
const SECS_PER_DAY: i64 = 86_400;
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
    /// (`:60`) are rejected.
    ///
    /// # Errors
    ///
    /// [`TimeParseError`] when the text is not RFC 3339 or the instant is out of range.
    pub fn parse_rfc3339(s: &str) -> Result<Self, TimeParseError> {
        let b = s.as_bytes();
        if b.len() < 20 {
            return Err(TimeParseError::new("too short"));
        }
        let year = digits(b, 0, 4)?;
        expect(b, 4, b'-')?;
        let month = digits(b, 5, 2)?;
        expect(b, 7, b'-')?;
        let day = digits(b, 8, 2)?;
        if !matches!(b[10], b'T' | b't') {
            return Err(TimeParseError::new("expected 'T' between date and time"));
        }
        let hour = digits(b, 11, 2)?;
        expect(b, 13, b':')?;
        let minute = digits(b, 14, 2)?;
        expect(b, 16, b':')?;
        let second = digits(b, 17, 2)?;
        let mut i = 19;
        let mut micros = 0i64;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                if i - start < 6 {
                    micros = micros * 10 + i64::from(b[i] - b'0');
                }
                i += 1;
            }
            let n = i - start;
            if n == 0 {
                return Err(TimeParseError::new("empty fraction"));
            }
            for _ in n..6 {
                micros *= 10;
            }
        }
        let offset_secs = match b.get(i) {
            Some(b'Z' | b'z') if i + 1 == b.len() => 0,
            Some(&sign @ (b'+' | b'-')) if i + 6 == b.len() => {
                let oh = digits(b, i + 1, 2)?;
                expect(b, i + 3, b':')?;
                let om = digits(b, i + 4, 2)?;
                if oh > 23 || om > 59 {
                    return Err(TimeParseError::new("offset out of range"));
                }
                let secs = oh * 3600 + om * 60;
                if sign == b'+' { secs } else { -secs }
            }
            _ => {
                return Err(TimeParseError::new(
                    "expected 'Z' or a ±HH:MM offset at the end",
                ));
            }
        };
        if !(1..=12).contains(&month) {
            return Err(TimeParseError::new("month out of range"));
        }
        if day < 1 || day > days_in_month(year, month) {
            return Err(TimeParseError::new("day out of range"));
        }
        if hour > 23 || minute > 59 {
            return Err(TimeParseError::new("time of day out of range"));
        }
        if second == 60 {
            return Err(TimeParseError::new("leap seconds are not supported"));
        }
        if second > 59 {
            return Err(TimeParseError::new("second out of range"));
        }
        let days = days_from_civil(year, month, day);
        let secs = days * SECS_PER_DAY + hour * 3600 + minute * 60 + second - offset_secs;
        Self::from_unix_micros(secs * MICROS_PER_SEC + micros)
            .ok_or(TimeParseError::new("outside years 0000 to 9999 in UTC"))
    }
}

fn digits(b: &[u8], at: usize, n: usize) -> Result<i64, TimeParseError> {
    let part = b.get(at..at + n).ok_or(TimeParseError::new("truncated"))?;
    part.iter().try_fold(0i64, |acc, &c| {
        if c.is_ascii_digit() {
            Ok(acc * 10 + i64::from(c - b'0'))
        } else {
            Err(TimeParseError::new("expected a digit"))
        }
    })
}

fn expect(b: &[u8], at: usize, c: u8) -> Result<(), TimeParseError> {
    if b.get(at) == Some(&c) {
        Ok(())
    } else {
        Err(TimeParseError::new("unexpected separator"))
    }
}

const fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

const fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
const fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
const fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

impl fmt::Display for EventTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(MICROS_PER_SEC);
        let micros = self.0.rem_euclid(MICROS_PER_SEC);
        let days = secs.div_euclid(SECS_PER_DAY);
        let sod = secs.rem_euclid(SECS_PER_DAY);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            sod / 3600,
            sod / 60 % 60,
            sod % 60
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
