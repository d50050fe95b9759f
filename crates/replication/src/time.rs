//! Timestamps with .NET `DateTimeOffset` precision and its two text forms.
//!
//! The reference implementation writes instants in two shapes: JSON uses the
//! System.Text.Json form (fraction trimmed of trailing zeros, no fraction at
//! whole seconds) and the protobuf contract and SQLite columns use the .NET
//! round-trip format `"O"` (always seven fractional digits). Both are always
//! written with an explicit `+00:00` offset. [`Timestamp`] stores an instant as
//! 100-nanosecond ticks since `0001-01-01T00:00:00Z`, exactly the range and
//! resolution of `DateTimeOffset`, so that both forms round-trip losslessly.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TICKS_PER_SECOND: i64 = 10_000_000;
const TICKS_PER_MINUTE: i64 = 60 * TICKS_PER_SECOND;
const TICKS_PER_DAY: i64 = 86_400 * TICKS_PER_SECOND;
/// Ticks at `1970-01-01T00:00:00Z`.
const UNIX_EPOCH_TICKS: i64 = 621_355_968_000_000_000;
/// Ticks at `9999-12-31T23:59:59.9999999Z`, the largest .NET instant.
const MAX_TICKS: i64 = 3_155_378_975_999_999_999;
/// Days from `0001-01-01` to `1970-01-01`.
const DAYS_TO_UNIX_EPOCH: i64 = 719_162;
/// The largest offset .NET accepts, in minutes (14 hours).
const MAX_OFFSET_MINUTES: i64 = 14 * 60;

/// An instant in UTC with 100 ns resolution, in the range of .NET
/// `DateTimeOffset` (`0001-01-01` to `9999-12-31`).
///
/// Ordering and equality compare instants. Text forms are always UTC with an
/// explicit `+00:00` offset; [`Timestamp::parse`] accepts any offset and
/// converts to UTC.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    ticks: i64,
}

/// Why a text could not be read as a [`Timestamp`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid timestamp {input:?}: {reason}")]
pub struct TimestampError {
    input: String,
    reason: &'static str,
}

impl TimestampError {
    fn new(input: &str, reason: &'static str) -> Self {
        const MAX_ECHO: usize = 64;
        let input = match input.char_indices().nth(MAX_ECHO) {
            Some((cut, _)) => format!("{}…", &input[..cut]),
            None => input.to_owned(),
        };
        Self { input, reason }
    }
}

impl Timestamp {
    /// `0001-01-01T00:00:00+00:00`, .NET `default(DateTimeOffset)`.
    pub const MIN: Timestamp = Timestamp { ticks: 0 };
    /// `9999-12-31T23:59:59.9999999+00:00`.
    pub const MAX: Timestamp = Timestamp { ticks: MAX_TICKS };
    /// `1970-01-01T00:00:00+00:00`.
    pub const UNIX_EPOCH: Timestamp = Timestamp {
        ticks: UNIX_EPOCH_TICKS,
    };

    /// The instant `ticks` × 100 ns after `0001-01-01T00:00:00Z`, or `None`
    /// outside the .NET range.
    pub const fn from_ticks(ticks: i64) -> Option<Self> {
        if ticks < 0 || ticks > MAX_TICKS {
            None
        } else {
            Some(Self { ticks })
        }
    }

    /// 100 ns ticks since `0001-01-01T00:00:00Z` (.NET `UtcTicks`).
    pub const fn ticks(self) -> i64 {
        self.ticks
    }

