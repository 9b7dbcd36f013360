//! Business-hours calendars: "may we dial at instant T, and if not, when does the call centre
//! next open?", per time zone, correct across daylight-saving changes.
//!
//! A dial rings a real person, so this gate is the one that keeps the worker from calling
//! anyone at 3 a.m. or on a public holiday. This module owns the `[business_hours]` settings
//! types, their validation (every error names the offending key), and the compiled
//! [`Calendar`] / [`BusinessHours`] that answer [`Calendar::is_open`] and
//! [`Calendar::next_opening`]. It knows nothing about requests or deferral: callers turn "not
//! open, next opening at X" into a deferral themselves.
//!
//! # Example: China's 2026 National Day week
//!
//! Weekdays 09:00–18:00, weekends closed, the holiday 1–7 October closed, and the two
//! make-up working days (调休) Sunday 27 September and Saturday 10 October open 09:00–18:00:
//!
//! ```toml
//! [business_hours]
//! timezone = "Asia/Shanghai"
//! # Public holidays: closed all day, whatever the weekday says.
//! closed_dates = [
//!     "2026-10-01", "2026-10-02", "2026-10-03", "2026-10-04",
//!     "2026-10-05", "2026-10-06", "2026-10-07",
//! ]
//!
//! [business_hours.weekly]
//! # "HH:MM-HH:MM", end exclusive ("24:00" allowed as an end); several windows a day allowed.
//! mon = ["09:00-18:00"]
//! tue = ["09:00-18:00"]
//! wed = ["09:00-18:00"]
//! thu = ["09:00-18:00"]
//! fri = ["09:00-18:00"]
//! # Closed days. Write them out as empty lists: a file given with --config is merged over
//! # the defaults, so a day left out here would keep its default hours.
//! sat = []
//! sun = []
//!
//! [business_hours.open_dates]
//! # Make-up working days (调休): their own windows, overriding weekly and closed_dates.
//! "2026-09-27" = ["09:00-18:00"]
//! "2026-10-10" = ["09:00-18:00"]
//!
//! # A whole calendar of its own for one CCC instance; other instances use the one above.
//! [business_hours.instances."inst-1"]
//! timezone = "America/New_York"
//! weekly = { mon = ["09:00-17:00"], tue = ["09:00-17:00"], wed = ["09:00-17:00"], thu = ["09:00-17:00"], fri = ["09:00-17:00"] }
//! closed_dates = ["2026-11-26"]
//! ```
//!
//! # Semantics
//!
//! * A window belongs to a *local* date of the calendar's time zone. Which windows a date has:
//!   its `open_dates` entry if there is one (an empty list closes the date), else none if it is
//!   in `closed_dates`, else its weekday's `weekly` entry (a missing weekday is closed).
//! * A window is open from the first instant the local wall clock reaches its start until the
//!   first instant it reaches its end (end exclusive); "24:00" is the next local midnight. So a
//!   start or end inside a spring-forward gap resolves to the first valid instant after the
//!   gap, and one inside a fall-back fold resolves to the earlier of the two instants. (Jiff's
//!   "compatible" disambiguation agrees with this except for times strictly inside a gap,
//!   which it pushes forward by the gap's length — 02:30 would become 03:30 — and that would
//!   both open late and, for an end, dial past the stated closing time.)
//! * Windows of consecutive dates that touch (e.g. "20:00-24:00" then "00:00-02:00") form one
//!   continuous opening.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::tz::{AmbiguousOffset, TimeZone};
use serde::Deserialize;

/// `next_opening` looks this many local days ahead before giving up: long enough to cross any
/// real holiday block and a year of make-up days, short enough to bound the work for an
/// all-closed calendar.
const SEARCH_DAYS: u32 = 400;

/// Minutes in a day; also the encoding of an end of "24:00".
const MINUTES_PER_DAY: u16 = 24 * 60;

/// The `weekly` keys, in [`Weekday`] order (Monday first).
const WEEKDAY_KEYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// One calendar as written in configuration (the `[business_hours]` section itself, or one
/// `[business_hours.instances."<id>"]` table).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarSettings {
    /// IANA name, e.g. "Asia/Shanghai".
    pub timezone: String,
    /// Weekly windows per weekday: keys mon, tue, wed, thu, fri, sat, sun; each a list of
    /// "HH:MM-HH:MM" (end exclusive; "24:00" allowed as an end). A missing day = closed that
    /// day.
    pub weekly: BTreeMap<String, Vec<String>>,
    /// Holidays: "YYYY-MM-DD", closed all day (overrides weekly).
    #[serde(default)]
    pub closed_dates: Vec<String>,
    /// Make-up working days (调休) or any date with its own windows: "YYYY-MM-DD" -> windows
    /// (overrides weekly and closed_dates).
    #[serde(default)]
    pub open_dates: BTreeMap<String, Vec<String>>,
}

/// The whole `[business_hours]` section: the default calendar, plus whole-calendar overrides
/// per CCC instance.
///
/// Deserialized through a private mirror struct rather than `#[serde(flatten)]`: serde
/// hands a flattened struct only the fields it names, so `deny_unknown_fields` would silently
/// stop working there, and a typo such as `closed_date = [...]` would drop every holiday
/// without a word.
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "BusinessHoursSettingsRepr")]
pub struct BusinessHoursSettings {
    /// The calendar of every instance without an entry in `instances` (the section's own
    /// `timezone`, `weekly`, `closed_dates` and `open_dates` keys).
    pub default: CalendarSettings,
    /// Per-instance_id overrides: a whole calendar each (nothing is inherited from the
    /// default).
    pub instances: BTreeMap<String, CalendarSettings>,
}

