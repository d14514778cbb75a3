//! Calendar arithmetic for workflow delays and schedules.
//!
//! Workflows wait ("3 days, then 09:00 on a weekday") and fire on schedules
//! ("every Monday at 08:30"). Both are about the tenant's wall clock, not
//! about UTC, so they are computed in the tenant's IANA time zone with `jiff`
//! and handed back as epoch milliseconds, the engine's one time type (see
//! [`crate::engine::Clock`]).
//!
//! Layout:
//! - units and text parsers: [`parse_duration`] (exact milliseconds, for
//!   plain waits such as retry backoff), [`parse_span`] (calendar days plus
//!   exact time, for delay steps), [`parse_time_of_day`],
//!   [`parse_time_zone`], [`parse_weekday`];
//! - [`DelaySpec`] and [`delay_end`]: when a delay step ends;
//! - [`ScheduleSpec`] and [`next_fire`]: when a recurring schedule fires next;
//! - [`format_local`]: an instant as local text for logs and API output.
//!
//! Daylight saving:
//! - whole days ("5d", "1w") are *calendar* days in the zone, so a delay of
//!   "1d" started at 09:00 ends at 09:00 even across a change (23 or 25 hours
//!   later); hours, minutes and seconds are *exact* elapsed time;
//! - a wall-clock target that does not exist (the spring-forward gap) resolves
//!   to the later valid instant (02:30 in a 02:00-03:00 gap becomes 03:30),
//!   one that exists twice (fall back) to the earlier of the two. This is
//!   jiff's "compatible" disambiguation, the rule of RFC 5545, Temporal and
//!   java.time, so schedules agree with calendar apps.
//!
//! Results that cannot be represented (beyond jiff's years -9999..=9999, a
//! hand-built out-of-range [`TimeOfDay`]) come back as [`NEVER_MS`]: these
//! functions feed timers, which cannot take an error, and a timer that never
//! fires is visible in the UI, whereas one that fires at once sends mail.

use std::fmt;

use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

/// Epoch milliseconds per second (kept private: the public units are the
/// ones callers build delays from).
const SECOND_MS: i64 = 1_000;
/// Epoch milliseconds per minute.
pub const MINUTE_MS: i64 = 60 * SECOND_MS;
/// Epoch milliseconds per hour.
pub const HOUR_MS: i64 = 60 * MINUTE_MS;
/// Epoch milliseconds per (24-hour) day.
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// What [`delay_end`] and [`next_fire`] return when the answer cannot be
/// represented: later than any real instant, so a timer waiting for it never
/// fires.
pub const NEVER_MS: i64 = i64::MAX;

/// Shortest accepted duration. A zero or sub-second wait is almost always a
/// typo ("0d") and, as a retry backoff, would spin against a failing plugin.
const MIN_DURATION_MS: i64 = SECOND_MS;
/// Longest accepted duration: a year and a day covers "on the anniversary",
/// while a typo such as "3000d" would otherwise park a contact for a decade.
const MAX_DURATION_MS: i64 = 366 * DAY_MS;
/// Longest text the parsers look at. Every valid input is far shorter; the
/// limit keeps a hostile multi-megabyte field from being scanned, or copied.
const MAX_TEXT_LEN: usize = 64;
/// How much of a bad input an error message quotes, so that errors stay one
/// readable line in logs and API responses.
const MAX_SHOWN_CHARS: usize = 40;

/// Units of [`parse_span`], from largest to smallest (the order they must be
/// written in): letter, calendar days, exact milliseconds.
const UNITS: [(char, i64, i64); 5] =
    [('w', 7, 0), ('d', 1, 0), ('h', 0, HOUR_MS), ('m', 0, MINUTE_MS), ('s', 0, SECOND_MS)];

/// Weekday names [`parse_weekday`] accepts (any case).
const WEEKDAYS: [(&str, &str, Weekday); 7] = [
    ("mon", "monday", Weekday::Monday),
    ("tue", "tuesday", Weekday::Tuesday),
    ("wed", "wednesday", Weekday::Wednesday),
    ("thu", "thursday", Weekday::Thursday),
    ("fri", "friday", Weekday::Friday),
    ("sat", "saturday", Weekday::Saturday),
    ("sun", "sunday", Weekday::Sunday),
];

/// `text` quoted for an error message, cut to [`MAX_SHOWN_CHARS`].
fn shown(text: &str) -> String {
    match text.char_indices().nth(MAX_SHOWN_CHARS) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    }
}

/// A parsed duration split into calendar days and exact milliseconds.
///
/// Kept apart because they behave differently across daylight-saving
/// changes: days keep the wall time, milliseconds are elapsed time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    /// Calendar days in the zone (weeks count as 7).
    pub days: i64,
    /// Exact milliseconds (hours, minutes and seconds), applied after `days`.
    pub ms: i64,
}

/// Parse a duration such as "30s", "15m", "2h", "5d", "1w", or a sum of
/// them from the largest unit to the smallest, each at most once ("1d12h",
/// "2h30m", "1w 2d"), into calendar days and exact time: "1w2d3h" is 9 days
/// and 3 hours. "48h" stays 48 exact hours; write "2d" for calendar days.
///
/// The total, counting a day as 24 hours, must be at least 1 s and at most
/// 366 days. Units are lower case only, so "M" is never taken for months.
pub fn parse_span(text: &str) -> Result<Span, String> {
    let trimmed = text.trim();
    let bad = |why: &str| format!("invalid duration {}: {why}", shown(text));
    if trimmed.is_empty() {
        return Err(bad("expected e.g. \"15m\", \"2h30m\" or \"5d\""));
    }
    if trimmed.len() > MAX_TEXT_LEN {
        return Err(bad(&format!("longer than {MAX_TEXT_LEN} characters")));
    }
    let too_long = || bad("longer than 366 days");
    let mut span = Span::default();
    // Index into UNITS of the last unit seen: units must strictly descend,
    // which rejects both repeats ("1h1h") and likely typos ("30m2h").
    let mut last_unit: Option<usize> = None;
    let mut rest = trimmed;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let digits_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits_len == 0 {
            return Err(bad(&format!("expected a number at {}", shown(rest))));
        }
        let (digits, after) = rest.split_at(digits_len);
        let Some(letter) = after.chars().next().filter(|c| !c.is_whitespace()) else {
            return Err(bad(&format!("missing unit after {digits} (use w, d, h, m or s)")));
        };
        let Some(index) = UNITS.iter().position(|(unit, _, _)| *unit == letter) else {
            return Err(bad(&format!("unknown unit {letter:?} (use w, d, h, m or s)")));
        };
        if last_unit.is_some_and(|last| last >= index) {
            return Err(bad("units must go from largest to smallest (w, d, h, m, s), each at most once"));
        }
        last_unit = Some(index);
        // Only ASCII digits reach here, so parsing fails only on overflow.
        let count: i64 = digits.parse().map_err(|_| too_long())?;
        let (_, unit_days, unit_ms) = UNITS[index];
        let days = count.checked_mul(unit_days).and_then(|d| d.checked_add(span.days));
        let ms = count.checked_mul(unit_ms).and_then(|m| m.checked_add(span.ms));
        let (Some(days), Some(ms)) = (days, ms) else { return Err(too_long()) };
        span = Span { days, ms };
        rest = &after[letter.len_utf8()..];
    }
    let total = span.days.checked_mul(DAY_MS).and_then(|d| d.checked_add(span.ms)).ok_or_else(too_long)?;
    if total < MIN_DURATION_MS {
        return Err(bad("shorter than 1 s"));
    }
    if total > MAX_DURATION_MS {
        return Err(too_long());
    }
    Ok(span)
}

