//! `/metrics`: the engine and server counters in the Prometheus text format (0.0.4).
//!
//! The pipeline keeps latencies in log2 buckets of microseconds (bucket `i` holds integer
//! values in `[2^i, 2^(i+1))`), so bucket `i` becomes the cumulative bucket
//! `le = 2^(i+1) - 1` (in seconds for latencies). The last bucket also holds everything
//! larger, so it is only reported as `+Inf`.

use std::fmt::Write;

use gatewarden_protocol::CheckKind;

use crate::pipeline::stats::{DecisionSnapshot, HistogramSnapshot, StatsSnapshot};
use crate::server::ServerStatsSnapshot;

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every metric. Pure: the same snapshots give the same text.
pub fn render(stats: &StatsSnapshot, server: &ServerStatsSnapshot) -> String {
    let mut out = Text(String::with_capacity(16 * 1024));
    let name = "gatewarden_policy_info";
    out.family(
        name,
        "gauge",
        "The policy in force: its version (hash of the policy file's canonical content).",
    );
    out.sample(name, &[("version", &stats.policy_version)], 1);
    decisions(&mut out, stats);
    counters(&mut out, stats, server);
    gauges(&mut out, stats, server);
    registry(&mut out, stats);
    histograms(&mut out, stats);
    out.0
}

/// The output, with the TYPE/HELP header of each family.
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                // Label values here are names and numbers; escaping keeps the format valid
                // whatever they become.
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.0, "{k}=\"{v}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

