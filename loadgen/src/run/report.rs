//! The result of a run: counts, latency percentiles, decisions, accuracy against the ground
//! truth, bad-input handling, a per-second timeline; as JSON, a human summary and an SVG plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Everything a run measured. Field names are the JSON report's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Good events issued (first attempts; retries of the same `(gate, seq)` are not counted).
    pub sent: u64,
    /// Events answered with a verdict.
    pub verdicts: u64,
    /// `Busy` replies received (one event may get several).
    pub busy: u64,
    /// Events abandoned while still being answered `Busy` (retry limit or end of the run).
    pub busy_gave_up: u64,
    /// Events answered with an `Error` (good events only; bad input is counted apart).
    pub errors: u64,
    /// `errors` by error code.
    pub errors_by_code: BTreeMap<String, u64>,
    /// Events that never got any reply (no verdict, error or Busy) before the run's end plus
    /// the reply timeout.
    pub lost: u64,
    /// Of `lost`: events that never reached the server, still waiting at the end for a
    /// stream (each gate may have only the server's limit of requests open at once), i.e.
    /// the gate's own backlog. The rest of `lost` were sent and not answered.
    pub lost_unsent: u64,
    /// Verdicts marked `replayed` (the server had already answered that `(gate, seq)`).
    pub replayed: u64,
    /// Attempts that failed in transport and were retried (same `seq`).
    pub transport_retries: u64,
    /// Gates that had to reconnect during the load.
    pub reconnects: u64,
    /// `Redirect` replies: a node that does not serve the gate's market sent it to another
    /// (to its Hello, or to an event after the market moved). Counted from the first connect.
    #[serde(default)]
    pub redirects: u64,
    /// Connection attempts made to the next node of the gates' node list after a lost
    /// connection or a failed attempt. Counted from the first connect.
    #[serde(default)]
    pub failovers: u64,
    /// Connection attempts that failed, by why (`timeout`: no handshake and `HelloAck` within
    /// the attempt's limit; `refused`: the server refused the handshake; `connection`: another
    /// QUIC failure; `hello`: the `Hello` was refused or its reply unusable). Counted from the
    /// first connect; pauses between attempts are not attempts.
    #[serde(default)]
    pub connect_attempts_failed: BTreeMap<String, u64>,
    /// Gates connected before the load started.
    pub gates_connected: u32,
    /// Gates that failed to connect before the load started.
    pub connect_failures: u32,
    /// The first connection failure, if any.
    pub connect_error: Option<String>,
    /// Seconds from the first intended send to the last reply (or the end of the schedule).
    pub duration_s: f64,
    /// Verdicts per second over `duration_s`.
    pub throughput_eps: f64,
    /// Events issued per second over the schedule.
    pub offered_eps: f64,
    /// Seconds to connect the fleet (TLS + Hello), before the load.
    pub connect_s: f64,
    /// CPU seconds (user + system) this process used during the run; 0 if unavailable.
    pub cpu_s: f64,
    /// Latency from intended send time to verdict (including any `Busy` back-off).
    pub latency_ms: LatencyMs,
    /// Latency of the attempt that got the verdict, from that attempt's intended time (the
    /// first send, or the retry after a `Busy`) or, if later, from when the gate got a stream
    /// for it (a server that sheds withholds stream credit from gates it told to wait). This
    /// is the server's responsiveness to the requests it took; `latency_ms` is what a person
    /// at the gate waited.
    pub attempt_latency_ms: LatencyMs,
    /// This process's resident memory before the fleet connected, in MiB.
    #[serde(default)]
    pub rss_before_connect_mib: f64,
    /// ... and right after (every gate's connection, TLS state and certificate).
    #[serde(default)]
    pub rss_connected_mib: f64,
    /// The difference per connected gate, in KiB: what a gate connection costs this side.
    #[serde(default)]
    pub rss_per_connection_kib: f64,
    /// Verdicts by decision.
    pub decisions: Decisions,
    /// Verdicts against the ground truth.
    pub accuracy: Accuracy,
    /// Deliberately bad streams and how they were answered.
    pub bad_input: BadInputReport,
    /// One entry per second of the load.
    pub per_second: Vec<SecondStats>,
    /// The first disagreements with the ground truth (at most 20), for diagnosis.
    pub mismatches: Vec<Mismatch>,
    /// Things the reader should know about this run (stale population, clock skew).
    pub warnings: Vec<String>,
    /// The run's configuration.
    pub config: ConfigEcho,
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// Verdicts by decision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decisions {
    /// Admitted.
    pub admit: u64,
    /// Denied.
    pub deny: u64,
    /// Escalated to staff.
    pub escalate: u64,
}

