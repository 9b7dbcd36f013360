//! The four `dead` commands, each one walk with its own decision, and how their results print.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::sweep::{Pace, WalkError, Walked, walk};
use super::{Decision, Filter, Parked, ReplayRules, Skip};
use crate::config::AmqpSettings;

/// What the walk reports as it goes: `(read, counted)`.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// `dead list`: the matching messages, oldest first (at most `limit` of them); every message
/// goes back in its order.
#[derive(Debug, Serialize)]
pub struct Listing {
    pub matched: u64,
    pub shown: Vec<Parked>,
    #[serde(skip)]
    pub walked: Walked,
}

pub async fn list(
    amqp: &AmqpSettings,
    filter: &Filter,
    limit: Option<usize>,
    stop: &CancellationToken,
    progress: Progress<'_>,
) -> Result<Listing, WalkError> {
    let mut listing = Listing {
        matched: 0,
        shown: Vec::new(),
        walked: Walked::default(),
    };
    listing.walked = walk(amqp, stop, Pace(None), progress, |parked| {
        if filter.matches(parked) {
            listing.matched += 1;
            if limit.is_none_or(|limit| listing.shown.len() < limit) {
                listing.shown.push(parked.clone());
            }
        }
        Decision::Keep
    })
    .await?;
    Ok(listing)
}

/// `dead summary`: counts of the matching messages by reason and by instance.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub total: u64,
    pub by_reason: BTreeMap<String, u64>,
    pub by_instance: BTreeMap<String, u64>,
    #[serde(skip)]
    pub walked: Walked,
}

pub async fn summary(
    amqp: &AmqpSettings,
    filter: &Filter,
    stop: &CancellationToken,
    progress: Progress<'_>,
) -> Result<Summary, WalkError> {
    let mut summary = Summary::default();
    summary.walked = walk(amqp, stop, Pace(None), progress, |parked| {
        if filter.matches(parked) {
            summary.total += 1;
            *summary.by_reason.entry(parked.reason.clone()).or_default() += 1;
            let instance = parked.instance_id.clone().unwrap_or_else(|| "-".to_owned());
            *summary.by_instance.entry(instance).or_default() += 1;
        }
        Decision::Keep
    })
    .await?;
    Ok(summary)
}

/// `dead replay` and `dead purge`: what matched, what was done (or, in a dry run, would have
/// been), and what was left parked and why.
#[derive(Debug, Default, Serialize)]
pub struct Acted {
    pub matched: u64,
    /// Replayed or purged; in a dry run, what would have been.
    pub acted: u64,
    pub dry_run: bool,
    pub skipped: BTreeMap<Skip, u64>,
    /// Stopped (Ctrl-C) before the whole queue was read.
    pub stopped: bool,
    #[serde(skip)]
    pub walked: Walked,
}

/// Replays the matching messages that `rules` allow, at most one per `rate` interval.
pub async fn replay(
    amqp: &AmqpSettings,
    filter: &Filter,
    rules: &ReplayRules,
    rate: Option<f64>,
    dry_run: bool,
    stop: &CancellationToken,
    progress: Progress<'_>,
) -> Result<Acted, WalkError> {
    let pace = Pace(
        rate.filter(|r| r.is_finite() && *r > 0.0)
            .and_then(|r| Duration::try_from_secs_f64(1.0 / r).ok()),
    );
    let mut acted = Acted {
        dry_run,
        ..Acted::default()
    };
    acted.walked = walk(amqp, stop, pace, progress, |parked| {
        if !filter.matches(parked) {
            return Decision::Keep;
        }
        acted.matched += 1;
        match rules.decide(parked, acted.acted) {
            Ok(decision) => {
                acted.acted += 1;
                if dry_run { Decision::Keep } else { decision }
            }
            Err(skip) => {
                *acted.skipped.entry(skip).or_default() += 1;
                Decision::Keep
            }
        }
    })
    .await?;
    acted.stopped = acted.walked.stopped;
    Ok(acted)
}

/// Deletes the matching messages (only counts them unless `yes`).
pub async fn purge(
    amqp: &AmqpSettings,
    filter: &Filter,
    yes: bool,
    stop: &CancellationToken,
    progress: Progress<'_>,
) -> Result<Acted, WalkError> {
    let mut acted = Acted {
        dry_run: !yes,
        ..Acted::default()
    };
    acted.walked = walk(amqp, stop, Pace(None), progress, |parked| {
        if !filter.matches(parked) {
            return Decision::Keep;
        }
        acted.matched += 1;
        acted.acted += 1;
        if yes { Decision::Purge } else { Decision::Keep }
    })
    .await?;
    acted.stopped = acted.walked.stopped;
    Ok(acted)
}

/// The longest detail shown in a table cell; `--json` has it whole.
const DETAIL_WIDTH: usize = 60;

/// `dead list` as a table.
pub fn print_listing(listing: &Listing, out: &mut impl Write) -> io::Result<()> {
    let rows: Vec<[String; 7]> = listing
        .shown
        .iter()
        .map(|p| {
            [
                p.request_id.clone().unwrap_or_else(|| "-".into()),
                p.reason.clone(),
                p.parked_at.map_or_else(|| "-".into(), |at| at.to_string()),
                match (&p.died_in, p.deaths) {
                    (Some(queue), Some(n)) => format!("{n}x in {queue}"),
                    _ => "-".into(),
                },
                p.instance_id.clone().unwrap_or_else(|| "-".into()),
                p.replays.to_string(),
                shorten(p.detail.as_deref().unwrap_or("-"), DETAIL_WIDTH),
            ]
        })
        .collect();
    let header = [
        "REQUEST_ID",
        "REASON",
        "PARKED_AT",
        "DIED",
        "INSTANCE",
        "REPLAYS",
        "DETAIL",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str], out: &mut dyn Write| -> io::Result<()> {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(&header, out)?;
    for row in &rows {
        line(&row.each_ref().map(String::as_str), out)?;
    }
    writeln!(
        out,
        "{} of {} parked messages match; {} shown",
        listing.matched,
        listing.walked.read,
        listing.shown.len()
    )
}

/// `dead summary` as two small tables.
pub fn print_summary(summary: &Summary, out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "{} of {} parked messages match",
        summary.total, summary.walked.read
    )?;
    for (title, counts) in [
        ("REASON", &summary.by_reason),
        ("INSTANCE", &summary.by_instance),
    ] {
        writeln!(out)?;
        let width = counts
            .keys()
            .map(|k| k.chars().count())
            .max()
            .unwrap_or(0)
            .max(title.len());
        writeln!(out, "{title:<width$}  COUNT")?;
        for (key, count) in counts {
            writeln!(out, "{key:<width$}  {count}")?;
        }
    }
    Ok(())
}

/// The final word of `dead replay` or `dead purge`.
pub fn print_acted(acted: &Acted, verb: &str, out: &mut impl Write) -> io::Result<()> {
    let done = if acted.dry_run {
        format!("would be {verb}")
    } else {
        verb.to_owned()
    };
    writeln!(
        out,
        "{} matched of {} read; {} {done}",
        acted.matched, acted.walked.read, acted.acted
    )?;
    for (skip, count) in &acted.skipped {
        writeln!(out, "{count} left parked: {}", skip.as_str())?;
    }
    if acted.stopped {
        writeln!(
            out,
            "stopped before the end: {} of {} read; run it again for the rest",
            acted.walked.read, acted.walked.counted
        )?;
    }
    Ok(())
}

fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(width.saturating_sub(1)).collect();
    short.push('…');
    short
}