/// Parse a duration (same syntax and limits as [`parse_span`]) into exact
/// milliseconds, counting a day as 24 hours: for plain waits such as retry
/// backoff, where the wall clock does not matter.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    // parse_span has bounded the total, so this cannot overflow.
    parse_span(text).map(|span| span.days * DAY_MS + span.ms)
}

/// A time of day on the 24-hour wall clock, to the minute.
///
/// The fields are public for building literals; [`parse_time_of_day`] is
/// the checked way in. A value out of range (hour 24, minute 60) is a time
/// that never comes: delays and schedules using it give [`NEVER_MS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeOfDay {
    /// Hour, 0..=23.
    pub hour: i8,
    /// Minute, 0..=59.
    pub minute: i8,
}

impl TimeOfDay {
    /// The civil time, or `None` when a field is out of range.
    fn civil(self) -> Option<Time> {
        Time::new(self.hour, self.minute, 0, 0).ok()
    }
}

impl fmt::Display for TimeOfDay {
    /// "HH:MM", which [`parse_time_of_day`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)
    }
}

/// Parse a 24-hour time of day, "09:00" or "9:05": one or two hour digits,
/// exactly two minute digits.
pub fn parse_time_of_day(text: &str) -> Result<TimeOfDay, String> {
    let bad = |why: &str| format!("invalid time of day {}: {why}", shown(text));
    let trimmed = text.trim();
    let digits =
        |part: &str, max_len: usize| (1..=max_len).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit());
    let Some((hour, minute)) = trimmed.split_once(':').filter(|(h, m)| digits(h, 2) && m.len() == 2 && digits(m, 2))
    else {
        return Err(bad("expected HH:MM on the 24-hour clock, e.g. \"09:00\""));
    };
    // At most two ASCII digits each, so both parse and fit in i8.
    let (Ok(hour), Ok(minute)) = (hour.parse::<i8>(), minute.parse::<i8>()) else {
        return Err(bad("expected HH:MM on the 24-hour clock, e.g. \"09:00\""));
    };
    if hour > 23 || minute > 59 {
        return Err(bad("hour must be 0-23 and minute 0-59"));
    }
    Ok(TimeOfDay { hour, minute })
}

/// Look up an IANA time zone by name ("UTC", "Europe/Berlin"; ASCII case is
/// ignored), from the database bundled into the binary so that every host
/// computes the same schedules whatever its OS has installed.
pub fn parse_time_zone(name: &str) -> Result<TimeZone, String> {
    let trimmed = name.trim();
    let bad = |why: &str| format!("unknown time zone {}: {why}", shown(name));
    if trimmed.is_empty() || trimmed.len() > MAX_TEXT_LEN {
        return Err(bad("expected an IANA name such as \"Europe/Berlin\""));
    }
    TimeZone::get(trimmed).map_err(|_| bad("expected an IANA name such as \"Europe/Berlin\""))
}

/// Parse a weekday: "mon".."sun" or the full English name, any case.
pub fn parse_weekday(text: &str) -> Result<Weekday, String> {
    let trimmed = text.trim();
    WEEKDAYS
        .iter()
        .find(|(short, long, _)| trimmed.eq_ignore_ascii_case(short) || trimmed.eq_ignore_ascii_case(long))
        .map(|(_, _, day)| *day)
        .ok_or_else(|| format!("unknown weekday {}: expected mon, tue, ... sun or a full name", shown(text)))
}

/// What a delay step waits for. [`delay_end`] applies the parts in this
/// order:
///
/// 1. `span`: first its calendar days in the zone (same wall time), then its
///    exact milliseconds;
/// 2. `business_days` working days (Monday to Friday), skipping weekends:
///    each working day moves to the next Monday-to-Friday date at the same
///    wall time, so Friday + 1 is Monday and Thursday + 2 is Monday; from a
///    weekend, the first working day counts as the first (Saturday + 1 and
///    Sunday + 1 are Monday, Saturday + 2 is Tuesday). Public holidays are
///    not known here and count as working days;
/// 3. `until`: move forward to the next time the wall clock shows it: today
///    if that is still ahead, else tomorrow. A delay that is only `until`
///    never ends at the instant it starts ("until 09:00" at 09:00 sharp is
///    tomorrow's 09:00: today's is not ahead, and a wait step that does not
///    wait would send the next message at once); after a span or business
///    days, the instant reached may itself be the target ("1d, until 09:00"
///    from 09:00 ends at 09:00 the next day, not the day after);
/// 4. `weekdays_only`: a result on Saturday or Sunday moves to Monday, at the
///    same wall time, or at `until` when that is set.
///
/// Negative parts of `span` (possible only by building one by hand) are
/// ignored: a delay never goes back in time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DelaySpec {
    /// Calendar days, then exact time, to wait first.
    pub span: Span,
    /// Working days (Monday to Friday) to wait next.
    pub business_days: u32,
    /// Then wait until the wall clock shows this time.
    pub until: Option<TimeOfDay>,
    /// Finally, move a result that falls on a weekend to Monday.
    pub weekdays_only: bool,
}