/// Verdicts against the ground truth.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accuracy {
    /// Verdicts compared with the truth.
    pub checked: u64,
    /// Verdicts equal to the truth (decision, and subject where both name one).
    pub correct: u64,
    /// Admitted although the truth says deny or escalate.
    pub false_admit: u64,
    /// Denied or escalated although the truth says admit.
    pub false_deny: u64,
    /// Deny where the truth says escalate, or the reverse.
    pub deny_escalate_swaps: u64,
    /// The verdict names another person than the truth (or anyone, for a stranger's face
    /// without a credential).
    pub wrong_subject: u64,
}

/// Deliberately bad streams (`--bad-input`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadInputReport {
    /// Bad streams sent.
    pub sent: u64,
    /// Answered as the protocol promises (the typed error; for replays, the stored verdict
    /// marked `replayed`).
    pub rejected_ok: u64,
    /// Admitted (or, for a replay, a verdict other than the stored one): must be 0.
    pub violations: u64,
    /// Answered, but not with the promised reply (another error code, a Deny verdict).
    pub wrong_reply: u64,
    /// No reply before the end of the run.
    pub no_reply: u64,
    /// Connections found closed right after a bad stream's reply: must be 0.
    pub connections_closed: u64,
    /// The same counts per kind of bad input.
    pub by_kind: BTreeMap<String, BadKindStats>,
}

/// Counts for one kind of bad input.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadKindStats {
    /// Sent.
    pub sent: u64,
    /// Answered as promised.
    pub rejected_ok: u64,
    /// Admitted, or a replay answered differently from the stored verdict.
    pub violations: u64,
    /// Answered otherwise.
    pub wrong_reply: u64,
    /// Not answered.
    pub no_reply: u64,
    /// What the reply was, when it was not the promised one (first seen).
    pub example: Option<String>,
}

/// One second of the load.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SecondStats {
    /// Seconds since the load started (end of the interval).
    pub t: f64,
    /// Events issued in the interval.
    pub sent: u64,
    /// Verdicts received in the interval.
    pub verdicts: u64,
    /// Busy replies received in the interval.
    pub busy: u64,
    /// Median latency of the interval's verdicts.
    pub p50_ms: f64,
    /// 99th percentile latency of the interval's verdicts.
    pub p99_ms: f64,
    /// Gates holding a live connection at the end of the interval.
    #[serde(default)]
    pub gates_connected: u32,
    /// Gate connections that ended in the interval (a lost server noticed, a redirect).
    #[serde(default)]
    pub gates_lost: u32,
}

/// A verdict that disagreed with the ground truth. No biometric data.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Mismatch {
    /// Gate.
    pub gate: u32,
    /// Sequence number.
    pub seq: u64,
    /// verify, identify or signin.
    pub mode: String,
    /// The event's twist: none, fever, impostor, wrong_zone.
    pub twist: String,
    /// The person's persona, if a person is involved.
    pub persona: Option<String>,
    /// What the truth says.
    pub expected: String,
    /// The person the truth names.
    pub expected_subject: Option<u64>,
    /// The checks the truth expects to fail or escalate.
    pub expected_reasons: Vec<String>,
    /// What the engine answered.
    pub got: String,
    /// The person the engine named.
    pub got_subject: Option<u64>,
    /// The engine's score.
    pub got_score: Option<f32>,
    /// The engine's failing or escalating checks.
    pub got_reasons: Vec<String>,
}

/// The configuration a report was made with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigEcho {
    /// Server addresses (the site's nodes), comma-separated.
    pub target: String,
    /// Gates used.
    pub gates: u32,
    /// Peak rate, events/s.
    pub rate: f64,
    /// Arrival profile.
    pub profile: String,
    /// Planned duration, seconds.
    pub duration_s: f64,
    /// Event cap, if any.
    pub max_events: Option<u64>,
    /// Mode mix (verify, identify, signin weights).
    pub mix: [u32; 3],
    /// Fraction of bad streams.
    pub bad_input: f64,
    /// Reply timeout, seconds.
    pub reply_timeout_s: f64,
    /// Run seed.
    pub seed: u64,
    /// First sequence number of every gate (run start in unix ms × 1000).
    pub seq_base: u64,
    /// Population folder.
    pub population: String,
    /// Subjects in the population.
    pub subjects: usize,
}