fn by_decision(d: &DecisionSnapshot) -> [(&'static str, u64); 3] {
    [
        ("admit", d.admit),
        ("deny", d.deny),
        ("escalate", d.escalate),
    ]
}

fn decisions(out: &mut Text, stats: &StatsSnapshot) {
    let name = "gatewarden_events_total";
    out.family(name, "counter", "Recorded verdicts by decision.");
    for (decision, n) in by_decision(&stats.decisions) {
        out.sample(name, &[("decision", decision)], n);
    }
    let name = "gatewarden_market_events_total";
    out.family(name, "counter", "Recorded verdicts by market and decision.");
    for m in &stats.markets {
        let market = m.market.0.to_string();
        for (decision, n) in by_decision(&m.decisions) {
            out.sample(name, &[("market", &market), ("decision", decision)], n);
        }
    }
    let name = "gatewarden_failed_checks_total";
    out.family(
        name,
        "counter",
        "Failed policy checks by check (a verdict may fail several).",
    );
    // Every check is listed, zero or not, so the series exist from the start.
    for kind in CheckKind::ALL {
        let n = stats
            .decisions
            .failed_checks
            .get(kind.name())
            .copied()
            .unwrap_or(0);
        out.sample(name, &[("check", kind.name())], n);
    }
}

fn counters(out: &mut Text, stats: &StatsSnapshot, server: &ServerStatsSnapshot) {
    let name = "gatewarden_busy_total";
    out.family(
        name,
        "counter",
        "Events answered Busy: refused on arrival (queue full or standing), or past their deadline.",
    );
    out.sample(name, &[("reason", "admission")], stats.rejected_busy);
    out.sample(name, &[("reason", "deadline")], stats.expired);
    let plain: [(&str, &str, u64); 14] = [
        (
            "gatewarden_submitted_total",
            "Events accepted into the queue.",
            stats.submitted,
        ),
        (
            "gatewarden_replayed_total",
            "Repeated (gate, seq) answered from the record.",
            stats.replayed,
        ),
        (
            "gatewarden_seq_reused_total",
            "Events refused because their (gate, seq) was recorded for a different event.",
            stats.seq_reused,
        ),
        (
            "gatewarden_internal_errors_total",
            "Events that failed closed on an internal error.",
            stats.internal_errors,
        ),
        (
            "gatewarden_commit_failures_total",
            "Group commits that failed.",
            stats.commit_failures,
        ),
        (
            "gatewarden_entry_checkpoints_total",
            "Checkpoint passes over the entry partitions (by the maintenance thread).",
            stats.history.checkpoints,
        ),
        (
            "gatewarden_entry_checkpoint_failures_total",
            "Checkpoint passes that failed (retried on the next pass).",
            stats.history.checkpoint_failures,
        ),
        (
            "gatewarden_pruned_partitions_total",
            "Entry partitions (days) deleted by retention.",
            stats.history.pruned_partitions,
        ),
        (
            "gatewarden_pruned_entries_total",
            "Entry records deleted by retention.",
            stats.history.pruned_entries,
        ),
        (
            "gatewarden_server_malformed_total",
            "QUIC requests that failed to decode.",
            server.malformed,
        ),
        (
            "gatewarden_server_gate_mismatch_total",
            "Events refused because they named another gate.",
            server.gate_mismatch,
        ),
        (
            "gatewarden_server_handshakes_refused_total",
            "Handshakes refused because max_handshakes were already in progress.",
            server.handshakes_refused,
        ),
        (
            "gatewarden_server_handshakes_retried_total",
            "Handshakes from unvalidated addresses answered with a QUIC Retry (half of max_handshakes in progress).",
            server.handshakes_retried,
        ),
        (
            "gatewarden_server_redirected_total",
            "Hellos and events sent to another node: this node does not serve the gate's market.",
            server.redirected,
        ),
    ];
    for (name, help, n) in plain {
        out.single(name, "counter", help, n);
    }
}

fn gauges(out: &mut Text, stats: &StatsSnapshot, server: &ServerStatsSnapshot) {
    let gauges: [(&str, &str, usize); 4] = [
        (
            "gatewarden_queue_depth",
            "Events waiting for a matcher.",
            stats.queue_depth,
        ),
        (
            "gatewarden_queue_capacity",
            "Queue capacity.",
            stats.queue_capacity,
        ),
        (
            "gatewarden_connections",
            "Open QUIC connections (gates and admins).",
            server.connections,
        ),
        (
            "gatewarden_streams_in_flight",
            "QUIC streams being served.",
            server.streams_in_flight,
        ),
    ];
    for (name, help, n) in gauges {
        out.single(name, "gauge", help, n);
    }
    out.single(
        "gatewarden_entry_wal_bytes",
        "gauge",
        "Write-ahead log bytes of the entry partitions after the last checkpoint pass.",
        stats.history.wal_bytes,
    );
    out.single(
        "gatewarden_entry_wal_peak_bytes",
        "gauge",
        "The largest write-ahead log total a checkpoint pass has found since start-up.",
        stats.history.wal_peak_bytes,
    );
    out.single(
        "gatewarden_entry_checkpoint_hold_max_seconds",
        "gauge",
        "The longest a checkpoint has held commits back (to make a write-ahead log start over) \
         since start-up.",
        stats.history.restart_hold_max_us as f64 / 1e6,
    );
    out.single(
        "gatewarden_counters_start_from_snapshot",
        "gauge",
        "1 if start-up read today's counters from the snapshot and the entries after it, 0 if \
         it read the whole day.",
        u8::from(stats.counters_start.from_snapshot),
    );
    out.single(
        "gatewarden_counters_start_passages",
        "gauge",
        "Passages start-up read from the entry log to rebuild today's counters.",
        stats.counters_start.passages_read,
    );
}

/// The registry follower's counters, on the PostgreSQL store only.
fn registry(out: &mut Text, stats: &StatsSnapshot) {
    let Some(r) = stats.registry else { return };
    out.single(
        "gatewarden_registry_watermark",
        "gauge",
        "The registry change-log id this node has applied up to (other nodes' writes included).",
        r.watermark,
    );
    out.single(
        "gatewarden_registry_lag_seconds",
        "gauge",
        "Age of the last registry change applied when it was read, by the database's clock.",
        r.lag_ms as f64 / 1000.0,
    );
    out.single(
        "gatewarden_registry_changes_applied_total",
        "counter",
        "Registry changes applied to this node's cache and gallery.",
        r.applied,
    );
    out.single(
        "gatewarden_registry_polls_total",
        "counter",
        "Reads of the registry change log.",
        r.polls,
    );
    out.single(
        "gatewarden_registry_notifications_total",
        "counter",
        "Registry change notifications received.",
        r.notifications,
    );
    out.single(
        "gatewarden_registry_connects_total",
        "counter",
        "Connections the registry follower made (1 plus its reconnections).",
        r.connects,
    );
}

fn histograms(out: &mut Text, stats: &StatsSnapshot) {
    let name = "gatewarden_stage_seconds";
    out.family(name, "histogram", "Latency per pipeline stage.");
    for (stage, h) in [
        ("queue_wait", &stats.queue_wait_us),
        ("matching", &stats.matching_us),
        ("commit", &stats.commit_us),
        ("end_to_end", &stats.end_to_end_us),
    ] {
        histogram(out, name, Some(("stage", stage)), h, 1e-6);
    }
    let name = "gatewarden_batch_size";
    out.family(name, "histogram", "Events per matcher batch.");
    histogram(out, name, None, &stats.batch_size, 1.0);
    let name = "gatewarden_commit_size";
    out.family(name, "histogram", "Records per group commit.");
    histogram(out, name, None, &stats.commit_size, 1.0);
}

/// One histogram's `_bucket`, `_sum` and `_count` samples; `scale` converts the recorded unit.
fn histogram(
    out: &mut Text,
    name: &str,
    label: Option<(&str, &str)>,
    h: &HistogramSnapshot,
    scale: f64,
) {
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0u64;
    let last = h.buckets.len().saturating_sub(1);
    for (i, n) in h.buckets.iter().enumerate().take(last) {
        cumulative += n;
        let le = ((1u64 << (i + 1)) - 1) as f64 * scale;
        let le = le.to_string();
        let mut labels: Vec<(&str, &str)> = label.into_iter().collect();
        labels.push(("le", &le));
        out.sample(&bucket, &labels, cumulative);
    }
    let mut labels: Vec<(&str, &str)> = label.into_iter().collect();
    labels.push(("le", "+Inf"));
    out.sample(&bucket, &labels, h.count);
    let labels: Vec<(&str, &str)> = label.into_iter().collect();
    out.sample(
        &format!("{name}_sum"),
        &labels,
        h.mean * h.count as f64 * scale,
    );
    out.sample(&format!("{name}_count"), &labels, h.count);
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use gatewarden_protocol::MarketId;

    use super::*;
    use crate::pipeline::stats::MarketStats;

    /// One parsed sample line.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    /// Parses the text format strictly enough to catch malformed lines.
    fn parse(text: &str) -> (Vec<Sample>, HashMap<String, String>) {
        let mut samples = Vec::new();
        let mut types = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "{line}"
                );
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), BTreeMap::new()),
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').unwrap();
                    let labels = inner
                        .split(',')
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').unwrap();
                            let v = v.strip_prefix('"').unwrap().strip_suffix('"').unwrap();
                            (k.to_owned(), v.to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
            };
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "bad name in {line:?}"
            );
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
                .unwrap_or(&name);
            assert!(types.contains_key(family), "no TYPE before {line:?}");
            samples.push(Sample {
                name,
                labels,
                value,
            });
        }
        (samples, types)
    }

    fn histogram_of(values: &[u64]) -> HistogramSnapshot {
        let h = crate::pipeline::stats::LatencyHistogram::default();
        for v in values {
            h.record_value(*v);
        }
        h.snapshot()
    }

    fn example() -> (StatsSnapshot, ServerStatsSnapshot) {
        let mut stats = StatsSnapshot {
            policy_version: "0123456789ab".to_owned(),
            submitted: 12,
            rejected_busy: 2,
            expired: 1,
            replayed: 3,
            seq_reused: 2,
            queue_depth: 4,
            queue_capacity: 4096,
            end_to_end_us: histogram_of(&[0, 1, 900, 1500, 40_000, u64::MAX / 2]),
            batch_size: histogram_of(&[1, 3, 64]),
            ..StatsSnapshot::default()
        };
        stats.decisions.admit = 7;
        stats.decisions.deny = 2;
        stats.decisions.escalate = 1;
        stats.decisions.failed_checks.insert("temperature", 2);
        stats.markets.push(MarketStats {
            market: MarketId(3),
            decisions: stats.decisions.clone(),
        });
        let server = ServerStatsSnapshot {
            connections: 5,
            streams_in_flight: 1,
            malformed: 0,
            gate_mismatch: 9,
            handshakes_refused: 4,
            handshakes_retried: 7,
            redirected: 6,
        };
        (stats, server)
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .unwrap_or_else(|| panic!("no {name} {labels:?}"))
            .value
    }

    #[test]
    fn every_line_parses_and_values_match() {
        let (stats, server) = example();
        let text = render(&stats, &server);
        let (samples, types) = parse(&text);
        assert_eq!(types["gatewarden_events_total"], "counter");
        assert_eq!(types["gatewarden_queue_depth"], "gauge");
        assert_eq!(types["gatewarden_policy_info"], "gauge");
        assert_eq!(
            value(
                &samples,
                "gatewarden_policy_info",
                &[("version", "0123456789ab")]
            ),
            1.0
        );
        assert_eq!(types["gatewarden_stage_seconds"], "histogram");
        assert_eq!(
            value(
                &samples,
                "gatewarden_events_total",
                &[("decision", "admit")]
            ),
            7.0
        );
        assert_eq!(
            value(
                &samples,
                "gatewarden_market_events_total",
                &[("market", "3"), ("decision", "deny")]
            ),
            2.0
        );
        assert_eq!(
            value(
                &samples,
                "gatewarden_failed_checks_total",
                &[("check", "temperature")]
            ),
            2.0
        );
        assert_eq!(
            value(
                &samples,
                "gatewarden_failed_checks_total",
                &[("check", "liveness")]
            ),
            0.0
        );
        assert_eq!(
            value(
                &samples,
                "gatewarden_busy_total",
                &[("reason", "admission")]
            ),
            2.0
        );
        assert_eq!(
            value(&samples, "gatewarden_busy_total", &[("reason", "deadline")]),
            1.0
        );
        assert_eq!(value(&samples, "gatewarden_submitted_total", &[]), 12.0);
        assert_eq!(value(&samples, "gatewarden_replayed_total", &[]), 3.0);
        assert_eq!(value(&samples, "gatewarden_seq_reused_total", &[]), 2.0);
        assert_eq!(value(&samples, "gatewarden_connections", &[]), 5.0);
        assert_eq!(
            value(&samples, "gatewarden_server_gate_mismatch_total", &[]),
            9.0
        );
        assert_eq!(
            value(&samples, "gatewarden_server_handshakes_retried_total", &[]),
            7.0
        );
        assert_eq!(value(&samples, "gatewarden_queue_capacity", &[]), 4096.0);
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_the_count() {
        let (stats, server) = example();
        let (samples, _) = parse(&render(&stats, &server));
        // (bucket series, stage label) -> [(le, cumulative count)]
        type Series = BTreeMap<(String, Option<String>), Vec<(f64, f64)>>;
        let mut series = Series::new();
        for s in samples.iter().filter(|s| s.name.ends_with("_bucket")) {
            let le = match s.labels["le"].as_str() {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap(),
            };
            let key = (s.name.clone(), s.labels.get("stage").cloned());
            series.entry(key).or_default().push((le, s.value));
        }
        assert_eq!(series.len(), 6, "four stages, batch and commit sizes");
        for ((name, stage), buckets) in &series {
            let family = name.strip_suffix("_bucket").unwrap();
            let labels: Vec<(&str, &str)> = stage.iter().map(|s| ("stage", s.as_str())).collect();
            let count = value(&samples, &format!("{family}_count"), &labels);
            assert!(
                buckets.windows(2).all(|w| w[0].0 < w[1].0),
                "{name}: le increases"
            );
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{name}: cumulative"
            );
            let last = buckets.last().unwrap();
            assert_eq!(last.0, f64::INFINITY, "{name}: ends with +Inf");
            assert_eq!(last.1, count, "{name}: +Inf equals _count");
        }
        let e2e = &series[&(
            "gatewarden_stage_seconds_bucket".to_owned(),
            Some("end_to_end".to_owned()),
        )];
        // 0 and 1 µs fall in the first bucket (le 1 µs), 900 µs below 1023 µs.
        assert_eq!(e2e[0], (0.000_001, 2.0));
        assert_eq!(e2e[9].1, 3.0);
        assert_eq!(e2e.last().unwrap().1, 6.0);
        let batch = &series[&("gatewarden_batch_size_bucket".to_owned(), None)];
        assert_eq!(batch[0], (1.0, 1.0));
        assert_eq!(batch[1], (3.0, 2.0));
        assert_eq!(value(&samples, "gatewarden_batch_size_sum", &[]), 68.0);
    }
}