impl BusinessHoursSettings {
    /// Open every day, all day, with no closed dates: for the demo, the benchmark and tests,
    /// which must run at any hour.
    pub fn open_around_the_clock(&mut self) {
        for day in ["mon", "tue", "wed", "thu", "fri", "sat", "sun"] {
            self.default
                .weekly
                .insert(day.to_owned(), vec!["00:00-24:00".to_owned()]);
        }
        self.default.closed_dates.clear();
    }
}

/// The on-disk shape of [`BusinessHoursSettings`]: the default calendar's keys side by side
/// with `instances`, with unknown keys rejected.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BusinessHoursSettingsRepr {
    timezone: String,
    weekly: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    closed_dates: Vec<String>,
    #[serde(default)]
    open_dates: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    instances: BTreeMap<String, CalendarSettings>,
}

impl From<BusinessHoursSettingsRepr> for BusinessHoursSettings {
    fn from(repr: BusinessHoursSettingsRepr) -> Self {
        BusinessHoursSettings {
            default: CalendarSettings {
                timezone: repr.timezone,
                weekly: repr.weekly,
                closed_dates: repr.closed_dates,
                open_dates: repr.open_dates,
            },
            instances: repr.instances,
        }
    }
}

/// A configuration value that does not make a valid calendar.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct CalendarError {
    /// The offending key, e.g. `business_hours.weekly.mon[1]` or
    /// `business_hours.instances.inst-1.closed_dates[0]`.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl CalendarError {
    fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        CalendarError {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// One opening on a local date, in minutes since local midnight: `start < end <= 1440`, end
/// exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    start: u16,
    end: u16,
}

/// A validated calendar, ready to answer "open now?" and "open next when?".
#[derive(Debug, Clone)]
pub struct Calendar {
    tz: TimeZone,
    /// Indexed by weekday, Monday = 0; each day's windows sorted and non-overlapping.
    weekly: [Vec<Window>; 7],
    closed_dates: BTreeSet<Date>,
    /// Dates with their own windows (possibly none), sorted and non-overlapping.
    open_dates: BTreeMap<Date, Vec<Window>>,
}

impl Calendar {
    /// Validates `settings` and compiles them. `key_prefix` is where they live in the
    /// configuration (e.g. "business_hours" or "business_hours.instances.inst-1") and starts
    /// every error's key.
    ///
    /// Rejected: an unknown time zone, a window not of the form "HH:MM-HH:MM" (hours 00–23,
    /// minutes 00–59, "24:00" only as an end), a window whose start is not before its end,
    /// overlapping windows on one day, a `weekly` key other than mon…sun, and a date that is
    /// not a real "YYYY-MM-DD" date.
    pub fn new(settings: &CalendarSettings, key_prefix: &str) -> Result<Calendar, CalendarError> {
        let tz = TimeZone::get(&settings.timezone).map_err(|e| {
            CalendarError::new(
                format!("{key_prefix}.timezone"),
                format!("{:?} is not a known IANA time zone: {e}", settings.timezone),
            )
        })?;

        let mut weekly: [Vec<Window>; 7] = Default::default();
        for (day, windows) in &settings.weekly {
            let key = format!("{key_prefix}.weekly.{day}");
            let index = WEEKDAY_KEYS.iter().position(|k| k == day).ok_or_else(|| {
                CalendarError::new(
                    key.clone(),
                    "unknown weekday; expected one of mon, tue, wed, thu, fri, sat, sun",
                )
            })?;
            weekly[index] = parse_windows(windows, &key)?;
        }

        let mut closed_dates = BTreeSet::new();
        for (i, text) in settings.closed_dates.iter().enumerate() {
            let date = parse_date(text).map_err(|reason| {
                CalendarError::new(format!("{key_prefix}.closed_dates[{i}]"), reason)
            })?;
            closed_dates.insert(date);
        }

        let mut open_dates = BTreeMap::new();
        for (text, windows) in &settings.open_dates {
            let key = format!("{key_prefix}.open_dates.{text}");
            let date =
                parse_date(text).map_err(|reason| CalendarError::new(key.clone(), reason))?;
            open_dates.insert(date, parse_windows(windows, &key)?);
        }

        Ok(Calendar {
            tz,
            weekly,
            closed_dates,
            open_dates,
        })
    }

    /// Whether a call may be placed at `at`.
    pub fn is_open(&self, at: Timestamp) -> bool {
        let today = self.tz.to_datetime(at).date();
        // The day before matters for a "…-24:00" window whose end the local midnight has not
        // reached yet in odd zones, and the day after for a zone that falls back across
        // midnight (its next date's 00:00 is reached, then the clock returns to the old date).
        [today.yesterday().ok(), Some(today), today.tomorrow().ok()]
            .into_iter()
            .flatten()
            .any(|date| {
                self.windows_on(date).iter().any(|&window| {
                    self.interval(date, window)
                        .is_some_and(|(start, end)| start <= at && at < end)
                })
            })
    }

