//! Durations and times: parsing Go-style durations, and the engine's rounding of timestamps.
//!
//! Kubernetes serializes `metav1.Time` with whole seconds. If the engine kept sub-second timestamps in memory,
//! the status it works from after a round trip through the API server would differ from the one it computed,
//! and a 30 s sleep could end after 29.4 s. So every timestamp the engine writes is rounded to a whole second:
//! points in the past (`startedAt`, `finishedAt`) down, points in the future (`wakeAt`, `deadline`) **up**, so
//! that a timer never fires early.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use thiserror::Error;

/// The longest duration the engine accepts anywhere (about 100 years): longer values are surely mistakes, and
/// the bound keeps timestamp arithmetic far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 366 * 24 * 3600);

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DurationError {
    /// The string is empty.
    #[error("empty duration")]
    Empty,
    /// The string starts with `-`.
    #[error("negative duration {0:?}")]
    Negative(String),
    /// The string is not a Go duration.
    #[error("{0:?} is not a duration: write numbers with units such as 300ms, 30s, 10m, 1h30m")]
    Syntax(String),
    /// The duration is longer than [`MAX_DURATION`].
    #[error("duration {0:?} is longer than 100 years")]
    TooLong(String),
}

/// Parses a Go-style duration (`300ms`, `30s`, `1h30m`, `1.5h`) with `kube::core::Duration`.
///
/// The string is checked first against the strict grammar of the CRD pattern and for its magnitude, because
/// `kube::core::Duration` accepts a few things Kubernetes would not (a bare `0`, a `+` sign) and panics on
/// absurdly large values.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.starts_with('-') {
        return Err(DurationError::Negative(text.to_owned()));
    }
    let seconds = strict_seconds(s).ok_or_else(|| DurationError::Syntax(text.to_owned()))?;
    if seconds > MAX_DURATION.as_secs_f64() {
        return Err(DurationError::TooLong(text.to_owned()));
    }
    let parsed: kube::core::Duration = s
        .parse()
        .map_err(|_| DurationError::Syntax(text.to_owned()))?;
    Ok(parsed.into())
}

/// Checks `^([0-9]+(\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h))+$` by hand and returns the approximate length in seconds.
fn strict_seconds(s: &str) -> Option<f64> {
    let mut rest = s;
    let mut total = 0.0_f64;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        if int_len == 0 {
            return None;
        }
        let mut num_len = int_len;
        if rest[int_len..].starts_with('.') {
            let frac = rest[int_len + 1..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            if frac == 0 {
                return None;
            }
            num_len = int_len + 1 + frac;
        }
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let units: [(&str, f64); 8] = [
            ("ns", 1e-9),
            ("us", 1e-6),
            ("µs", 1e-6),
            ("μs", 1e-6),
            ("ms", 1e-3),
            ("s", 1.0),
            ("m", 60.0),
            ("h", 3600.0),
        ];
        let (unit, factor) = units.iter().find(|(u, _)| rest.starts_with(u))?;
        rest = &rest[unit.len()..];
        total += value * factor;
        if !total.is_finite() {
            return None;
        }
    }
    Some(total)
}

/// Parses an RFC 3339 time such as `2026-12-01T09:00:00Z`.
pub fn parse_time(text: &str) -> Result<Timestamp, String> {
    text.trim()
        .parse::<Timestamp>()
        .map_err(|e| format!("{text:?} is not an RFC 3339 time such as 2026-12-01T09:00:00Z: {e}"))
}

/// `ts` rounded down to a whole second (for past points such as `startedAt`).
pub fn floor_second(ts: Timestamp) -> Timestamp {
    let secs = if ts.subsec_nanosecond() < 0 {
        ts.as_second() - 1
    } else {
        ts.as_second()
    };
    Timestamp::from_second(secs).unwrap_or(ts)
}

/// `ts` rounded up to a whole second (for future points such as `wakeAt`: never early).
pub fn ceil_second(ts: Timestamp) -> Timestamp {
    let secs = if ts.subsec_nanosecond() > 0 {
        ts.as_second() + 1
    } else {
        ts.as_second()
    };
    Timestamp::from_second(secs).unwrap_or(ts)
}

/// `start + d`, rounded up to a whole second, saturating at the largest timestamp.
pub fn after(start: Timestamp, d: Duration) -> Timestamp {
    ceil_second(start.saturating_add(d).unwrap_or(Timestamp::MAX))
}

/// A `metav1.Time` for `ts` rounded down to a whole second.
pub fn past(ts: Timestamp) -> Time {
    Time(floor_second(ts))
}

/// Whether a recorded time has come.
pub fn is_due(at: &Option<Time>, now: Timestamp) -> bool {
    at.as_ref().is_some_and(|t| t.0 <= now)
}

/// The earlier of two optional times.
pub fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("72h"), Ok(Duration::from_secs(72 * 3600)));
    }

    #[test]
    fn refuses_bad_durations() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert!(matches!(
            parse_duration("-5s"),
            Err(DurationError::Negative(_))
        ));
        for bad in ["5", "s", "5x", "1.s", "5 s", "+5s", "0", "1d", "abc"] {
            assert!(
                matches!(parse_duration(bad), Err(DurationError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_duration("99999999999999999999h"),
            Err(DurationError::TooLong(_))
        ));
        assert!(matches!(
            parse_duration("1000000h"),
            Err(DurationError::TooLong(_))
        ));
    }

    #[test]
    fn rounds_future_up_and_past_down() {
        let t: Timestamp = "2026-01-01T00:00:00.2Z".parse().unwrap();
        assert_eq!(
            ceil_second(t),
            "2026-01-01T00:00:01Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(
            floor_second(t),
            "2026-01-01T00:00:00Z".parse::<Timestamp>().unwrap()
        );
        let whole: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(ceil_second(whole), whole);
        assert_eq!(
            after(t, Duration::from_secs(30)),
            "2026-01-01T00:00:31Z".parse::<Timestamp>().unwrap()
        );
    }

    #[test]
    fn parses_rfc3339() {
        assert!(parse_time("2026-12-01T09:00:00Z").is_ok());
        assert!(parse_time("2026-12-01T09:00:00+02:00").is_ok());
        assert!(parse_time("tomorrow").is_err());
    }
}
