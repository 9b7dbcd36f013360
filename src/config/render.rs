//! The settings serialized back to TOML for `check-config`: secrets redacted, the calendar in
//! the file's own form.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde::{Serialize, Serializer};

use crate::gates::hours::{BusinessHoursSettings, CalendarSettings};

/// What a secret prints as.
pub(super) const REDACTED: &str = "***";

/// `url` with its password replaced by [`REDACTED`], so operators can still check the user,
/// host and vhost; all of it redacted if it does not parse as a URL (it might be a password
/// pasted in the wrong place).
pub(super) fn redacted_url(url: &SecretString) -> String {
    let Ok(mut parsed) = url::Url::parse(url.expose_secret()) else {
        return REDACTED.to_owned();
    };
    if parsed.password().is_some() && parsed.set_password(Some(REDACTED)).is_err() {
        return REDACTED.to_owned();
    }
    parsed.into()
}

pub(super) fn serialize_url<S: Serializer>(
    url: &SecretString,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redacted_url(url))
}

/// A secret: [`REDACTED`] when set, `""` when not (so an operator sees which).
pub(crate) fn serialize_secret<S: Serializer>(
    secret: &SecretString,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(if secret.expose_secret().is_empty() {
        ""
    } else {
        REDACTED
    })
}

/// `amqp.url`: each node's URL redacted, as the comma-separated list it can be read back as.
pub(super) fn serialize_urls<S: Serializer>(
    urls: &SecretString,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let redacted: Vec<String> = super::split_urls(urls.expose_secret())
        .into_iter()
        .map(|url| redacted_url(&SecretString::from(url)))
        .collect();
    serializer.serialize_str(&redacted.join(","))
}

/// One calendar in its configuration shape; plain lists before tables, as TOML needs.
#[derive(Serialize)]
struct CalendarView<'a> {
    timezone: &'a str,
    closed_dates: &'a [String],
    #[serde(serialize_with = "serialize_weekly")]
    weekly: &'a BTreeMap<String, Vec<String>>,
    open_dates: &'a BTreeMap<String, Vec<String>>,
}

impl<'a> CalendarView<'a> {
    fn new(calendar: &'a CalendarSettings) -> Self {
        // Destructured, so a new calendar key fails to compile here until it is printed too.
        let CalendarSettings {
            timezone,
            weekly,
            closed_dates,
            open_dates,
        } = calendar;
        CalendarView {
            timezone,
            closed_dates,
            weekly,
            open_dates,
        }
    }
}

/// Weekdays in calendar order (Monday first), as in `config/default.toml`, rather than
/// alphabetically; any other key after them.
pub(super) fn serialize_weekly<S: Serializer>(
    weekly: &&BTreeMap<String, Vec<String>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    const ORDER: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let rank = |day: &str| ORDER.iter().position(|d| *d == day).unwrap_or(ORDER.len());
    let mut days: Vec<_> = weekly.iter().collect();
    days.sort_by_key(|(day, _)| rank(day));
    serializer.collect_map(days)
}

/// `[business_hours]` as written in the file: the default calendar's keys side by side with
/// `instances` (the in-memory shape nests them under `default`).
#[derive(Serialize)]
struct BusinessHoursView<'a> {
    #[serde(flatten)]
    default: CalendarView<'a>,
    instances: BTreeMap<&'a str, CalendarView<'a>>,
}

pub(super) fn serialize_business_hours<S: Serializer>(
    hours: &BusinessHoursSettings,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let BusinessHoursSettings { default, instances } = hours;
    BusinessHoursView {
        default: CalendarView::new(default),
        instances: instances
            .iter()
            .map(|(id, calendar)| (id.as_str(), CalendarView::new(calendar)))
            .collect(),
    }
    .serialize(serializer)
}