    /// The current time, truncated to 100 ns.
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now()).unwrap_or(Self::MAX)
    }

    /// Converts a [`SystemTime`], or `None` outside the .NET range.
    pub fn from_system_time(time: SystemTime) -> Option<Self> {
        let ticks = match time.duration_since(UNIX_EPOCH) {
            Ok(after) => UNIX_EPOCH_TICKS.checked_add(duration_ticks(after)?)?,
            Err(before) => UNIX_EPOCH_TICKS.checked_sub(duration_ticks(before.duration())?)?,
        };
        Self::from_ticks(ticks)
    }

    /// Milliseconds since the Unix epoch (negative before 1970).
    pub const fn unix_millis(self) -> i64 {
        (self.ticks - UNIX_EPOCH_TICKS).div_euclid(TICKS_PER_SECOND / 1000)
    }

    /// The instant `millis` milliseconds after the Unix epoch, or `None`
    /// outside the .NET range.
    pub fn from_unix_millis(millis: i64) -> Option<Self> {
        let ticks = millis.checked_mul(TICKS_PER_SECOND / 1000)?;
        Self::from_ticks(ticks.checked_add(UNIX_EPOCH_TICKS)?)
    }

    /// Time elapsed from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        let ticks = self.ticks.saturating_sub(earlier.ticks).max(0);
        let ticks = ticks.unsigned_abs();
        Duration::new(
            ticks / TICKS_PER_SECOND.unsigned_abs(),
            u32::try_from((ticks % TICKS_PER_SECOND.unsigned_abs()) * 100).unwrap_or(0),
        )
    }

    /// The .NET round-trip form (`"O"`): always seven fractional digits,
    /// e.g. `2025-11-27T18:49:03.4567890+00:00`. This is the form of the
    /// protobuf `timestamp` field and of the SQLite `timestamp` column.
    pub fn round_trip_text(self) -> TimestampText {
        self.render(true)
    }

    /// The System.Text.Json form: trailing zeros of the fraction trimmed
    /// and no fraction at whole seconds, e.g. `2025-11-27T18:49:03.45+00:00`
    /// or `2025-11-27T18:49:03+00:00`. This is the form of every JSON
    /// document of the reference format.
    pub fn json_text(self) -> TimestampText {
        self.render(false)
    }

    /// The round-trip form as a new string; see [`Timestamp::round_trip_text`].
    pub fn to_round_trip_string(self) -> String {
        self.round_trip_text().as_str().to_owned()
    }

    /// The JSON form as a new string; see [`Timestamp::json_text`].
    pub fn to_json_string(self) -> String {
        self.json_text().as_str().to_owned()
    }

    fn render(self, full_fraction: bool) -> TimestampText {
        let days = self.ticks.div_euclid(TICKS_PER_DAY);
        let in_day = self.ticks.rem_euclid(TICKS_PER_DAY);
        let (year, month, day) = civil_from_days(days - DAYS_TO_UNIX_EPOCH);
        let seconds = in_day / TICKS_PER_SECOND;
        let fraction = in_day % TICKS_PER_SECOND;
        let mut buf = TimestampText::default();
        buf.number(year, 4);
        buf.byte(b'-');
        buf.number(month, 2);
        buf.byte(b'-');
        buf.number(day, 2);
        buf.byte(b'T');
        buf.number(seconds / 3600, 2);
        buf.byte(b':');
        buf.number(seconds / 60 % 60, 2);
        buf.byte(b':');
        buf.number(seconds % 60, 2);
        if full_fraction || fraction != 0 {
            buf.byte(b'.');
            let mut digits = 7;
            let mut value = fraction;
            if !full_fraction {
                while value % 10 == 0 {
                    value /= 10;
                    digits -= 1;
                }
            }
            buf.number(value, digits);
        }
        for &b in b"+00:00" {
            buf.byte(b);
        }
        buf
    }

    /// Reads an ISO 8601 instant as System.Text.Json and .NET round-trip
    /// parsing accept it: `YYYY-MM-DD`, optionally followed by `THH:MM`,
    /// `:SS`, a fraction of any length (digits past the seventh are
    /// truncated) and an offset (`Z` or `±HH:MM`). Without an offset the
    /// instant is taken as UTC. The result is converted to UTC.
    ///
    /// # Errors
    ///
    /// [`TimestampError`] names the input and what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, TimestampError> {
        let err = |reason| TimestampError::new(text, reason);
        let mut p = Cursor::new(text.as_bytes());
        let year = p
            .digits(4)
            .ok_or_else(|| err("expected a four-digit year"))?;
        p.expect(b'-')
            .ok_or_else(|| err("expected '-' after the year"))?;
        let month = p
            .digits(2)
            .ok_or_else(|| err("expected a two-digit month"))?;
        p.expect(b'-')
            .ok_or_else(|| err("expected '-' after the month"))?;
        let day = p.digits(2).ok_or_else(|| err("expected a two-digit day"))?;
        if year < 1 {
            return Err(err("year must be 0001 or later"));
        }
        if !(1..=12).contains(&month) {
            return Err(err("month out of range"));
        }
        if day < 1 || day > days_in_month(year, month) {
            return Err(err("day out of range"));
        }
        let mut local = (days_from_civil(year, month, day) + DAYS_TO_UNIX_EPOCH) * TICKS_PER_DAY;
        if p.expect(b'T').is_some() {
            let hour = p
                .digits(2)
                .ok_or_else(|| err("expected a two-digit hour"))?;
            p.expect(b':')
                .ok_or_else(|| err("expected ':' after the hour"))?;
            let minute = p
                .digits(2)
                .ok_or_else(|| err("expected two-digit minutes"))?;
            let mut second = 0;
            let mut fraction = 0;
            if p.expect(b':').is_some() {
                second = p
                    .digits(2)
                    .ok_or_else(|| err("expected two-digit seconds"))?;
                if p.expect(b'.').is_some() {
                    fraction = p
                        .fraction()
                        .ok_or_else(|| err("expected fraction digits"))?;
                }
            }
            if hour > 23 || minute > 59 || second > 59 {
                return Err(err("time of day out of range"));
            }
            local += (hour * 3600 + minute * 60 + second) * TICKS_PER_SECOND + fraction;
            match p.peek() {
                None => {}
                Some(b'Z') => {
                    p.advance();
                }
                Some(sign @ (b'+' | b'-')) => {
                    p.advance();
                    let oh = p.digits(2).ok_or_else(|| err("expected offset hours"))?;
                    p.expect(b':')
                        .ok_or_else(|| err("expected ':' in the offset"))?;
                    let om = p.digits(2).ok_or_else(|| err("expected offset minutes"))?;
                    let minutes = oh * 60 + om;
                    if om > 59 || minutes > MAX_OFFSET_MINUTES {
                        return Err(err("offset out of range"));
                    }
                    let offset = minutes * TICKS_PER_MINUTE;
                    local = if sign == b'+' {
                        local - offset
                    } else {
                        local + offset
                    };
                }
                Some(_) => return Err(err("unexpected character after the time")),
            }
        }
        if p.peek().is_some() {
            return Err(err("unexpected trailing characters"));
        }
        Self::from_ticks(local).ok_or_else(|| err("instant outside 0001-01-01..9999-12-31 UTC"))
    }
}