/// When a delay that starts at `start_ms` ends, with wall-clock parts read
/// in `tz` (see [`DelaySpec`] for the order and the module docs for
/// daylight saving). Never earlier than `start_ms`; [`NEVER_MS`] when the
/// end cannot be represented.
pub fn delay_end(start_ms: i64, spec: &DelaySpec, tz: &TimeZone) -> i64 {
    match try_delay_end(start_ms, spec, tz) {
        // Every step only moves forward; the max is the guarantee spelled
        // out, so a future step that slips cannot send a contact back.
        Some(end) => end.max(start_ms),
        None => NEVER_MS,
    }
}

/// [`delay_end`], with `None` for "cannot be represented".
fn try_delay_end(start_ms: i64, spec: &DelaySpec, tz: &TimeZone) -> Option<i64> {
    let mut at = Timestamp::from_millisecond(start_ms).ok()?;
    if spec.span.days > 0 {
        let local = tz.to_datetime(at);
        let date = local.date().checked_add(jiff::Span::new().try_days(spec.span.days).ok()?).ok()?;
        at = resolve(date.to_datetime(local.time()), tz)?;
    }
    if spec.span.ms > 0 {
        at = at.checked_add(SignedDuration::from_millis(spec.span.ms)).ok()?;
    }
    if spec.business_days > 0 {
        let local = tz.to_datetime(at);
        let date = add_business_days(local.date(), spec.business_days)?;
        at = resolve(date.to_datetime(local.time()), tz)?;
    }
    let until = match spec.until {
        Some(until) => Some(until.civil()?),
        None => None,
    };
    if let Some(until) = until {
        // Nothing moved it: `until` alone looks strictly ahead (rule 3).
        if at.as_millisecond() == start_ms {
            at = at.checked_add(SignedDuration::from_millis(1)).ok()?;
        }
        at = next_wall_time(at, until, tz)?;
    }
    if spec.weekdays_only {
        let local = tz.to_datetime(at);
        let to_monday = match local.weekday() {
            Weekday::Saturday => 2,
            Weekday::Sunday => 1,
            _ => 0,
        };
        if to_monday > 0 {
            let date = local.date().checked_add(jiff::Span::new().days(to_monday)).ok()?;
            at = resolve(date.to_datetime(until.unwrap_or(local.time())), tz)?;
        }
    }
    Some(at.as_millisecond())
}

/// `date` plus `count` working days, skipping weekends (rule on
/// [`DelaySpec`]); `None` past the end of the calendar.
fn add_business_days(mut date: Date, count: u32) -> Option<Date> {
    let mut left = i64::from(count);
    // From a weekend the coming Monday is the first working day.
    let to_monday = match date.weekday() {
        Weekday::Saturday => 2,
        Weekday::Sunday => 1,
        _ => 0,
    };
    if to_monday > 0 && left > 0 {
        date = date.checked_add(jiff::Span::new().days(to_monday)).ok()?;
        left -= 1;
    }
    // From a working day, five working days are exactly one week: jump whole
    // weeks so that a count of billions is arithmetic, not billions of steps.
    date = date.checked_add(jiff::Span::new().try_days((left / 5).checked_mul(7)?).ok()?).ok()?;
    for _ in 0..left % 5 {
        date = date.tomorrow().ok()?;
        while matches!(date.weekday(), Weekday::Saturday | Weekday::Sunday) {
            date = date.tomorrow().ok()?;
        }
    }
    Some(date)
}

/// The first instant at or after `at` when the wall clock in `tz` shows
/// `time` (resolved "compatibly" on days when it shows it zero or two times).
fn next_wall_time(at: Timestamp, time: Time, tz: &TimeZone) -> Option<Timestamp> {
    let mut date = tz.to_datetime(at).date();
    // Today, else tomorrow; the third try is for zones that skipped a whole
    // calendar day (Pacific/Apia dropped 2011-12-30).
    for _ in 0..3 {
        let candidate = resolve(date.to_datetime(time), tz)?;
        if candidate >= at {
            return Some(candidate);
        }
        date = date.tomorrow().ok()?;
    }
    None
}

/// The instant the wall clock in `tz` shows `local`: the later one after a
/// spring-forward gap, the earlier one in a fall-back fold.
fn resolve(local: DateTime, tz: &TimeZone) -> Option<Timestamp> {
    tz.to_ambiguous_timestamp(local).compatible().ok()
}

/// A recurring schedule: every day, or only on `weekdays`, at `at` on the
/// tenant's wall clock.
///
/// It fires once per matching calendar day, also on daylight-saving days:
/// in a spring-forward gap at the later valid instant (02:30 becomes 03:30),
/// in a fall-back fold only at the first of the two.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleSpec {
    /// Wall time of each firing.
    pub at: TimeOfDay,
    /// Days it fires on, by local calendar date; empty means every day.
    pub weekdays: Vec<Weekday>,
}

/// The first firing of `spec` strictly after `after_ms`, with wall time and
/// weekdays read in `tz`; [`NEVER_MS`] when it cannot be represented.
pub fn next_fire(after_ms: i64, spec: &ScheduleSpec, tz: &TimeZone) -> i64 {
    try_next_fire(after_ms, spec, tz).unwrap_or(NEVER_MS)
}

/// [`next_fire`], with `None` for "cannot be represented".
fn try_next_fire(after_ms: i64, spec: &ScheduleSpec, tz: &TimeZone) -> Option<i64> {
    let after = Timestamp::from_millisecond(after_ms).ok()?;
    let time = spec.at.civil()?;
    let mut date = tz.to_datetime(after).date();
    // Today may already be past, then a single weekday recurs 7 days later:
    // 8 dates suffice; the spare ones cover a skipped calendar day.
    for _ in 0..10 {
        if spec.weekdays.is_empty() || spec.weekdays.contains(&date.weekday()) {
            let candidate = resolve(date.to_datetime(time), tz)?;
            if candidate > after {
                return Some(candidate.as_millisecond());
            }
        }
        date = date.tomorrow().ok()?;
    }
    None
}