    /// `at` itself when open; otherwise the next instant a window opens; None if nothing opens
    /// within 400 days (e.g. an all-closed calendar).
    pub fn next_opening(&self, at: Timestamp) -> Option<Timestamp> {
        if self.is_open(at) {
            return Some(at);
        }
        // Starts only move forward as (date, start time) does, so the first start after `at`
        // in date order is the earliest one. Begin a day early for the same midnight oddities
        // `is_open` allows for.
        let today = self.tz.to_datetime(at).date();
        let mut date = today.yesterday().unwrap_or(today);
        for _ in 0..=SEARCH_DAYS + 1 {
            for &window in self.windows_on(date) {
                if let Some((start, end)) = self.interval(date, window)
                    && start > at
                    // A window entirely inside a spring-forward gap never opens.
                    && start < end
                {
                    return Some(start);
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }

    /// The calendar's time zone (also the one whose midnight ends a "day" for daily caps).
    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    /// The windows that apply on local `date`, in order.
    fn windows_on(&self, date: Date) -> &[Window] {
        if let Some(windows) = self.open_dates.get(&date) {
            return windows;
        }
        if self.closed_dates.contains(&date) {
            return &[];
        }
        &self.weekly[weekday_index(date.weekday())]
    }

    /// The instants `[start, end)` of `window` on local `date`; None only at the edges of
    /// jiff's supported range.
    fn interval(&self, date: Date, window: Window) -> Option<(Timestamp, Timestamp)> {
        Some((
            self.first_instant_at(date, window.start)?,
            self.first_instant_at(date, window.end)?,
        ))
    }

    /// The first instant at which the local wall clock reads at least `minute` past midnight
    /// of `date` (1440 = the next midnight).
    fn first_instant_at(&self, date: Date, minute: u16) -> Option<Timestamp> {
        let (date, minute) = if minute >= MINUTES_PER_DAY {
            (date.tomorrow().ok()?, minute - MINUTES_PER_DAY)
        } else {
            (date, minute)
        };
        let hour = i8::try_from(minute / 60).ok()?;
        let min = i8::try_from(minute % 60).ok()?;
        let local = DateTime::from_parts(date, Time::new(hour, min, 0, 0).ok()?);
        let ambiguous = self.tz.to_ambiguous_timestamp(local);
        match ambiguous.offset() {
            AmbiguousOffset::Unambiguous { .. } => ambiguous.compatible().ok(),
            // The wall clock first reads `local` on its first pass through the fold.
            AmbiguousOffset::Fold { .. } => ambiguous.earlier().ok(),
            // `local` never appears on the wall clock; the first instant past it is the
            // transition that ends the gap. `earlier()` (the post-gap offset applied) lies
            // just before that transition, so it is the next one after it whose wall time
            // has passed `local`.
            AmbiguousOffset::Gap { .. } => {
                let before_gap = ambiguous.earlier().ok()?;
                self.tz
                    .following(before_gap)
                    .take(4)
                    .map(|transition| transition.timestamp())
                    .find(|&instant| self.tz.to_datetime(instant) >= local)
                    .or_else(|| ambiguous.compatible().ok())
            }
        }
    }
}

/// The calendars of every instance: the default, and whole-calendar overrides by instance_id.
#[derive(Debug, Clone)]
pub struct BusinessHours {
    default: Calendar,
    instances: BTreeMap<String, Calendar>,
}

impl BusinessHours {
    /// Validates and compiles the `[business_hours]` section; error keys start with
    /// `business_hours.` or `business_hours.instances.<id>.`.
    pub fn new(settings: &BusinessHoursSettings) -> Result<BusinessHours, CalendarError> {
        let default = Calendar::new(&settings.default, "business_hours")?;
        let instances = settings
            .instances
            .iter()
            .map(|(id, calendar)| {
                let prefix = format!("business_hours.instances.{id}");
                Ok((id.clone(), Calendar::new(calendar, &prefix)?))
            })
            .collect::<Result<_, CalendarError>>()?;
        Ok(BusinessHours { default, instances })
    }

    /// The calendar for `instance_id`: its override if it has one, else the default.
    pub fn for_instance(&self, instance_id: &str) -> &Calendar {
        self.instances.get(instance_id).unwrap_or(&self.default)
    }

    /// The default calendar (the section's own keys), for instances without an override.
    pub fn default_calendar(&self) -> &Calendar {
        &self.default
    }
}

fn weekday_index(weekday: Weekday) -> usize {
    match weekday {
        Weekday::Monday => 0,
        Weekday::Tuesday => 1,
        Weekday::Wednesday => 2,
        Weekday::Thursday => 3,
        Weekday::Friday => 4,
        Weekday::Saturday => 5,
        Weekday::Sunday => 6,
    }
}

/// Parses one day's windows (`key` names the list) and checks they do not overlap; returns
/// them sorted by start.
fn parse_windows(texts: &[String], key: &str) -> Result<Vec<Window>, CalendarError> {
    let mut windows = texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            parse_window(text)
                .map(|window| (i, window))
                .map_err(|reason| CalendarError::new(format!("{key}[{i}]"), reason))
        })
        .collect::<Result<Vec<_>, _>>()?;
    windows.sort_by_key(|&(_, window)| window.start);
    for pair in windows.windows(2) {
        let [(i, a), (j, b)] = pair else { continue };
        // Touching ("09:00-12:00", "12:00-13:00") is allowed: it is simply one longer opening.
        if a.end > b.start {
            let (later, earlier) = if i > j { (i, j) } else { (j, i) };
            return Err(CalendarError::new(
                format!("{key}[{later}]"),
                format!(
                    "{:?} overlaps {:?} ({key}[{earlier}])",
                    texts[*later], texts[*earlier]
                ),
            ));
        }
    }
    Ok(windows.into_iter().map(|(_, window)| window).collect())
}

/// "HH:MM-HH:MM" (spaces around the dash tolerated), start before end.
fn parse_window(text: &str) -> Result<Window, String> {
    let expected = || format!("{text:?} is not a window of the form \"HH:MM-HH:MM\"");
    let (start, end) = text.split_once('-').ok_or_else(expected)?;
    let start = parse_minute(start.trim(), false).map_err(|e| format!("{}: {e}", expected()))?;
    let end = parse_minute(end.trim(), true).map_err(|e| format!("{}: {e}", expected()))?;
    if start >= end {
        return Err(format!("{text:?}: the start must be before the end"));
    }
    Ok(Window { start, end })
}

/// "HH:MM" as minutes since midnight; "24:00" (1440) only when it is an end.
fn parse_minute(text: &str, is_end: bool) -> Result<u16, String> {
    let bytes = text.as_bytes();
    let two_digits = |at: usize| -> Option<u16> {
        let (tens, ones) = (bytes.get(at)?, bytes.get(at + 1)?);
        (tens.is_ascii_digit() && ones.is_ascii_digit())
            .then(|| u16::from(tens - b'0') * 10 + u16::from(ones - b'0'))
    };
    let (Some(hour), Some(b':'), Some(minute), 5) =
        (two_digits(0), bytes.get(2), two_digits(3), bytes.len())
    else {
        return Err(format!("{text:?} is not HH:MM"));
    };
    match (hour, minute) {
        (24, 0) if is_end => Ok(MINUTES_PER_DAY),
        (24, 0) => Err("24:00 is allowed only as an end".into()),
        (0..=23, 0..=59) => Ok(hour * 60 + minute),
        _ => Err(format!("{text:?} is not a time of day")),
    }
}

/// Exactly "YYYY-MM-DD", and a real date.
fn parse_date(text: &str) -> Result<Date, String> {
    let expected = || format!("{text:?} is not a date of the form \"YYYY-MM-DD\"");
    let bytes = text.as_bytes();
    let shape_ok = bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            _ => b.is_ascii_digit(),
        });
    if !shape_ok {
        return Err(expected());
    }
    // All ASCII digits of the right widths, so these parse and fit.
    let year: i16 = text[0..4].parse().map_err(|_| expected())?;
    let month: i8 = text[5..7].parse().map_err(|_| expected())?;
    let day: i8 = text[8..10].parse().map_err(|_| expected())?;
    Date::new(year, month, day).map_err(|e| format!("{text:?} is not a real date: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What config/default.toml holds: Asia/Shanghai, every day 09:00-21:00.
    const DEFAULT_TOML: &str = r#"
[business_hours]
timezone = "Asia/Shanghai"

[business_hours.weekly]
mon = ["09:00-21:00"]
tue = ["09:00-21:00"]
wed = ["09:00-21:00"]
thu = ["09:00-21:00"]
fri = ["09:00-21:00"]
sat = ["09:00-21:00"]
sun = ["09:00-21:00"]
"#;

    /// The README example (the module docs' TOML), verbatim.
    const NATIONAL_DAY_TOML: &str = r#"
[business_hours]
timezone = "Asia/Shanghai"
# Public holidays: closed all day, whatever the weekday says.
closed_dates = [
    "2026-10-01", "2026-10-02", "2026-10-03", "2026-10-04",
    "2026-10-05", "2026-10-06", "2026-10-07",
]

[business_hours.weekly]
# "HH:MM-HH:MM", end exclusive ("24:00" allowed as an end); several windows a day allowed.
mon = ["09:00-18:00"]
tue = ["09:00-18:00"]
wed = ["09:00-18:00"]
thu = ["09:00-18:00"]
fri = ["09:00-18:00"]
# Closed days. Write them out as empty lists: a file given with --config is merged over
# the defaults, so a day left out here would keep its default hours.
sat = []
sun = []

[business_hours.open_dates]
# Make-up working days (调休): their own windows, overriding weekly and closed_dates.
"2026-09-27" = ["09:00-18:00"]
"2026-10-10" = ["09:00-18:00"]

# A whole calendar of its own for one CCC instance; other instances use the one above.
[business_hours.instances."inst-1"]
timezone = "America/New_York"
weekly = { mon = ["09:00-17:00"], tue = ["09:00-17:00"], wed = ["09:00-17:00"], thu = ["09:00-17:00"], fri = ["09:00-17:00"] }
closed_dates = ["2026-11-26"]
"#;

    #[derive(Deserialize)]
    struct Root {
        business_hours: BusinessHoursSettings,
    }

    /// Deserializes TOML sources, layered in order, the way the crate's config layer does.
    fn settings_from(sources: &[&str]) -> Result<BusinessHoursSettings, config::ConfigError> {
        let mut builder = config::Config::builder();
        for source in sources {
            builder = builder.add_source(config::File::from_str(source, config::FileFormat::Toml));
        }
        Ok(builder.build()?.try_deserialize::<Root>()?.business_hours)
    }

    fn hours_from(sources: &[&str]) -> BusinessHours {
        BusinessHours::new(&settings_from(sources).unwrap()).unwrap()
    }

    fn calendar(timezone: &str, weekly: &[(&str, &[&str])]) -> CalendarSettings {
        CalendarSettings {
            timezone: timezone.to_string(),
            weekly: weekly
                .iter()
                .map(|(day, windows)| {
                    (
                        day.to_string(),
                        windows.iter().map(|w| w.to_string()).collect(),
                    )
                })
                .collect(),
            closed_dates: Vec::new(),
            open_dates: BTreeMap::new(),
        }
    }

    fn every_day(timezone: &str, windows: &[&str]) -> CalendarSettings {
        let days: Vec<(&str, &[&str])> = WEEKDAY_KEYS.iter().map(|d| (*d, windows)).collect();
        calendar(timezone, &days)
    }

    fn compile(settings: &CalendarSettings) -> Calendar {
        Calendar::new(settings, "business_hours").unwrap()
    }

    /// An instant from a local wall time in `cal`'s zone (unambiguous times only).
    fn local(cal: &Calendar, text: &str) -> Timestamp {
        let dt: DateTime = text.parse().unwrap();
        cal.time_zone().to_timestamp(dt).unwrap()
    }

    fn utc(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn error_of(settings: &CalendarSettings) -> CalendarError {
        Calendar::new(settings, "business_hours").unwrap_err()
    }

    #[test]
    fn default_calendar_is_shanghai_nine_to_nine() {
        let hours = hours_from(&[DEFAULT_TOML]);
        let cal = hours.for_instance("any");
        assert_eq!(cal.time_zone().iana_name(), Some("Asia/Shanghai"));
        // 09:00 Shanghai is 01:00 UTC (no DST there).
        assert!(!cal.is_open(utc("2026-05-04T00:59:59Z")));
        assert!(cal.is_open(utc("2026-05-04T01:00:00Z")));
        assert!(cal.is_open(utc("2026-05-04T12:59:59Z")));
        assert!(!cal.is_open(utc("2026-05-04T13:00:00Z")));
        assert_eq!(
            cal.next_opening(utc("2026-05-04T13:00:00Z")),
            Some(utc("2026-05-05T01:00:00Z"))
        );
    }

    #[test]
    fn several_windows_a_day() {
        let cal = compile(&every_day("Asia/Shanghai", &["13:30-18:00", "09:00-12:00"]));
        let at = |t: &str| local(&cal, &format!("2026-05-06T{t}"));
        assert!(cal.is_open(at("10:00")));
        assert_eq!(cal.next_opening(at("10:00")), Some(at("10:00")));
        assert!(cal.is_open(at("11:59:59")));
        assert!(!cal.is_open(at("12:00")));
        assert!(!cal.is_open(at("12:30")));
        assert_eq!(cal.next_opening(at("12:30")), Some(at("13:30")));
        assert!(cal.is_open(at("13:30")));
        assert!(cal.is_open(at("17:59:59")));
        // End exclusive.
        assert!(!cal.is_open(at("18:00")));
        assert_eq!(
            cal.next_opening(at("18:00")),
            Some(local(&cal, "2026-05-07T09:00"))
        );
        // Before the first window: the same day's first window.
        assert_eq!(cal.next_opening(at("06:00")), Some(at("09:00")));
    }

    #[test]
    fn holiday_skips_to_the_next_day() {
        let mut settings = every_day("Asia/Shanghai", &["09:00-21:00"]);
        settings.closed_dates = vec!["2026-05-01".into()];
        let cal = compile(&settings);
        assert!(!cal.is_open(local(&cal, "2026-05-01T12:00")));
        assert_eq!(
            cal.next_opening(local(&cal, "2026-04-30T21:00")),
            Some(local(&cal, "2026-05-02T09:00"))
        );
        assert_eq!(
            cal.next_opening(local(&cal, "2026-05-01T08:00")),
            Some(local(&cal, "2026-05-02T09:00"))
        );
    }

    #[test]
    fn national_day_calendar() {
        let hours = hours_from(&[NATIONAL_DAY_TOML]);
        let cal = hours.for_instance("inst-2");
        let at = |t: &str| local(cal, t);

        // Make-up working Sunday (调休), then an ordinary Sunday closed.
        assert!(cal.is_open(at("2026-09-27T09:00")));
        assert!(!cal.is_open(at("2026-09-27T18:00")));
        assert!(!cal.is_open(at("2026-09-20T10:00")));
        // Across an ordinary weekend: Friday evening to Monday morning.
        assert_eq!(
            cal.next_opening(at("2026-09-18T18:00")),
            Some(at("2026-09-21T09:00"))
        );
        // Saturday before the make-up Sunday opens on that Sunday.
        assert_eq!(
            cal.next_opening(at("2026-09-26T10:00")),
            Some(at("2026-09-27T09:00"))
        );

        // Across the whole holiday block: Wednesday 30 September after hours skips 1-7
        // October (a Thursday-to-Wednesday block, weekend included) to Thursday 8 October.
        assert!(!cal.is_open(at("2026-10-01T10:00")));
        assert!(!cal.is_open(at("2026-10-05T10:00")));
        assert_eq!(
            cal.next_opening(at("2026-09-30T20:00")),
            Some(at("2026-10-08T09:00"))
        );
        // Friday 9 October after hours: the make-up Saturday 10 October.
        assert_eq!(
            cal.next_opening(at("2026-10-09T18:00")),
            Some(at("2026-10-10T09:00"))
        );
        assert!(cal.is_open(at("2026-10-10T17:59")));
        // After the make-up Saturday: Sunday closed, Monday 12 October.
        assert_eq!(
            cal.next_opening(at("2026-10-10T18:00")),
            Some(at("2026-10-12T09:00"))
        );
        // In UTC: Asia/Shanghai is UTC+8 all year.
        assert_eq!(
            cal.next_opening(utc("2026-09-30T12:00:00Z")),
            Some(utc("2026-10-08T01:00:00Z"))
        );
    }

    #[test]
    fn open_dates_override_closed_dates_and_can_close_a_day() {
        let mut settings = every_day("Asia/Shanghai", &["09:00-18:00"]);
        settings.closed_dates = vec!["2026-06-01".into()];
        settings.open_dates = BTreeMap::from([
            ("2026-06-01".to_string(), vec!["14:00-16:00".to_string()]),
            ("2026-06-02".to_string(), vec![]),
        ]);
        let cal = compile(&settings);
        assert!(!cal.is_open(local(&cal, "2026-06-01T10:00")));
        assert_eq!(
            cal.next_opening(local(&cal, "2026-06-01T10:00")),
            Some(local(&cal, "2026-06-01T14:00"))
        );
        // An empty list closes the date.
        assert_eq!(
            cal.next_opening(local(&cal, "2026-06-01T16:00")),
            Some(local(&cal, "2026-06-03T09:00"))
        );
    }

    #[test]
    fn new_york_across_both_dst_changes() {
        let cal = compile(&every_day(
            "America/New_York",
            &["01:30-03:30", "09:00-17:00"],
        ));

        // Spring forward, Sunday 2026-03-08: 02:00 EST (07:00Z) becomes 03:00 EDT. The early
        // window runs 01:30 EST (06:30Z) to 03:30 EDT (07:30Z): one real hour.
        assert!(!cal.is_open(utc("2026-03-08T06:29:59Z")));
        assert!(cal.is_open(utc("2026-03-08T06:30:00Z")));
        assert!(cal.is_open(utc("2026-03-08T07:00:00Z")));
        assert!(cal.is_open(utc("2026-03-08T07:29:59Z")));
        assert!(!cal.is_open(utc("2026-03-08T07:30:00Z")));
        // Day window: 09:00 EST (14:00Z) the day before, 09:00 EDT (13:00Z) on the day.
        assert_eq!(
            cal.next_opening(utc("2026-03-07T10:00:00Z")),
            Some(utc("2026-03-07T14:00:00Z"))
        );
        assert!(!cal.is_open(utc("2026-03-07T22:00:00Z")));
        assert_eq!(
            cal.next_opening(utc("2026-03-07T22:00:00Z")),
            Some(utc("2026-03-08T06:30:00Z"))
        );
        assert_eq!(
            cal.next_opening(utc("2026-03-08T07:30:00Z")),
            Some(utc("2026-03-08T13:00:00Z"))
        );
        assert!(cal.is_open(utc("2026-03-08T20:59:59Z")));
        assert!(!cal.is_open(utc("2026-03-08T21:00:00Z")));

        // Fall back, Sunday 2026-11-01: 02:00 EDT (06:00Z) becomes 01:00 EST. The early
        // window opens at the first 01:30 (EDT, 05:30Z) and runs to 03:30 EST (08:30Z): three
        // real hours, open throughout the repeated hour.
        assert!(!cal.is_open(utc("2026-11-01T05:29:59Z")));
        assert_eq!(
            cal.next_opening(utc("2026-10-31T21:00:00Z")),
            Some(utc("2026-11-01T05:30:00Z"))
        );
        assert!(cal.is_open(utc("2026-11-01T05:30:00Z")));
        assert!(cal.is_open(utc("2026-11-01T06:15:00Z"))); // 01:15 EST, second pass
        assert!(cal.is_open(utc("2026-11-01T08:29:59Z")));
        assert!(!cal.is_open(utc("2026-11-01T08:30:00Z")));
        // Day window: 09:00 EDT (13:00Z) the day before, 09:00 EST (14:00Z) on the day.
        assert!(cal.is_open(utc("2026-10-31T13:00:00Z")));
        assert!(!cal.is_open(utc("2026-10-31T21:00:00Z")));
        assert_eq!(
            cal.next_opening(utc("2026-11-01T08:30:00Z")),
            Some(utc("2026-11-01T14:00:00Z"))
        );
        assert!(cal.is_open(utc("2026-11-01T21:59:59Z")));
        assert!(!cal.is_open(utc("2026-11-01T22:00:00Z")));
    }

    #[test]
    fn window_edges_inside_a_spring_forward_gap() {
        // 2026-03-08 in New York has no 02:00-02:59. A window starting at 02:30 opens at the
        // first valid instant after the gap, 03:00 EDT (07:00Z); one ending at 02:30 closes
        // there too; one lying wholly inside the gap never opens that day.
        let cal = compile(&calendar("America/New_York", &[("sun", &["02:30-04:00"])]));
        assert!(!cal.is_open(utc("2026-03-08T06:59:59Z")));
        assert!(cal.is_open(utc("2026-03-08T07:00:00Z")));
        assert_eq!(
            cal.next_opening(utc("2026-03-08T06:00:00Z")),
            Some(utc("2026-03-08T07:00:00Z"))
        );
        assert!(!cal.is_open(utc("2026-03-08T08:00:00Z")));

        let mut ends_in_gap = calendar("America/New_York", &[]);
        ends_in_gap.open_dates =
            BTreeMap::from([("2026-03-08".to_string(), vec!["00:00-02:30".to_string()])]);
        let cal = compile(&ends_in_gap);
        assert!(cal.is_open(utc("2026-03-08T06:59:59Z")));
        assert!(!cal.is_open(utc("2026-03-08T07:00:00Z")));

        let mut inside_gap = calendar("America/New_York", &[]);
        inside_gap.open_dates = BTreeMap::from([
            ("2026-03-08".to_string(), vec!["02:10-02:50".to_string()]),
            ("2026-03-09".to_string(), vec!["09:00-10:00".to_string()]),
        ]);
        let cal = compile(&inside_gap);
        assert!(!cal.is_open(utc("2026-03-08T07:00:00Z")));
        assert_eq!(
            cal.next_opening(utc("2026-03-08T06:00:00Z")),
            Some(utc("2026-03-09T13:00:00Z"))
        );
    }

    #[test]
    fn windows_across_midnight_are_one_opening() {
        let cal = compile(&every_day("Asia/Shanghai", &["00:00-02:00", "20:00-24:00"]));
        let at = |t: &str| local(&cal, t);
        assert!(!cal.is_open(at("2026-05-06T19:59:59")));
        assert!(cal.is_open(at("2026-05-06T20:00")));
        assert!(cal.is_open(at("2026-05-06T23:59:59.999")));
        assert!(cal.is_open(at("2026-05-07T00:00")));
        assert!(cal.is_open(at("2026-05-07T01:59:59")));
        assert!(!cal.is_open(at("2026-05-07T02:00")));
        for t in ["2026-05-06T23:30", "2026-05-07T00:00", "2026-05-07T01:00"] {
            assert_eq!(cal.next_opening(at(t)), Some(at(t)), "{t}");
        }
        assert_eq!(
            cal.next_opening(at("2026-05-07T02:00")),
            Some(at("2026-05-07T20:00"))
        );
        // "24:00" on a single day: closes at the next midnight.
        let late = compile(&calendar("Asia/Shanghai", &[("wed", &["22:00-24:00"])]));
        assert!(late.is_open(local(&late, "2026-05-06T23:59")));
        assert!(!late.is_open(local(&late, "2026-05-07T00:00")));
    }

    #[test]
    fn per_instance_override_and_default_for_others() {
        let hours = hours_from(&[NATIONAL_DAY_TOML]);
        let inst = hours.for_instance("inst-1");
        assert_eq!(inst.time_zone().iana_name(), Some("America/New_York"));
        // Monday 2026-09-28 10:00 EDT = 14:00Z: open for inst-1, and 22:00 in Shanghai, when
        // the default calendar is closed.
        assert!(inst.is_open(utc("2026-09-28T14:00:00Z")));
        assert!(
            !hours
                .for_instance("inst-2")
                .is_open(utc("2026-09-28T14:00:00Z"))
        );
        // 2026-10-01 10:00 Shanghai = 02:00Z: the default is on holiday, inst-1 is at night.
        assert!(!inst.is_open(utc("2026-10-01T02:00:00Z")));
        // inst-1's own holiday (Thursday 26 November) sends it to Friday.
        assert_eq!(
            inst.next_opening(utc("2026-11-25T22:00:00Z")),
            Some(utc("2026-11-27T14:00:00Z"))
        );
        assert_eq!(
            hours.default_calendar().time_zone().iana_name(),
            Some("Asia/Shanghai")
        );
        assert_eq!(
            hours.for_instance("").time_zone().iana_name(),
            Some("Asia/Shanghai")
        );
    }

    #[test]
    fn all_closed_calendar_never_opens() {
        let cal = compile(&calendar("Asia/Shanghai", &[]));
        assert!(!cal.is_open(utc("2026-05-06T04:00:00Z")));
        assert_eq!(cal.next_opening(utc("2026-05-06T04:00:00Z")), None);

        let mut empty_days = every_day("Asia/Shanghai", &[]);
        empty_days.open_dates =
            BTreeMap::from([("2028-01-01".to_string(), vec!["09:00-10:00".to_string()])]);
        let cal = compile(&empty_days);
        // More than 400 days away: not found.
        assert_eq!(cal.next_opening(utc("2026-05-06T04:00:00Z")), None);
        // Within reach: found.
        assert_eq!(
            cal.next_opening(utc("2027-05-06T04:00:00Z")),
            Some(local(&cal, "2028-01-01T09:00"))
        );
    }

    #[test]
    fn validation_errors_name_the_key() {
        let cases: &[(&str, CalendarSettings, &str)] = &[
            (
                "bad time",
                calendar("Asia/Shanghai", &[("mon", &["09:00-12:00", "13:00-25:00"])]),
                "business_hours.weekly.mon[1]",
            ),
            (
                "minutes out of range",
                calendar("Asia/Shanghai", &[("tue", &["09:60-12:00"])]),
                "business_hours.weekly.tue[0]",
            ),
            (
                "single-digit hour",
                calendar("Asia/Shanghai", &[("tue", &["9:00-12:00"])]),
                "business_hours.weekly.tue[0]",
            ),
            (
                "no dash",
                calendar("Asia/Shanghai", &[("tue", &["09:00"])]),
                "business_hours.weekly.tue[0]",
            ),
            (
                "24:00 as a start",
                calendar("Asia/Shanghai", &[("tue", &["24:00-24:00"])]),
                "business_hours.weekly.tue[0]",
            ),
            (
                "start after end",
                calendar("Asia/Shanghai", &[("wed", &["18:00-09:00"])]),
                "business_hours.weekly.wed[0]",
            ),
            (
                "start equals end",
                calendar("Asia/Shanghai", &[("wed", &["09:00-09:00"])]),
                "business_hours.weekly.wed[0]",
            ),
            (
                "overlap",
                calendar("Asia/Shanghai", &[("thu", &["13:00-18:00", "09:00-13:30"])]),
                "business_hours.weekly.thu[1]",
            ),
            (
                "unknown weekday",
                calendar("Asia/Shanghai", &[("monday", &["09:00-18:00"])]),
                "business_hours.weekly.monday",
            ),
            (
                "unknown timezone",
                calendar("Mars/Olympus_Mons", &[("mon", &["09:00-18:00"])]),
                "business_hours.timezone",
            ),
        ];
        for (what, settings, key) in cases {
            let err = error_of(settings);
            assert_eq!(err.key, *key, "{what}: {err}");
            assert!(
                err.to_string().starts_with(&format!("{key}: ")),
                "{what}: {err}"
            );
        }

        let mut bad_closed = calendar("Asia/Shanghai", &[]);
        bad_closed.closed_dates = vec!["2026-10-01".into(), "2026-02-30".into()];
        assert_eq!(error_of(&bad_closed).key, "business_hours.closed_dates[1]");
        bad_closed.closed_dates = vec!["2026/10/01".into()];
        assert_eq!(error_of(&bad_closed).key, "business_hours.closed_dates[0]");

        let mut bad_open = calendar("Asia/Shanghai", &[]);
        bad_open.open_dates = BTreeMap::from([("20260927".to_string(), vec![])]);
        assert_eq!(
            error_of(&bad_open).key,
            "business_hours.open_dates.20260927"
        );
        bad_open.open_dates =
            BTreeMap::from([("2026-09-27".to_string(), vec!["09:00-08:00".to_string()])]);
        assert_eq!(
            error_of(&bad_open).key,
            "business_hours.open_dates.2026-09-27[0]"
        );

        // Touching windows are fine.
        assert!(
            Calendar::new(
                &calendar("Asia/Shanghai", &[("fri", &["12:00-13:00", "09:00-12:00"])]),
                "business_hours"
            )
            .is_ok()
        );
    }

    #[test]
    fn instance_errors_name_the_instance() {
        let mut settings = settings_from(&[NATIONAL_DAY_TOML]).unwrap();
        if let Some(inst) = settings.instances.get_mut("inst-1") {
            inst.closed_dates = vec!["2026-13-01".into()];
        }
        let err = BusinessHours::new(&settings).unwrap_err();
        assert_eq!(err.key, "business_hours.instances.inst-1.closed_dates[0]");

        let mut settings = settings_from(&[NATIONAL_DAY_TOML]).unwrap();
        settings
            .default
            .weekly
            .insert("fri".into(), vec!["nine-to-five".into()]);
        let err = BusinessHours::new(&settings).unwrap_err();
        assert_eq!(err.key, "business_hours.weekly.fri[0]");
    }

    #[test]
    fn deserializes_from_toml() {
        let settings = settings_from(&[NATIONAL_DAY_TOML]).unwrap();
        assert_eq!(settings.default.timezone, "Asia/Shanghai");
        assert_eq!(settings.default.weekly["mon"], ["09:00-18:00"]);
        assert!(settings.default.weekly["sat"].is_empty());
        assert_eq!(settings.default.closed_dates.len(), 7);
        assert_eq!(settings.default.open_dates["2026-10-10"], ["09:00-18:00"]);
        let inst = &settings.instances["inst-1"];
        assert_eq!(inst.timezone, "America/New_York");
        assert_eq!(inst.weekly.len(), 5);
        assert_eq!(inst.closed_dates, ["2026-11-26"]);
        assert!(inst.open_dates.is_empty());

        // The defaults alone: no instances, no dates.
        let settings = settings_from(&[DEFAULT_TOML]).unwrap();
        assert!(settings.instances.is_empty());
        assert!(settings.default.closed_dates.is_empty());
        assert_eq!(settings.default.weekly.len(), 7);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        // A misspelt key must not silently drop the holidays.
        let typo = r#"
[business_hours]
timezone = "Asia/Shanghai"
closed_date = ["2026-10-01"]
[business_hours.weekly]
mon = ["09:00-18:00"]
"#;
        let err = settings_from(&[typo]).unwrap_err().to_string();
        assert!(err.contains("closed_date"), "{err}");

        let instance_typo = r#"
[business_hours]
timezone = "Asia/Shanghai"
[business_hours.weekly]
mon = ["09:00-18:00"]
[business_hours.instances."inst-1"]
timezone = "Asia/Shanghai"
weekly = {}
open_date = {}
"#;
        let err = settings_from(&[instance_typo]).unwrap_err().to_string();
        assert!(err.contains("open_date"), "{err}");
    }

    #[test]
    fn example_layered_over_the_defaults() {
        // As `--config FILE` over config/default.toml: tables merge key by key, lists are
        // replaced, so the explicit `sat = []` / `sun = []` are what close the weekend.
        let hours = hours_from(&[DEFAULT_TOML, NATIONAL_DAY_TOML]);
        let cal = hours.for_instance("inst-2");
        assert!(!cal.is_open(local(cal, "2026-09-19T10:00")));
        assert!(!cal.is_open(local(cal, "2026-09-21T19:00")));
        assert_eq!(
            cal.next_opening(local(cal, "2026-09-30T20:00")),
            Some(local(cal, "2026-10-08T09:00"))
        );
    }
}