impl Report {
    /// A compact human-readable block.
    pub fn summary(&self) -> String {
        let c = &self.config;
        let l = &self.latency_ms;
        let d = &self.decisions;
        let a = &self.accuracy;
        let b = &self.bad_input;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "gatewarden-loadgen: {} gates ({} connected in {:.2} s), {} profile, peak {} ev/s, {:.1} s",
            c.gates, self.gates_connected, self.connect_s, c.profile, c.rate, self.duration_s
        );
        let _ = writeln!(
            s,
            "  events     sent {}  verdicts {}  busy {}  errors {}  lost {} ({} never sent)  ({:.0} ev/s answered, {:.0} offered)",
            self.sent,
            self.verdicts,
            self.busy,
            self.errors,
            self.lost,
            self.lost_unsent,
            self.throughput_eps,
            self.offered_eps
        );
        let _ = writeln!(
            s,
            "  latency    p50 {:.2} ms  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (from intended send time)",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        if self.busy > 0 {
            let a = &self.attempt_latency_ms;
            let _ = writeln!(
                s,
                "  attempt    p50 {:.2} ms  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (the attempt that got the verdict, without Busy back-off)",
                a.p50, a.p90, a.p99, a.p999, a.max
            );
        }
        let _ = writeln!(
            s,
            "  decisions  admit {}  deny {}  escalate {}",
            d.admit, d.deny, d.escalate
        );
        let _ = writeln!(
            s,
            "  accuracy   checked {}  correct {}  false admits {}  false denies {}  wrong subject {}",
            a.checked, a.correct, a.false_admit, a.false_deny, a.wrong_subject
        );
        if b.sent > 0 {
            let _ = writeln!(
                s,
                "  bad input  sent {}  rejected as promised {}  violations {}  wrong reply {}  no reply {}",
                b.sent, b.rejected_ok, b.violations, b.wrong_reply, b.no_reply
            );
        }
        if self.reconnects + self.transport_retries + self.busy_gave_up + self.replayed > 0 {
            let _ = writeln!(
                s,
                "  transport  reconnects {}  retries {}  busy gave up {}  replayed {}",
                self.reconnects, self.transport_retries, self.busy_gave_up, self.replayed
            );
        }
        if self.redirects + self.failovers > 0 {
            let _ = writeln!(
                s,
                "  nodes      redirects {}  failovers {}",
                self.redirects, self.failovers
            );
        }
        if !self.connect_attempts_failed.is_empty() {
            let kinds: Vec<String> = self
                .connect_attempts_failed
                .iter()
                .map(|(kind, n)| format!("{kind} {n}"))
                .collect();
            let _ = writeln!(s, "  attempts   failed: {}", kinds.join("  "));
        }
        if let Some(e) = &self.connect_error {
            let _ = writeln!(
                s,
                "  connect    {} gates failed, first: {e}",
                self.connect_failures
            );
        }
        let _ = writeln!(s, "  cpu        loadgen {:.1} s", self.cpu_s);
        for w in &self.warnings {
            let _ = writeln!(s, "  warning    {w}");
        }
        s
    }

    /// Writes the report as pretty JSON.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write_json(&self, path: &Path) -> io::Result<()> {
        let mut text = serde_json::to_string_pretty(self).map_err(io::Error::other)?;
        text.push('\n');
        fs::write(path, text)
    }

    /// Writes the latency-and-throughput plot as SVG.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write_plot_svg(&self, path: &Path) -> io::Result<()> {
        fs::write(path, self.plot_svg())
    }

    /// The plot: p50 and p99 latency (left axis, ms) and answered events per second (right
    /// axis) over the load's seconds.
    pub fn plot_svg(&self) -> String {
        super::svg::plot(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_json_has_the_promised_fields() {
        let r = Report {
            per_second: vec![SecondStats::default()],
            ..Report::default()
        };
        let v = serde_json::to_value(&r).unwrap();
        for key in [
            "sent",
            "verdicts",
            "busy",
            "errors",
            "lost",
            "duration_s",
            "throughput_eps",
            "connect_s",
            "cpu_s",
            "per_second",
            "config",
        ] {
            assert!(v.get(key).is_some(), "report lacks {key}");
        }
        for key in ["p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_ms"].get(key).is_some(), "latency_ms lacks {key}");
        }
        for key in ["admit", "deny", "escalate"] {
            assert!(v["decisions"].get(key).is_some(), "decisions lacks {key}");
        }
        for key in ["checked", "false_admit", "false_deny", "wrong_subject"] {
            assert!(v["accuracy"].get(key).is_some(), "accuracy lacks {key}");
        }
        for key in ["sent", "rejected_ok", "violations"] {
            assert!(v["bad_input"].get(key).is_some(), "bad_input lacks {key}");
        }
        for key in ["t", "sent", "verdicts", "p50_ms", "p99_ms"] {
            assert!(
                v["per_second"][0].get(key).is_some(),
                "per_second lacks {key}"
            );
        }
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn summary_mentions_the_key_figures() {
        let r = Report {
            sent: 1234,
            accuracy: Accuracy {
                false_admit: 3,
                ..Accuracy::default()
            },
            latency_ms: LatencyMs {
                p99: 42.5,
                ..LatencyMs::default()
            },
            ..Report::default()
        };
        let s = r.summary();
        assert!(s.contains("sent 1234"));
        assert!(s.contains("false admits 3"));
        assert!(s.contains("p99 42.50"));
        assert!(!s.contains("bad input"), "bad input line only when used");
    }
}
