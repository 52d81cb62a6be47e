//! `gatewarden store stats` and `gatewarden store prune`: what the entry history holds, and
//! retention by hand.
//!
//! `stats` only reads the partition files, so it works while a server runs on the site.
//! `prune` deletes files, so like every CLI write it locks the site (a running server prunes
//! by itself, at start-up and hourly).

use std::path::PathBuf;

use gatewarden::clock::{Clock, SystemClock};
use gatewarden::store::{ENTRIES_DIR, HistoryStats, history_stats_in};

/// Arguments of `gatewarden store`.
#[derive(Debug, clap::Args)]
pub(crate) struct StoreArgs {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(Debug, clap::Subcommand)]
enum StoreCommand {
    /// Entries per day partition, bytes per entry, write-ahead log size, oldest and newest
    /// day. Safe while a server runs.
    Stats(StatsArgs),
    /// Delete the day partitions older than `[retention] entry_days` (or --entry-days) now,
    /// as whole files. Refused while a server runs on the site: it prunes by itself hourly.
    Prune(PruneArgs),
}

#[derive(Debug, clap::Args)]
struct StatsArgs {
    /// Data folder.
    #[arg(long, default_value = super::DEFAULT_DATA)]
    data: PathBuf,
    /// Print JSON (`bytes_per_entry`, `partitions`, ...) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct PruneArgs {
    /// Data folder.
    #[arg(long, default_value = super::DEFAULT_DATA)]
    data: PathBuf,
    /// Keep this many days (today, UTC, included) instead of the configured
    /// `[retention] entry_days`; may only be shorter.
    #[arg(long, value_name = "DAYS")]
    entry_days: Option<u32>,
}

pub(crate) fn run(args: StoreArgs) -> anyhow::Result<()> {
    match args.command {
        StoreCommand::Stats(a) => stats(&a),
        StoreCommand::Prune(a) => prune(&a),
    }
}

fn stats(args: &StatsArgs) -> anyhow::Result<()> {
    let config = super::site::open(&args.data)?;
    let stats = match &config.store {
        // PostgreSQL: the partitions are in the database (opening it does not lock the site,
        // so this works beside a running server, as the SQLite files do).
        Some(location) if *location != gatewarden::store::StoreLocation::Sqlite => {
            super::site::open_store(&args.data, &config)?.history_stats()?
        }
        _ => history_stats_in(&args.data.join("store").join(ENTRIES_DIR))?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        print!("{}", table(&stats));
    }
    Ok(())
}

fn table(s: &HistoryStats) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:>10} {:>12} {:>10} {:>10}",
        "day", "entries", "bytes", "B/entry", "wal"
    );
    for p in &s.partitions {
        let per = if p.entries > 0 {
            format!("{:.0}", p.bytes as f64 / p.entries as f64)
        } else {
            "-".to_owned()
        };
        let _ = writeln!(
            out,
            "{:<12} {:>10} {:>12} {:>10} {:>10}",
            p.day, p.entries, p.bytes, per, p.wal_bytes
        );
    }
    let _ = writeln!(
        out,
        "{} partitions ({} .. {}), {} entries, {} bytes, {} bytes per entry, {} bytes of log",
        s.partitions.len(),
        s.oldest_day.as_deref().unwrap_or("-"),
        s.newest_day.as_deref().unwrap_or("-"),
        s.entries,
        s.bytes,
        s.bytes_per_entry
            .map_or_else(|| "-".to_owned(), |b| format!("{b:.0}")),
        s.wal_bytes
    );
    out
}

fn prune(args: &PruneArgs) -> anyhow::Result<()> {
    let config = super::site::open(&args.data)?;
    let configured = config.retention.entry_days;
    let days = match args.entry_days {
        Some(0) => anyhow::bail!("--entry-days 0: today's entries are always kept; use 1 or more"),
        Some(d) if d > configured => anyhow::bail!(
            "--entry-days {d} is longer than the configured [retention] entry_days = {configured}; \
             entries past the configured retention may not be kept"
        ),
        Some(d) => d,
        None => configured,
    };
    let _lock = super::site::SiteLock::acquire(&args.data, "gatewarden store prune")?;
    let store = super::site::open_store(&args.data, &config)?;
    let pruned = store.prune_entries(SystemClock.now(), days)?;
    if pruned.is_empty() {
        println!("nothing older than {days} days; nothing deleted");
    }
    for p in &pruned {
        println!(
            "deleted {}: {} entries, {} bytes",
            p.day, p.entries, p.bytes
        );
    }
    if !pruned.is_empty() {
        let entries: u64 = pruned.iter().map(|p| p.entries).sum();
        println!(
            "{} partitions deleted ({entries} entries); keeping {days} days",
            pruned.len()
        );
    }
    Ok(())
}