/// `ms` as local date-time text in `tz`, e.g.
/// "2026-11-26T09:00:00+01:00[Europe/Berlin]" (RFC 9557, which jiff and
/// Temporal parse back), for logs and API output. Instants outside the
/// representable range (such as [`NEVER_MS`]) are written as plain numbers.
pub fn format_local(ms: i64, tz: &TimeZone) -> String {
    match Timestamp::from_millisecond(ms) {
        Ok(ts) => ts.to_zoned(tz.clone()).to_string(),
        Err(_) => format!("{ms} ms since the epoch (out of range)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Zoned;

    fn zone(name: &str) -> TimeZone {
        parse_time_zone(name).unwrap()
    }

    /// Epoch ms of an RFC 9557 text such as "2026-11-26T09:00[Europe/Berlin]".
    fn ms(text: &str) -> i64 {
        text.parse::<Zoned>().unwrap().timestamp().as_millisecond()
    }

    fn tod(hour: i8, minute: i8) -> TimeOfDay {
        TimeOfDay { hour, minute }
    }

    fn days(days: i64) -> DelaySpec {
        DelaySpec { span: Span { days, ms: 0 }, ..DelaySpec::default() }
    }

    fn daily(hour: i8, minute: i8) -> ScheduleSpec {
        ScheduleSpec { at: tod(hour, minute), weekdays: vec![] }
    }

    // ---- parsing ----

    #[test]
    fn units_are_epoch_milliseconds() {
        assert_eq!(MINUTE_MS, 60_000);
        assert_eq!(HOUR_MS, 3_600_000);
        assert_eq!(DAY_MS, 86_400_000);
    }

    #[test]
    fn parse_duration_reads_each_unit() {
        assert_eq!(parse_duration("30s"), Ok(30 * SECOND_MS));
        assert_eq!(parse_duration("15m"), Ok(15 * MINUTE_MS));
        assert_eq!(parse_duration("2h"), Ok(2 * HOUR_MS));
        assert_eq!(parse_duration("5d"), Ok(5 * DAY_MS));
        assert_eq!(parse_duration("1w"), Ok(7 * DAY_MS));
    }

    #[test]
    fn parse_duration_adds_up_sums() {
        assert_eq!(parse_duration("1d12h"), Ok(DAY_MS + 12 * HOUR_MS));
        assert_eq!(parse_duration("2h30m"), Ok(2 * HOUR_MS + 30 * MINUTE_MS));
        assert_eq!(parse_duration("1w2d3h4m5s"), Ok(9 * DAY_MS + 3 * HOUR_MS + 4 * MINUTE_MS + 5 * SECOND_MS));
    }

    #[test]
    fn parse_duration_allows_spaces_around_and_between_parts() {
        assert_eq!(parse_duration("  1d 12h "), Ok(DAY_MS + 12 * HOUR_MS));
    }

    #[test]
    fn parse_duration_accepts_large_single_units() {
        assert_eq!(parse_duration("90m"), Ok(90 * MINUTE_MS));
        assert_eq!(parse_duration("48h"), Ok(2 * DAY_MS));
    }

    #[test]
    fn parse_span_keeps_days_as_calendar_days_and_the_rest_exact() {
        assert_eq!(parse_span("1w2d3h"), Ok(Span { days: 9, ms: 3 * HOUR_MS }));
        assert_eq!(parse_span("5d"), Ok(Span { days: 5, ms: 0 }));
        assert_eq!(parse_span("48h"), Ok(Span { days: 0, ms: 48 * HOUR_MS }));
        assert_eq!(parse_span("2h30m"), Ok(Span { days: 0, ms: 2 * HOUR_MS + 30 * MINUTE_MS }));
    }

    #[test]
    fn parse_duration_needs_at_least_one_second() {
        assert_eq!(parse_duration("1s"), Ok(SECOND_MS));
        for zero in ["0s", "0m", "0d", "0w0d"] {
            let err = parse_duration(zero).unwrap_err();
            assert!(err.contains("shorter than 1 s"), "{err}");
        }
    }

    #[test]
    fn parse_duration_allows_at_most_366_days() {
        assert_eq!(parse_duration("366d"), Ok(366 * DAY_MS));
        assert_eq!(parse_duration("52w2d"), Ok(366 * DAY_MS));
        assert_eq!(parse_duration("8784h"), Ok(366 * DAY_MS));
        for long in ["367d", "53w", "366d1s", "8785h", "99999999999999999999d", "9223372036854775807w"] {
            let err = parse_duration(long).unwrap_err();
            assert!(err.contains("longer than 366 days"), "{long}: {err}");
        }
    }

    #[test]
    fn parsing_errors_name_the_bad_text() {
        for bad in ["", "  ", "5", "d", "5x", "1.5h", "-5m", "+5m", "5 d", "h5", "30m2h", "1h1h", "5M", "1d,2h", "5µ"]
        {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad:?}: {err}");
            let err = parse_span(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad:?}: {err}");
        }
        for bad in ["", "9", "24:00", "9:60", "9:5", "09:00:00", "ab:cd", "-1:00", "+9:00", "123:00", "9h"] {
            let err = parse_time_of_day(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad:?}: {err}");
        }
        for bad in ["", "Mars/Olympus", "Europe/Berln", "+25:00"] {
            let err = parse_time_zone(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad:?}: {err}");
        }
        for bad in ["", "mo", "funday", "monday!"] {
            let err = parse_weekday(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad:?}: {err}");
        }
    }

    #[test]
    fn parsing_errors_say_what_was_expected() {
        assert!(parse_duration("5x").unwrap_err().contains("unknown unit 'x'"));
        assert!(parse_duration("5").unwrap_err().contains("missing unit after 5"));
        assert!(parse_duration("30m2h").unwrap_err().contains("largest to smallest"));
        assert!(parse_time_of_day("24:00").unwrap_err().contains("hour must be 0-23"));
    }

    #[test]
    fn parsing_errors_quote_only_the_start_of_overlong_text() {
        let long = "9".repeat(10_000);
        for err in [
            parse_duration(&long).unwrap_err(),
            parse_time_of_day(&long).unwrap_err(),
            parse_time_zone(&long).unwrap_err(),
            parse_weekday(&long).unwrap_err(),
        ] {
            assert!(err.len() < 200, "{err}");
            assert!(err.contains(&"9".repeat(MAX_SHOWN_CHARS)), "{err}");
        }
    }

    #[test]
    fn parse_time_of_day_reads_one_or_two_hour_digits() {
        assert_eq!(parse_time_of_day("09:00"), Ok(tod(9, 0)));
        assert_eq!(parse_time_of_day("9:05"), Ok(tod(9, 5)));
        assert_eq!(parse_time_of_day("0:00"), Ok(tod(0, 0)));
        assert_eq!(parse_time_of_day("23:59"), Ok(tod(23, 59)));
        assert_eq!(parse_time_of_day(" 07:30 "), Ok(tod(7, 30)));
    }

    #[test]
    fn time_of_day_displays_as_it_parses() {
        assert_eq!(tod(9, 5).to_string(), "09:05");
        assert_eq!(parse_time_of_day(&tod(23, 0).to_string()), Ok(tod(23, 0)));
    }

    #[test]
    fn parse_time_zone_finds_iana_names() {
        for name in ["UTC", "Europe/Berlin", "America/New_York", "Asia/Shanghai", "europe/berlin"] {
            assert!(parse_time_zone(name).is_ok(), "{name}");
        }
        assert_eq!(parse_time_zone("Asia/Shanghai").unwrap().iana_name(), Some("Asia/Shanghai"));
    }

    #[test]
    fn parse_weekday_reads_short_and_full_names_in_any_case() {
        assert_eq!(parse_weekday("mon"), Ok(Weekday::Monday));
        assert_eq!(parse_weekday("Monday"), Ok(Weekday::Monday));
        assert_eq!(parse_weekday("tUeSdAy"), Ok(Weekday::Tuesday));
        assert_eq!(parse_weekday("WED"), Ok(Weekday::Wednesday));
        assert_eq!(parse_weekday("thu"), Ok(Weekday::Thursday));
        assert_eq!(parse_weekday("friday"), Ok(Weekday::Friday));
        assert_eq!(parse_weekday(" sat "), Ok(Weekday::Saturday));
        assert_eq!(parse_weekday("SUNDAY"), Ok(Weekday::Sunday));
    }

    // ---- delays ----

    #[test]
    fn an_empty_delay_ends_at_its_start() {
        let start = ms("2026-11-26T09:00[UTC]");
        assert_eq!(delay_end(start, &DelaySpec::default(), &zone("UTC")), start);
    }

    #[test]
    fn five_days_over_the_berlin_spring_change_keep_nine_o_clock() {
        let berlin = zone("Europe/Berlin");
        // Clocks go forward on Sunday 2026-03-29.
        let start = ms("2026-03-27T09:00[Europe/Berlin]");
        let end = delay_end(start, &days(5), &berlin);
        assert_eq!(format_local(end, &berlin), "2026-04-01T09:00:00+02:00[Europe/Berlin]");
        assert_eq!(end - start, 5 * DAY_MS - HOUR_MS);
    }

    #[test]
    fn five_days_over_the_berlin_autumn_change_keep_nine_o_clock() {
        let berlin = zone("Europe/Berlin");
        // Clocks go back on Sunday 2026-10-25.
        let start = ms("2026-10-23T09:00[Europe/Berlin]");
        let end = delay_end(start, &days(5), &berlin);
        assert_eq!(format_local(end, &berlin), "2026-10-28T09:00:00+01:00[Europe/Berlin]");
        assert_eq!(end - start, 5 * DAY_MS + HOUR_MS);
    }

    #[test]
    fn hours_over_a_daylight_saving_change_are_exact_time() {
        let berlin = zone("Europe/Berlin");
        let start = ms("2026-03-28T12:00[Europe/Berlin]");
        let spec = DelaySpec { span: parse_span("24h").unwrap(), ..DelaySpec::default() };
        let end = delay_end(start, &spec, &berlin);
        assert_eq!(end - start, DAY_MS);
        assert_eq!(format_local(end, &berlin), "2026-03-29T13:00:00+02:00[Europe/Berlin]");
    }

    #[test]
    fn span_days_apply_before_its_exact_time() {
        let berlin = zone("Europe/Berlin");
        let start = ms("2026-03-28T09:00[Europe/Berlin]");
        let spec = DelaySpec { span: parse_span("1d12h").unwrap(), ..DelaySpec::default() };
        let end = delay_end(start, &spec, &berlin);
        assert_eq!(format_local(end, &berlin), "2026-03-29T21:00:00+02:00[Europe/Berlin]");
    }

    #[test]
    fn a_day_landing_in_the_spring_gap_takes_the_later_instant() {
        let new_york = zone("America/New_York");
        // 02:30 does not exist on 2026-03-08 in New York.
        let start = ms("2026-03-07T02:30[America/New_York]");
        let end = delay_end(start, &days(1), &new_york);
        assert_eq!(format_local(end, &new_york), "2026-03-08T03:30:00-04:00[America/New_York]");
    }

    #[test]
    fn until_nine_from_eight_is_the_same_day() {
        let spec = DelaySpec { until: Some(tod(9, 0)), ..DelaySpec::default() };
        let end = delay_end(ms("2026-11-26T08:00[UTC]"), &spec, &zone("UTC"));
        assert_eq!(end, ms("2026-11-26T09:00[UTC]"));
    }

    #[test]
    fn until_nine_from_ten_is_the_next_day() {
        let spec = DelaySpec { until: Some(tod(9, 0)), ..DelaySpec::default() };
        let end = delay_end(ms("2026-11-26T10:00[UTC]"), &spec, &zone("UTC"));
        assert_eq!(end, ms("2026-11-27T09:00[UTC]"));
    }

    #[test]
    fn until_nine_at_nine_waits_for_tomorrows_nine() {
        let spec = DelaySpec { until: Some(tod(9, 0)), ..DelaySpec::default() };
        let start = ms("2026-11-26T09:00[UTC]");
        assert_eq!(delay_end(start, &spec, &zone("UTC")), ms("2026-11-27T09:00[UTC]"));
        assert_eq!(delay_end(start + 1, &spec, &zone("UTC")), ms("2026-11-27T09:00[UTC]"));
        assert_eq!(delay_end(start - 1, &spec, &zone("UTC")), start);
    }

    #[test]
    fn a_day_then_until_nine_from_nine_is_the_next_days_nine() {
        let spec = DelaySpec { span: Span { days: 1, ms: 0 }, until: Some(tod(9, 0)), ..DelaySpec::default() };
        let start = ms("2026-11-23T09:00[Europe/Berlin]");
        assert_eq!(delay_end(start, &spec, &zone("Europe/Berlin")), ms("2026-11-24T09:00[Europe/Berlin]"));
    }

    #[test]
    fn until_reads_the_wall_clock_of_the_zone() {
        let shanghai = zone("Asia/Shanghai");
        let spec = DelaySpec { until: Some(tod(9, 0)), ..DelaySpec::default() };
        // 23:30 UTC is already 07:30 the next morning in Shanghai.
        let end = delay_end(ms("2026-11-25T23:30[UTC]"), &spec, &shanghai);
        assert_eq!(end, ms("2026-11-26T01:00[UTC]"));
        assert_eq!(format_local(end, &shanghai), "2026-11-26T09:00:00+08:00[Asia/Shanghai]");
    }

    #[test]
    fn until_in_the_spring_gap_takes_the_later_instant() {
        let new_york = zone("America/New_York");
        let spec = DelaySpec { until: Some(tod(2, 30)), ..DelaySpec::default() };
        let end = delay_end(ms("2026-03-08T00:00[America/New_York]"), &spec, &new_york);
        assert_eq!(format_local(end, &new_york), "2026-03-08T03:30:00-04:00[America/New_York]");
    }

    #[test]
    fn until_in_the_autumn_fold_takes_the_earlier_instant() {
        let new_york = zone("America/New_York");
        let spec = DelaySpec { until: Some(tod(1, 30)), ..DelaySpec::default() };
        let end = delay_end(ms("2026-11-01T00:00[America/New_York]"), &spec, &new_york);
        assert_eq!(format_local(end, &new_york), "2026-11-01T01:30:00-04:00[America/New_York]");
    }

    #[test]
    fn one_business_day_from_friday_is_monday() {
        let spec = DelaySpec { business_days: 1, ..DelaySpec::default() };
        // 2026-11-27 is a Friday.
        let end = delay_end(ms("2026-11-27T10:00[UTC]"), &spec, &zone("UTC"));
        assert_eq!(end, ms("2026-11-30T10:00[UTC]"));
    }

    #[test]
    fn business_days_from_a_weekend_count_monday_as_the_first() {
        let utc = zone("UTC");
        let one = DelaySpec { business_days: 1, ..DelaySpec::default() };
        let two = DelaySpec { business_days: 2, ..DelaySpec::default() };
        assert_eq!(delay_end(ms("2026-11-28T10:00[UTC]"), &one, &utc), ms("2026-11-30T10:00[UTC]"));
        assert_eq!(delay_end(ms("2026-11-29T10:00[UTC]"), &one, &utc), ms("2026-11-30T10:00[UTC]"));
        assert_eq!(delay_end(ms("2026-11-28T10:00[UTC]"), &two, &utc), ms("2026-12-01T10:00[UTC]"));
    }

    #[test]
    fn business_days_within_and_across_weeks() {
        let utc = zone("UTC");
        let n = |business_days| DelaySpec { business_days, ..DelaySpec::default() };
        // Thursday 2026-11-26.
        let thursday = ms("2026-11-26T10:00[UTC]");
        assert_eq!(delay_end(thursday, &n(1), &utc), ms("2026-11-27T10:00[UTC]"));
        assert_eq!(delay_end(thursday, &n(2), &utc), ms("2026-11-30T10:00[UTC]"));
        assert_eq!(delay_end(thursday, &n(5), &utc), ms("2026-12-03T10:00[UTC]"));
        assert_eq!(delay_end(thursday, &n(7), &utc), ms("2026-12-07T10:00[UTC]"));
    }

    #[test]
    fn business_days_match_counting_day_by_day() {
        let is_weekend = |d: Date| matches!(d.weekday(), Weekday::Saturday | Weekday::Sunday);
        // A Monday, then every weekday through two weeks.
        let monday = jiff::civil::date(2026, 11, 23);
        for offset in 0..14 {
            let start = monday.checked_add(jiff::Span::new().days(offset)).unwrap();
            for count in 0..40u32 {
                let mut naive = start;
                for _ in 0..count {
                    naive = naive.tomorrow().unwrap();
                    while is_weekend(naive) {
                        naive = naive.tomorrow().unwrap();
                    }
                }
                assert_eq!(add_business_days(start, count), Some(naive), "{start} + {count}");
            }
        }
    }

    #[test]
    fn business_days_keep_the_wall_time_across_daylight_saving() {
        let berlin = zone("Europe/Berlin");
        let spec = DelaySpec { business_days: 1, ..DelaySpec::default() };
        let end = delay_end(ms("2026-03-27T09:00[Europe/Berlin]"), &spec, &berlin);
        assert_eq!(format_local(end, &berlin), "2026-03-30T09:00:00+02:00[Europe/Berlin]");
    }

    #[test]
    fn weekdays_only_moves_saturday_to_monday_at_the_same_wall_time() {
        let spec = DelaySpec { span: Span { days: 1, ms: 0 }, weekdays_only: true, ..DelaySpec::default() };
        // Friday 15:00 + 1 day = Saturday 15:00, moved to Monday.
        let end = delay_end(ms("2026-11-27T15:00[UTC]"), &spec, &zone("UTC"));
        assert_eq!(end, ms("2026-11-30T15:00[UTC]"));
    }

    #[test]
    fn weekdays_only_moves_sunday_to_monday() {
        let spec = DelaySpec { span: Span { days: 2, ms: 0 }, weekdays_only: true, ..DelaySpec::default() };
        let end = delay_end(ms("2026-11-27T15:00[UTC]"), &spec, &zone("UTC"));
        assert_eq!(end, ms("2026-11-30T15:00[UTC]"));
    }

    #[test]
    fn weekdays_only_leaves_a_weekday_alone() {
        let spec = DelaySpec { span: Span { days: 1, ms: 0 }, weekdays_only: true, ..DelaySpec::default() };
        let end = delay_end(ms("2026-11-25T15:00[UTC]"), &spec, &zone("UTC"));
        assert_eq!(end, ms("2026-11-26T15:00[UTC]"));
    }

    #[test]
    fn weekdays_only_with_until_moves_to_monday_at_until() {
        let spec = DelaySpec { until: Some(tod(9, 0)), weekdays_only: true, ..DelaySpec::default() };
        // Friday 10:00: 09:00 has passed, Saturday 09:00 is a weekend.
        let end = delay_end(ms("2026-11-27T10:00[UTC]"), &spec, &zone("UTC"));
        assert_eq!(end, ms("2026-11-30T09:00[UTC]"));
    }

    #[test]
    fn weekdays_only_reads_the_weekday_in_the_zone() {
        let shanghai = zone("Asia/Shanghai");
        let spec = DelaySpec { weekdays_only: true, ..DelaySpec::default() };
        // Friday 20:00 UTC is Saturday 04:00 in Shanghai.
        let end = delay_end(ms("2026-11-27T20:00[UTC]"), &spec, &shanghai);
        assert_eq!(format_local(end, &shanghai), "2026-11-30T04:00:00+08:00[Asia/Shanghai]");
    }

    #[test]
    fn delay_steps_apply_in_the_documented_order() {
        let spec = DelaySpec {
            span: parse_span("1d2h").unwrap(),
            business_days: 1,
            until: Some(tod(9, 0)),
            weekdays_only: true,
        };
        // Wed 10:00 +1d2h = Thu 12:00, +1 business day = Fri 12:00,
        // until 09:00 = Sat 09:00, weekdays only = Mon 09:00.
        let end = delay_end(ms("2026-11-25T10:00[UTC]"), &spec, &zone("UTC"));
        assert_eq!(end, ms("2026-11-30T09:00[UTC]"));
    }

    #[test]
    fn negative_hand_built_spans_are_ignored() {
        let spec = DelaySpec { span: Span { days: -3, ms: -HOUR_MS }, ..DelaySpec::default() };
        let start = ms("2026-11-26T09:00[UTC]");
        assert_eq!(delay_end(start, &spec, &zone("UTC")), start);
    }

    #[test]
    fn delay_end_is_never_before_start() {
        let specs = [
            DelaySpec::default(),
            days(1),
            DelaySpec { span: Span { days: -1, ms: -1 }, ..DelaySpec::default() },
            DelaySpec { span: Span { days: 0, ms: 1 }, ..DelaySpec::default() },
            DelaySpec { business_days: 1, ..DelaySpec::default() },
            DelaySpec { until: Some(tod(2, 30)), ..DelaySpec::default() },
            DelaySpec { until: Some(tod(1, 30)), weekdays_only: true, ..DelaySpec::default() },
            DelaySpec { weekdays_only: true, ..DelaySpec::default() },
        ];
        let cases = [
            ("America/New_York", "2026-03-07T00:00[America/New_York]"),
            ("America/New_York", "2026-10-31T00:00[America/New_York]"),
            ("Europe/Berlin", "2026-03-28T00:00[Europe/Berlin]"),
            ("Asia/Shanghai", "2026-11-26T00:00[Asia/Shanghai]"),
            ("Pacific/Apia", "2011-12-29T00:00[Pacific/Apia]"),
        ];
        for (name, first) in cases {
            let tz = zone(name);
            // Every 7 minutes for three days, through the change.
            for step in 0..(3 * 24 * 60 / 7) {
                let start = ms(first) + step * 7 * MINUTE_MS;
                for spec in &specs {
                    let end = delay_end(start, spec, &tz);
                    assert!(end >= start, "{name} {} {spec:?}", format_local(start, &tz));
                }
            }
        }
    }

    #[test]
    fn unrepresentable_delays_never_end() {
        let utc = zone("UTC");
        let start = ms("2026-11-26T09:00[UTC]");
        let huge = DelaySpec { business_days: u32::MAX, ..DelaySpec::default() };
        assert_eq!(delay_end(start, &huge, &utc), NEVER_MS);
        let far = DelaySpec { span: Span { days: i64::MAX, ms: i64::MAX }, ..DelaySpec::default() };
        assert_eq!(delay_end(start, &far, &utc), NEVER_MS);
        let bad_until = DelaySpec { until: Some(tod(24, 0)), ..DelaySpec::default() };
        assert_eq!(delay_end(start, &bad_until, &utc), NEVER_MS);
        assert_eq!(delay_end(i64::MIN, &DelaySpec::default(), &utc), NEVER_MS);
        assert_eq!(delay_end(i64::MAX, &days(1), &utc), NEVER_MS);
    }

    // ---- schedules ----

    #[test]
    fn next_fire_daily_in_utc_is_today_if_ahead_else_tomorrow() {
        let utc = zone("UTC");
        assert_eq!(next_fire(ms("2026-11-26T08:00[UTC]"), &daily(9, 0), &utc), ms("2026-11-26T09:00[UTC]"));
        assert_eq!(next_fire(ms("2026-11-26T10:00[UTC]"), &daily(9, 0), &utc), ms("2026-11-27T09:00[UTC]"));
    }

    #[test]
    fn next_fire_is_strictly_after() {
        let utc = zone("UTC");
        let nine = ms("2026-11-26T09:00[UTC]");
        assert_eq!(next_fire(nine - 1, &daily(9, 0), &utc), nine);
        assert_eq!(next_fire(nine, &daily(9, 0), &utc), ms("2026-11-27T09:00[UTC]"));
    }

    #[test]
    fn next_fire_walked_repeatedly_always_moves_forward() {
        for name in ["UTC", "America/New_York", "Europe/Berlin", "Asia/Shanghai", "Pacific/Apia"] {
            let tz = zone(name);
            for spec in [daily(2, 30), daily(1, 30), daily(0, 0), daily(23, 59)] {
                let mut at = ms("2011-01-01T00:00[UTC]");
                for _ in 0..400 {
                    let next = next_fire(at, &spec, &tz);
                    assert!(next > at, "{name} {spec:?} {}", format_local(at, &tz));
                    at = next;
                }
            }
        }
    }

    #[test]
    fn next_fire_daily_in_shanghai_uses_plus_eight() {
        let shanghai = zone("Asia/Shanghai");
        // 00:30 UTC is 08:30 in Shanghai: 09:00 is still ahead.
        assert_eq!(next_fire(ms("2026-11-26T00:30[UTC]"), &daily(9, 0), &shanghai), ms("2026-11-26T01:00[UTC]"));
        // 02:00 UTC is 10:00 in Shanghai: tomorrow.
        assert_eq!(next_fire(ms("2026-11-26T02:00[UTC]"), &daily(9, 0), &shanghai), ms("2026-11-27T01:00[UTC]"));
        // 20:00 UTC on the 25th is already 04:00 on the 26th in Shanghai.
        assert_eq!(next_fire(ms("2026-11-25T20:00[UTC]"), &daily(9, 0), &shanghai), ms("2026-11-26T01:00[UTC]"));
    }

    #[test]
    fn next_fire_weekday_only_in_utc_skips_other_days() {
        let utc = zone("UTC");
        let spec = ScheduleSpec { at: tod(9, 0), weekdays: vec![Weekday::Monday, Weekday::Wednesday] };
        // Thursday 2026-11-26 -> Monday 2026-11-30.
        assert_eq!(next_fire(ms("2026-11-26T08:00[UTC]"), &spec, &utc), ms("2026-11-30T09:00[UTC]"));
        // Monday after firing -> Wednesday.
        assert_eq!(next_fire(ms("2026-11-30T09:00[UTC]"), &spec, &utc), ms("2026-12-02T09:00[UTC]"));
    }

    #[test]
    fn next_fire_on_a_single_weekday_waits_a_week_after_firing() {
        let utc = zone("UTC");
        let spec = ScheduleSpec { at: tod(9, 0), weekdays: vec![Weekday::Thursday] };
        assert_eq!(next_fire(ms("2026-11-26T09:00[UTC]"), &spec, &utc), ms("2026-12-03T09:00[UTC]"));
    }

    #[test]
    fn next_fire_weekday_only_in_shanghai_reads_the_local_date() {
        let shanghai = zone("Asia/Shanghai");
        let spec = ScheduleSpec { at: tod(7, 0), weekdays: vec![Weekday::Monday] };
        // Sunday 22:00 UTC is Monday 06:00 in Shanghai.
        let next = next_fire(ms("2026-11-29T22:00[UTC]"), &spec, &shanghai);
        assert_eq!(format_local(next, &shanghai), "2026-11-30T07:00:00+08:00[Asia/Shanghai]");
        assert_eq!(next, ms("2026-11-29T23:00[UTC]"));
    }

    #[test]
    fn next_fire_daily_in_new_york_keeps_nine_o_clock_across_the_spring_change() {
        let new_york = zone("America/New_York");
        let saturday = next_fire(ms("2026-03-07T08:00[America/New_York]"), &daily(9, 0), &new_york);
        let sunday = next_fire(saturday, &daily(9, 0), &new_york);
        assert_eq!(format_local(saturday, &new_york), "2026-03-07T09:00:00-05:00[America/New_York]");
        assert_eq!(format_local(sunday, &new_york), "2026-03-08T09:00:00-04:00[America/New_York]");
        assert_eq!(sunday - saturday, 23 * HOUR_MS);
    }

    #[test]
    fn next_fire_daily_in_new_york_keeps_nine_o_clock_across_the_autumn_change() {
        let new_york = zone("America/New_York");
        let saturday = next_fire(ms("2026-10-31T08:00[America/New_York]"), &daily(9, 0), &new_york);
        let sunday = next_fire(saturday, &daily(9, 0), &new_york);
        assert_eq!(format_local(sunday, &new_york), "2026-11-01T09:00:00-05:00[America/New_York]");
        assert_eq!(sunday - saturday, 25 * HOUR_MS);
    }

    #[test]
    fn next_fire_weekday_only_in_new_york_across_the_spring_change() {
        let new_york = zone("America/New_York");
        let spec = ScheduleSpec { at: tod(9, 0), weekdays: vec![Weekday::Monday] };
        // Monday 2026-03-02 after firing -> Monday 2026-03-09, a week minus an hour.
        let first = ms("2026-03-02T09:00[America/New_York]");
        let next = next_fire(first, &spec, &new_york);
        assert_eq!(format_local(next, &new_york), "2026-03-09T09:00:00-04:00[America/New_York]");
        assert_eq!(next - first, 7 * DAY_MS - HOUR_MS);
    }

    #[test]
    fn next_fire_in_the_spring_gap_fires_at_the_later_instant() {
        let new_york = zone("America/New_York");
        let next = next_fire(ms("2026-03-08T00:00[America/New_York]"), &daily(2, 30), &new_york);
        assert_eq!(format_local(next, &new_york), "2026-03-08T03:30:00-04:00[America/New_York]");
    }

    #[test]
    fn next_fire_in_the_autumn_fold_fires_once_at_the_earlier_instant() {
        let new_york = zone("America/New_York");
        let first = next_fire(ms("2026-11-01T00:00[America/New_York]"), &daily(1, 30), &new_york);
        assert_eq!(format_local(first, &new_york), "2026-11-01T01:30:00-04:00[America/New_York]");
        // Not again at 01:30 EST the same night.
        let second = next_fire(first, &daily(1, 30), &new_york);
        assert_eq!(format_local(second, &new_york), "2026-11-02T01:30:00-05:00[America/New_York]");
    }

    #[test]
    fn next_fire_fires_every_day_of_a_year_at_the_wall_time() {
        let new_york = zone("America/New_York");
        let mut at = ms("2026-01-01T00:00[America/New_York]");
        for _ in 0..365 {
            at = next_fire(at, &daily(9, 0), &new_york);
            let local = Timestamp::from_millisecond(at).unwrap().to_zoned(new_york.clone());
            assert_eq!((local.hour(), local.minute()), (9, 0), "{local}");
        }
        assert_eq!(format_local(at, &new_york), "2026-12-31T09:00:00-05:00[America/New_York]");
    }

    #[test]
    fn unrepresentable_schedules_never_fire() {
        let utc = zone("UTC");
        assert_eq!(next_fire(ms("2026-11-26T09:00[UTC]"), &daily(9, 60), &utc), NEVER_MS);
        assert_eq!(next_fire(i64::MAX, &daily(9, 0), &utc), NEVER_MS);
        // The last representable day is 9999-12-30 (UTC) and its 09:00 is past.
        assert_eq!(next_fire(ms("9999-12-30T10:00[UTC]"), &daily(9, 0), &utc), NEVER_MS);
        assert_eq!(next_fire(Timestamp::MAX.as_millisecond(), &daily(9, 0), &utc), NEVER_MS);
    }

    // ---- formatting ----

    #[test]
    fn format_local_writes_rfc_9557_text() {
        let at = ms("2026-11-26T08:00[UTC]");
        assert_eq!(format_local(at, &zone("Europe/Berlin")), "2026-11-26T09:00:00+01:00[Europe/Berlin]");
        assert_eq!(format_local(at, &zone("Asia/Shanghai")), "2026-11-26T16:00:00+08:00[Asia/Shanghai]");
        assert_eq!(format_local(at, &zone("UTC")), "2026-11-26T08:00:00+00:00[UTC]");
    }

    #[test]
    fn format_local_writes_out_of_range_instants_as_numbers() {
        assert!(format_local(NEVER_MS, &zone("UTC")).contains(&NEVER_MS.to_string()));
    }
}
