//! `gatewarden query`: trajectories, entry frequency, sign-ins and contacts from the entry
//! records, as an aligned table (local times) or, with `--json`, as a JSON array (unix ms).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use gatewarden::clock::{self, Clock, SystemClock, UtcOffset};
use gatewarden::store::{self, Store};
use gatewarden_protocol::{Category, MarketId, SubjectId, UnixMillis};
use serde::Serialize;

/// Arguments of `gatewarden query`.
#[derive(Debug, clap::Args)]
pub(crate) struct QueryArgs {
    #[command(subcommand)]
    query: QueryCommand,
    /// Data folder.
    #[arg(long, global = true, default_value = super::DEFAULT_DATA)]
    data: PathBuf,
    /// The markets' time zone, in minutes east of UTC (Beijing: 480); sets what a day is and
    /// how times print [default: the site's engine.utc_offset_minutes].
    #[arg(long, global = true, allow_hyphen_values = true)]
    utc_offset: Option<i32>,
    /// Print a JSON array (times in unix ms) instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum QueryCommand {
    /// Every entry record of one person, across markets, in time order.
    Trajectory {
        /// The subject id.
        subject: u64,
        /// From this time: YYYY-MM-DD (local day start) or unix ms. Default: the beginning.
        #[arg(long)]
        since: Option<String>,
        /// Until this time: YYYY-MM-DD (that whole day included) or unix ms (excluded).
        /// Default: no end.
        #[arg(long)]
        until: Option<String>,
    },
    /// Admitted entries per person into one market on one day, most first.
    Frequency {
        /// The market id.
        #[arg(long)]
        market: u32,
        /// The local day, YYYY-MM-DD. Default: today.
        #[arg(long)]
        day: Option<String>,
        /// Only people with at least this many entries.
        #[arg(long, default_value_t = 1)]
        min: u32,
    },
    /// Staff who signed in at one market on one day, with their first sign-in.
    Signins {
        /// The market id.
        #[arg(long)]
        market: u32,
        /// The local day, YYYY-MM-DD. Default: today.
        #[arg(long)]
        day: Option<String>,
    },
    /// Everyone admitted to the same market within a window of one person's admitted passages.
    Contacts {
        /// The subject id.
        subject: u64,
        /// The window either side of each passage: 30m, 2h, 90s...
        #[arg(long, default_value = "30m")]
        window: String,
        /// Only the person's passages from this time: YYYY-MM-DD or unix ms.
        #[arg(long)]
        since: Option<String>,
        /// Only the person's passages until this time: YYYY-MM-DD (included) or unix ms.
        #[arg(long)]
        until: Option<String>,
    },
}

pub(crate) fn run(args: QueryArgs) -> anyhow::Result<()> {
    let config = super::site::open(&args.data)?;
    let minutes = args.utc_offset.unwrap_or(config.engine.utc_offset_minutes);
    anyhow::ensure!(
        (-14 * 60..=14 * 60).contains(&minutes),
        "--utc-offset {minutes} is not a time zone: minutes east of UTC, -840 to 840"
    );
    let offset = UtcOffset(minutes);
    let store = open_existing(&args.data, &config)?;
    let out = Output {
        json: args.json,
        offset,
    };
    match args.query {
        QueryCommand::Trajectory {
            subject,
            since,
            until,
        } => {
            let (since, until) = range(since.as_deref(), until.as_deref(), offset)?;
            let rows = store.trajectory(SubjectId(subject), since, until)?;
            out.entries(&rows)
        }
        QueryCommand::Frequency { market, day, min } => {
            let (since, until) = day_range(day.as_deref(), offset)?;
            let rows = store.frequency(MarketId(market), since, until, min)?;
            out.frequency(&rows)
        }
        QueryCommand::Signins { market, day } => {
            let (since, until) = day_range(day.as_deref(), offset)?;
            let rows = store.signins(MarketId(market), since, until)?;
            out.signins(&rows)
        }
        QueryCommand::Contacts {
            subject,
            window,
            since,
            until,
        } => {
            let window_ms = clock::parse_duration_ms(&window).context("bad --window")?;
            let (since, until) = range(since.as_deref(), until.as_deref(), offset)?;
            let rows = store.contacts(SubjectId(subject), window_ms, since, until)?;
            out.contacts(&rows)
        }
    }
}

/// Opens the store of a data folder that must already have one: a query never creates it.
fn open_existing(data: &Path, config: &gatewarden::Config) -> anyhow::Result<Store> {
    let dir = data.join("store");
    anyhow::ensure!(
        config
            .store
            .as_ref()
            .is_some_and(|l| *l != store::StoreLocation::Sqlite)
            || dir.join(store::DB_FILE).exists(),
        "no store in {}: import subjects or run the server first, or pass --data",
        dir.display()
    );
    super::site::open_store(data, config)
}

