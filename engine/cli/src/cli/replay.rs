//! `gatewarden policy replay`: what a new policy would have decided over recorded days.
//!
//! Reads the site's entry history and registry read-only (a running server is not
//! disturbed, nothing is written) and prints the report of [`gatewarden::whatif::replay`].

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use gatewarden::clock::{self, UtcOffset};
use gatewarden::store::{DB_FILE, EntryArchive};
use gatewarden::whatif::{self, ReplayRange, ReplayReport};
use gatewarden_protocol::MarketId;
use serde::Serialize;

/// Arguments of `gatewarden policy replay`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReplayArgs {
    /// Data folder.
    #[arg(long, default_value = super::DEFAULT_DATA)]
    data: PathBuf,
    /// The policy to try (the site's own is not changed).
    #[arg(long)]
    policy: PathBuf,
    /// First local day to replay (YYYY-MM-DD).
    #[arg(long, value_name = "DAY")]
    from: String,
    /// Last local day to replay, included (YYYY-MM-DD).
    #[arg(long, value_name = "DAY")]
    to: String,
    /// Only this market's entries.
    #[arg(long, value_name = "M")]
    market: Option<u32>,
    /// How many changed entries to show.
    #[arg(long, default_value_t = 10)]
    examples: usize,
    /// Print JSON (`changed`, `transitions`, `by_market`, `by_check`, ...) instead of text.
    #[arg(long)]
    json: bool,
}

/// The JSON document: the range asked for, then the report.
#[derive(Serialize)]
struct JsonReport<'a> {
    from: &'a str,
    to: &'a str,
    market: Option<u32>,
    missing_days: &'a [String],
    #[serde(flatten)]
    report: &'a ReplayReport,
}

pub(crate) fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let config = super::site::open(&args.data)?;
    let offset = config.engine.utc_offset();
    let book = super::policy::load_or_report(&args.policy)?;
    let (first, last) = days(&args.from, &args.to)?;
    let store_dir = args.data.join("store");
    anyhow::ensure!(
        config.store.is_some() || store_dir.join(DB_FILE).is_file(),
        "no store in {}: nothing has been recorded there",
        store_dir.display()
    );
    let archive = EntryArchive::open_at(config.store.as_ref(), &store_dir)
        .with_context(|| format!("cannot read the entry history in {}", store_dir.display()))?;
    let missing = missing_days(&archive, offset, first, last)?;
    let range = ReplayRange {
        since: offset.day_start(first),
        until: offset.day_start(last + 1),
        market: args.market.map(MarketId),
        examples: args.examples,
    };
    let tty = std::io::stderr().is_terminal() && !args.json;
    let report = whatif::replay(&archive, &book, offset, &range, |n| {
        if tty {
            eprint!("\rreplaying: {n} entries read");
        }
    })?;
    if tty {
        eprintln!();
    }
    if args.json {
        let doc = JsonReport {
            from: &args.from,
            to: &args.to,
            market: args.market,
            missing_days: &missing,
            report: &report,
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "replay of {} to {}{} under {}",
        args.from,
        args.to,
        args.market
            .map_or(String::new(), |m| format!(", market {m}")),
        args.policy.display()
    );
    if !missing.is_empty() {
        println!("days with no entries: {}", missing.join(", "));
    }
    print!("{}", report.render());
    Ok(())
}

/// The local days `from..=to`, parsed.
fn days(from: &str, to: &str) -> anyhow::Result<(i64, i64)> {
    let parse = |flag: &str, s: &str| {
        clock::parse_day(s).with_context(|| format!("bad --{flag} {s:?}: expected YYYY-MM-DD"))
    };
    let (first, last) = (parse("from", from)?, parse("to", to)?);
    anyhow::ensure!(first <= last, "--from {from} comes after --to {to}");
    anyhow::ensure!(
        last - first < 3660,
        "--from {from} to --to {to} spans more than ten years"
    );
    Ok((first, last))
}

/// The local days of the range that no partition covers; an error when none is covered, so
/// that a mistyped day is not reported as "nothing would change".
fn missing_days(
    archive: &EntryArchive,
    offset: UtcOffset,
    first: i64,
    last: i64,
) -> anyhow::Result<Vec<String>> {
    let have = archive.days();
    let missing: Vec<String> = whatif::missing_days(archive, offset, first, last)
        .into_iter()
        .map(clock::format_day)
        .collect();
    if missing.len() as i64 == last - first + 1 {
        let recorded = match (have.first(), have.last()) {
            (Some(&a), Some(&b)) => format!(
                "entries are recorded from {} to {} (UTC days)",
                clock::format_day(a),
                clock::format_day(b)
            ),
            _ => "no entries are recorded at all".to_owned(),
        };
        anyhow::bail!(
            "no entries recorded between {} and {}: {recorded}",
            clock::format_day(first),
            clock::format_day(last)
        );
    }
    Ok(missing)
}