/// A timestamp's text, formatted on the stack (at most 33 ASCII bytes).
#[derive(Clone, Copy)]
pub struct TimestampText {
    bytes: [u8; 33],
    len: usize,
}

impl Default for TimestampText {
    fn default() -> Self {
        Self {
            bytes: [0; 33],
            len: 0,
        }
    }
}

impl TimestampText {
    fn byte(&mut self, byte: u8) {
        self.bytes[self.len] = byte;
        self.len += 1;
    }

    /// Writes `value` (non-negative) zero-padded to `width` digits.
    fn number(&mut self, mut value: i64, width: usize) {
        for i in (0..width).rev() {
            self.bytes[self.len + i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
        self.len += width;
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and punctuation are ever written.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

fn duration_ticks(d: Duration) -> Option<i64> {
    let ticks = d.as_nanos() / 100;
    i64::try_from(ticks).ok()
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn advance(&mut self) {
        self.pos += 1;
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek() == Some(byte)).then(|| self.advance())
    }

    fn digits(&mut self, count: usize) -> Option<i64> {
        let slice = self.bytes.get(self.pos..self.pos + count)?;
        let mut value = 0i64;
        for &b in slice {
            if !b.is_ascii_digit() {
                return None;
            }
            value = value * 10 + i64::from(b - b'0');
        }
        self.pos += count;
        Some(value)
    }

    /// A fraction of a second in ticks: the first seven digits count, the
    /// rest are truncated.
    fn fraction(&mut self) -> Option<i64> {
        let start = self.pos;
        let mut value = 0i64;
        while let Some(b) = self.peek().filter(u8::is_ascii_digit) {
            if self.pos - start < 7 {
                value = value * 10 + i64::from(b - b'0');
            }
            self.advance();
        }
        let used = (self.pos - start).min(7);
        if used == 0 {
            return None;
        }
        Some(value * 10i64.pow(7 - used as u32))
    }
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H.
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl std::ops::Deref for TimestampText {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for TimestampText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for TimestampText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Timestamp {
    /// The JSON form, e.g. `2025-11-27T18:49:03.45+00:00`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.json_text())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({})", self.round_trip_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(text: &str) -> Timestamp {
        Timestamp::parse(text).unwrap()
    }

    #[test]
    fn writes_both_reference_forms() {
        let t = ts("2025-11-27T18:49:03.4567891+00:00");
        assert_eq!(t.to_json_string(), "2025-11-27T18:49:03.4567891+00:00");
        assert_eq!(
            t.to_round_trip_string(),
            "2025-11-27T18:49:03.4567891+00:00"
        );
        let t = ts("2025-11-27T18:49:03.4567890+00:00");
        assert_eq!(t.to_json_string(), "2025-11-27T18:49:03.456789+00:00");
        assert_eq!(
            t.to_round_trip_string(),
            "2025-11-27T18:49:03.4567890+00:00"
        );
        let t = ts("2025-11-27T18:49:03+00:00");
        assert_eq!(t.to_json_string(), "2025-11-27T18:49:03+00:00");
        assert_eq!(
            t.to_round_trip_string(),
            "2025-11-27T18:49:03.0000000+00:00"
        );
    }

    #[test]
    fn extremes_match_dotnet() {
        assert_eq!(Timestamp::MIN.to_json_string(), "0001-01-01T00:00:00+00:00");
        assert_eq!(
            Timestamp::MAX.to_round_trip_string(),
            "9999-12-31T23:59:59.9999999+00:00"
        );
        assert_eq!(
            Timestamp::UNIX_EPOCH.to_json_string(),
            "1970-01-01T00:00:00+00:00"
        );
        assert_eq!(ts("9999-12-31T23:59:59.9999999Z"), Timestamp::MAX);
        // .NET: new DateTime(2000, 1, 1).Ticks
        assert_eq!(ts("2000-01-01T00:00:00Z").ticks(), 630_822_816_000_000_000);
    }

    #[test]
    fn parses_offsets_into_utc() {
        assert_eq!(ts("2025-11-27T20:49:03+02:00"), ts("2025-11-27T18:49:03Z"));
        assert_eq!(
            ts("2025-11-27T17:19:03-01:30"),
            ts("2025-11-27T18:49:03+00:00")
        );
        assert_eq!(ts("2025-11-27"), ts("2025-11-27T00:00:00Z"));
        assert_eq!(ts("2025-11-27T18:49"), ts("2025-11-27T18:49:00Z"));
        assert_eq!(
            ts("2025-11-27T18:49:03.123456789Z"),
            ts("2025-11-27T18:49:03.1234567Z")
        );
        assert_eq!(
            ts("2024-02-29T00:00:00Z").to_json_string(),
            "2024-02-29T00:00:00+00:00"
        );
    }

    #[test]
    fn rejects_malformed_text_with_a_reason() {
        for bad in [
            "",
            "2025",
            "2025-13-01",
            "2025-02-30",
            "2023-02-29",
            "0000-01-01",
            "2025-11-27T24:00:00Z",
            "2025-11-27T18:49:03.Z",
            "2025-11-27T18:49:03+15:00",
            "2025-11-27T18:49:03+00:00 ",
            "2025-11-27T18:49:03X",
            "0001-01-01T00:00:00+00:01",
            "9999-12-31T23:59:59-00:01",
            "２０２５-11-27",
        ] {
            let err = Timestamp::parse(bad).unwrap_err();
            assert!(!err.to_string().is_empty(), "{bad}");
        }
    }

    #[test]
    fn unix_conversions() {
        let t = Timestamp::from_unix_millis(1_764_269_343_456).unwrap();
        assert_eq!(t.to_json_string(), "2025-11-27T18:49:03.456+00:00");
        assert_eq!(t.unix_millis(), 1_764_269_343_456);
        assert_eq!(Timestamp::MIN.unix_millis(), -62_135_596_800_000);
        let later = Timestamp::from_ticks(t.ticks() + 15_000_000).unwrap();
        assert_eq!(
            later.saturating_duration_since(t),
            Duration::from_millis(1500)
        );
        assert_eq!(t.saturating_duration_since(later), Duration::ZERO);
    }

    proptest! {
        #[test]
        fn both_forms_round_trip(ticks in 0..=MAX_TICKS) {
            let t = Timestamp::from_ticks(ticks).unwrap();
            prop_assert_eq!(Timestamp::parse(&t.to_json_string()).unwrap(), t);
            prop_assert_eq!(Timestamp::parse(&t.to_round_trip_string()).unwrap(), t);
            prop_assert_eq!(t.to_round_trip_string().len(), 33);
        }

        #[test]
        fn civil_conversion_round_trips(days in -719_162i64..=2_932_896) {
            let (y, m, d) = civil_from_days(days);
            prop_assert!((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m));
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,40}") {
            let _ = Timestamp::parse(&text);
        }
    }
}