/// Parses a time bound: unix ms as given, or a local date (its start, or with `end` the start
/// of the next day, so that `--until D` includes day D).
fn parse_time(s: &str, offset: UtcOffset, end: bool) -> anyhow::Result<UnixMillis> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(UnixMillis(
            s.parse()
                .with_context(|| format!("time {s} is too large"))?,
        ));
    }
    let day = clock::parse_day(s)
        .with_context(|| format!("invalid time {s:?}: expected YYYY-MM-DD or unix milliseconds"))?;
    Ok(offset.day_start(if end { day + 1 } else { day }))
}

fn range(
    since: Option<&str>,
    until: Option<&str>,
    offset: UtcOffset,
) -> anyhow::Result<(UnixMillis, UnixMillis)> {
    let since = since.map_or(Ok(UnixMillis(0)), |s| parse_time(s, offset, false))?;
    let until = until.map_or(Ok(UnixMillis(u64::MAX)), |s| parse_time(s, offset, true))?;
    anyhow::ensure!(since < until, "--since must come before --until");
    Ok((since, until))
}

/// A local day's bounds; today when no day is given.
fn day_range(day: Option<&str>, offset: UtcOffset) -> anyhow::Result<(UnixMillis, UnixMillis)> {
    let day = match day {
        Some(d) => clock::parse_day(d).context("bad --day")?,
        None => offset.day_of(SystemClock.now()),
    };
    Ok((offset.day_start(day), offset.day_start(day + 1)))
}

/// Prints rows as a table or as JSON.
struct Output {
    json: bool,
    offset: UtcOffset,
}

impl Output {
    fn time(&self, t: UnixMillis) -> String {
        clock::format_local(t, self.offset)
    }

    fn print<T: Serialize>(
        &self,
        rows: &[T],
        headers: &[&str],
        cells: impl Fn(&T) -> Vec<String>,
    ) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(rows)?);
            return Ok(());
        }
        let body: Vec<Vec<String>> = rows.iter().map(cells).collect();
        print!("{}", table(headers, &body));
        eprintln!("{} row(s)", rows.len());
        Ok(())
    }

    fn entries(&self, rows: &[store::EntryRow]) -> anyhow::Result<()> {
        let headers = [
            "time", "market", "zone", "gate", "seq", "mode", "dir", "decision", "score", "failed",
        ];
        self.print(rows, &headers, |r| {
            vec![
                self.time(r.decided_at),
                r.market.to_string(),
                r.zone.to_string(),
                r.gate.to_string(),
                r.seq.to_string(),
                r.mode.name().to_owned(),
                r.direction.name().to_owned(),
                r.decision.name().to_owned(),
                r.score.map_or_else(String::new, |s| format!("{s:.3}")),
                r.failed
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
    }

    fn frequency(&self, rows: &[store::FrequencyRow]) -> anyhow::Result<()> {
        let headers = ["subject", "category", "entries", "first", "last"];
        self.print(rows, &headers, |r| {
            vec![
                r.subject.to_string(),
                category(r.category),
                r.entries.to_string(),
                self.time(r.first_at),
                self.time(r.last_at),
            ]
        })
    }

    fn signins(&self, rows: &[store::SignInRow]) -> anyhow::Result<()> {
        let headers = ["subject", "category", "signed in", "gate", "zone"];
        self.print(rows, &headers, |r| {
            vec![
                r.subject.to_string(),
                category(r.category),
                self.time(r.first_at),
                r.gate.to_string(),
                r.zone.to_string(),
            ]
        })
    }

    fn contacts(&self, rows: &[store::ContactRow]) -> anyhow::Result<()> {
        let headers = [
            "subject", "category", "market", "first", "last", "passages", "closest",
        ];
        self.print(rows, &headers, |r| {
            vec![
                r.subject.to_string(),
                category(r.category),
                r.market.to_string(),
                self.time(r.first_at),
                self.time(r.last_at),
                r.passages.to_string(),
                format!("{} s", r.closest_ms / 1000),
            ]
        })
    }
}

fn category(c: Option<Category>) -> String {
    c.map_or("-", Category::name).to_owned()
}

/// Left-aligned columns, two spaces apart, with a rule under the header.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let padded: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(&mut headers.iter().copied());
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&line(&mut rule.iter().map(String::as_str)));
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["a", "bb"],
            &[
                vec!["xyz".to_owned(), "1".to_owned()],
                vec!["q".to_owned(), "22".to_owned()],
            ],
        );
        assert_eq!(t, "a    bb\n---  --\nxyz  1\nq    22\n");
    }

    #[test]
    fn times_parse_as_dates_or_millis() {
        let beijing = UtcOffset(480);
        let day = clock::parse_day("2026-11-29").unwrap();
        assert_eq!(
            parse_time("2026-11-29", beijing, false).unwrap(),
            beijing.day_start(day)
        );
        assert_eq!(
            parse_time("2026-11-29", beijing, true).unwrap(),
            beijing.day_start(day + 1)
        );
        assert_eq!(
            parse_time("1780000000000", beijing, true).unwrap(),
            UnixMillis(1_780_000_000_000)
        );
        assert!(parse_time("yesterday", beijing, false).is_err());
        assert!(range(Some("2026-11-29"), Some("2026-11-28"), beijing).is_err());
    }
}
