//! `gatewarden policy replay` and `gatewarden calibrate` through the binary, on a site whose
//! entries were decided by a real engine.

use std::path::Path;

use gatewarden::Reply;
use gatewarden::clock::{self, Clock, SystemClock};
use gatewarden::policy::DEMO_POLICY_TOML;
use gatewarden_protocol::{Decision, Verdict};
use serde_json::Value;

use crate::support::{self, gw, identify_event, stranger, verify_event};

/// Entries recorded: people 1..=40 at gate 1; every fifth has a temperature of 37.1 °C
/// (admitted under the demo's 37.3 ceiling); and ten strangers by face alone.
const PEOPLE_IN: u64 = 40;
const WARM_EVERY: u64 = 5;
const STRANGERS: u64 = 10;

/// A stopped site with today's entries; returns the local day they are in.
fn site_with_entries(dir: &Path) -> String {
    let now = SystemClock.now();
    let engine = support::open_populated(dir, now);
    let day = record_entries(&engine, now);
    engine.shutdown();
    drop(engine);
    std::fs::write(
        dir.join("gatewarden.toml"),
        format!(
            "[engine]\ndim = {}\nmodel = \"{}\"\n",
            support::DIM,
            support::MODEL
        ),
    )
    .unwrap();
    day
}

/// Records the entries described above through `engine`; returns their local day.
fn record_entries(engine: &gatewarden::Engine, now: gatewarden_protocol::UnixMillis) -> String {
    let mut warm_admitted = 0;
    for s in 1..=PEOPLE_IN {
        let mut event = verify_event(1, s, s, now);
        if s % WARM_EVERY == 0 {
            event.temperature_c = Some(37.1);
        }
        let verdict = decide(engine, &event);
        assert_eq!(verdict.decision, Decision::Admit, "person {s}");
        warm_admitted += u64::from(s % WARM_EVERY == 0);
    }
    assert_eq!(warm_admitted, PEOPLE_IN / WARM_EVERY);
    for n in 0..STRANGERS {
        let event = identify_event(2, n + 1, stranger(n), now);
        let verdict = decide(engine, &event);
        assert_eq!(verdict.decision, Decision::Deny);
    }
    let offset = support::config().engine.utc_offset();
    clock::format_day(offset.day_of(now))
}

/// Submits `event` until it gets a verdict: a loaded test machine may answer Busy.
fn decide(engine: &gatewarden::Engine, event: &gatewarden_protocol::Event) -> Verdict {
    for _ in 0..100 {
        match engine.submit_blocking(event.clone()) {
            Reply::Verdict(v) => return v,
            Reply::Busy(b) => {
                std::thread::sleep(std::time::Duration::from_millis(u64::from(
                    b.retry_after_ms,
                )));
            }
            other => panic!("expected a verdict, got {other:?}"),
        }
    }
    panic!("busy for 100 tries")
}

fn json(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn replay(data: &Path, policy: &Path, day: &str) -> std::process::Output {
    let policy = policy.to_str().unwrap();
    gw(
        &[
            "policy", "replay", "--policy", policy, "--from", day, "--to", day, "--json",
        ],
        data,
    )
}

#[test]
fn replay_under_the_same_policy_changes_nothing_and_a_stricter_ceiling_denies_the_warm() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    let day = site_with_entries(&site);
    let same = dir.path().join("same.toml");
    std::fs::write(&same, DEMO_POLICY_TOML).unwrap();
    let r = json(&replay(&site, &same, &day));
    let total = PEOPLE_IN + STRANGERS;
    assert_eq!(r["entries"], total);
    assert_eq!(r["changed"], 0);
    assert_eq!(r["undetermined"], 0);
    assert_eq!(r["transitions"], Value::Array(Vec::new()));

    // 37.0 °C: exactly the warm people are now denied, for their temperature.
    let cooler = dir.path().join("cooler.toml");
    let text = DEMO_POLICY_TOML.replace(
        "temperature_ceiling_c = 37.3",
        "temperature_ceiling_c = 37.0",
    );
    assert_ne!(text, DEMO_POLICY_TOML);
    std::fs::write(&cooler, text).unwrap();
    let r = json(&replay(&site, &cooler, &day));
    let warm = PEOPLE_IN / WARM_EVERY;
    assert_eq!(r["changed"], warm);
    assert_eq!(r["extra_denials"], warm);
    assert_eq!(r["undetermined"], 0);
    assert_eq!(r["transitions"][0]["from"], "admit");
    assert_eq!(r["transitions"][0]["to"], "deny");
    let temperature = r["by_check"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "temperature")
        .unwrap();
    assert_eq!(temperature["newly_failing"], warm);
    let examples = r["examples"].as_array().unwrap();
    assert_eq!(examples.len() as u64, warm);
    for e in examples {
        assert_eq!(e["seq"].as_u64().unwrap() % WARM_EVERY, 0, "{e}");
        assert!(
            e["checks"][0]
                .as_str()
                .unwrap()
                .starts_with("temperature: pass -> fail")
        );
    }
    let extra: u64 = r["by_hour"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["extra_denials"].as_u64().unwrap())
        .sum();
    assert_eq!(extra, warm);
}

#[test]
fn replay_says_which_input_was_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    let day = site_with_entries(&site);
    // The demo policy asks shoppers for no vaccination, so their doses were not recorded.
    let vaccinated = dir.path().join("vaccinated.toml");
    let text = DEMO_POLICY_TOML.replace("min_vaccine_doses = 0\n", "min_vaccine_doses = 2\n");
    assert_ne!(text, DEMO_POLICY_TOML);
    std::fs::write(&vaccinated, text).unwrap();
    let out = gw(
        &[
            "policy",
            "replay",
            "--policy",
            vaccinated.to_str().unwrap(),
            "--from",
            &day,
            "--to",
            &day,
        ],
        &site,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{PEOPLE_IN} undetermined")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "vaccination: {PEOPLE_IN} entries lack the vaccine doses"
        )),
        "{text}"
    );
}

#[test]
fn replay_refuses_days_without_entries_and_a_bad_policy_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    let day = site_with_entries(&site);
    let good = dir.path().join("good.toml");
    std::fs::write(&good, DEMO_POLICY_TOML).unwrap();
    let err = |out: std::process::Output| {
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = err(replay(&site, &good, "2001-01-01"));
    assert!(
        e.contains("no entries recorded between 2001-01-01 and 2001-01-01"),
        "{e}"
    );
    let e = err(gw(
        &[
            "policy",
            "replay",
            "--policy",
            good.to_str().unwrap(),
            "--from",
            &day,
            "--to",
            "2001-01-01",
        ],
        &site,
    ));
    assert!(e.contains("comes after --to 2001-01-01"), "{e}");
    let e = err(replay(&site, &good, "yesterday"));
    assert!(e.contains("bad --from \"yesterday\""), "{e}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        DEMO_POLICY_TOML.replace("margin = 0.05", "margin = 7"),
    )
    .unwrap();
    let e = err(replay(&site, &bad, &day));
    assert!(
        e.lines()
            .any(|l| l.starts_with("bad.toml:") && l.contains("match margin 7")),
        "{e}"
    );
    assert!(e.contains("bad.toml has 1 problem"), "{e}");
    let e = err(replay(dir.path(), &good, &day));
    assert!(e.contains("is not a gatewarden site"), "{e}");
}

#[test]
fn calibrate_reports_fpir_and_fnir_and_draws_the_plot() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    site_with_entries(&site);
    let plot = dir.path().join("cal.svg");
    let out = gw(
        &[
            "calibrate",
            "--target-fpir",
            "0.05",
            "--sample",
            "30",
            "--json",
            "--plot",
            plot.to_str().unwrap(),
        ],
        &site,
    );
    let r = json(&out);
    assert_eq!(r["probes"], 30);
    assert_eq!(r["gallery_size"], support::PEOPLE);
    // Random 128-d faces: strangers score far below the demo's 0.50.
    assert_eq!(r["fpir"], 0.0);
    // The 40 card-verified entries are the mated pairs; all matched.
    assert_eq!(r["mates"], PEOPLE_IN);
    assert_eq!(r["fnir"], 0.0);
    let recommended = r["recommended_threshold"].as_f64().unwrap();
    assert!(recommended > 0.0 && recommended < 0.5, "{recommended}");
    assert!(
        r["change"]
            .as_str()
            .unwrap()
            .starts_with("no change needed"),
        "{r}"
    );
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("FPIR today") && svg.contains("FNIR"));
    let out = gw(&["calibrate", "--target-fpir", "2"], &site);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("strictly between 0 and 1"));
}

#[test]
fn calibrate_checks_its_estimate_against_strangers() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    site_with_entries(&site);
    let count = 400;
    let faces: Vec<f32> = (0..count).flat_map(|n| stranger(1000 + n)).collect();
    let file = dir.path().join("strangers.npy");
    gatewarden::npy::write_f32_matrix(&file, count as usize, support::DIM, &faces).unwrap();
    let file_arg = file.to_str().unwrap();
    let args = ["calibrate", "--sample", "50", "--strangers", file_arg];
    let r = json(&gw(&[&args[..], &["--json"]].concat(), &site));
    let check = &r["strangers"];
    assert_eq!(check["strangers"], count);
    let rows = check["rows"].as_array().unwrap();
    // The demo policy's 0.50, and the thresholds where the estimate is 10%, 1% and 0.1%
    // (fewer when 50 probes cannot tell them apart).
    assert!(rows.len() >= 2, "{check}");
    let policy_row = rows.iter().find(|row| row["threshold"] == 0.5).unwrap();
    assert_eq!(policy_row["measured"], 0.0, "{check}");
    for row in rows {
        assert!(row["z"].is_number() && row["agrees"].is_boolean(), "{row}");
    }
    // Random faces against random faces: the estimate holds.
    assert_eq!(check["agrees"], true, "{check}");
    let text = gw(&args, &site);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("estimate against 400 strangers"), "{text}");
    // Faces of the wrong dimension, and a NaN, are refused with the file named.
    let narrow = dir.path().join("narrow.npy");
    gatewarden::npy::write_f32_matrix(&narrow, 1, 4, &[0.5; 4]).unwrap();
    let out = gw(
        &["calibrate", "--strangers", narrow.to_str().unwrap()],
        &site,
    );
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("4-dimensional faces"),
        "{e}"
    );
    let mut bad = faces[..2 * support::DIM].to_vec();
    bad[support::DIM + 3] = f32::NAN;
    let nan = dir.path().join("nan.npy");
    gatewarden::npy::write_f32_matrix(&nan, 2, support::DIM, &bad).unwrap();
    let out = gw(&["calibrate", "--strangers", nan.to_str().unwrap()], &site);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("row 1 of"), "{e}");
}

#[test]
fn the_api_replays_an_uploaded_policy_and_exports_the_scheduled_estimate() {
    use crate::http::Api;
    use crate::http_client::{get, post_json};

    let api = Api::start();
    let day = record_entries(&api.engine, SystemClock.now());
    let (addr, secret) = (api.addr, api.token.as_str());
    let path = format!("/api/v1/policy/replay?from={day}&to={day}");
    let cooler = DEMO_POLICY_TOML.replace(
        "temperature_ceiling_c = 37.3",
        "temperature_ceiling_c = 37.0",
    );
    let r = post_json(addr, &path, Some(secret), &cooler);
    assert_eq!(r.status, 200, "{}", r.body);
    let report = r.json();
    assert_eq!(report["changed"], PEOPLE_IN / WARM_EVERY);
    assert_eq!(report["entries"], PEOPLE_IN + STRANGERS);
    // The policy in force is untouched.
    let demo = gatewarden::policy::PolicyBook::demo();
    assert_eq!(&api.engine.policy_version(), demo.version());

    let bad = DEMO_POLICY_TOML.replace("margin = 0.05", "margin = 7");
    let r = post_json(addr, &path, Some(secret), &bad);
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("match margin 7"), "{}", r.body);
    let none = "/api/v1/policy/replay?from=2001-01-01&to=2001-01-01";
    let r = post_json(addr, none, Some(secret), DEMO_POLICY_TOML);
    assert_eq!(r.status, 404, "{}", r.body);
    let r = post_json(addr, &path, None, DEMO_POLICY_TOML);
    assert_eq!(r.status, 401);

    // The first estimate comes a few seconds after start.
    let mut estimate = Value::Null;
    for _ in 0..120 {
        estimate = get(addr, "/api/v1/calibration", Some(secret)).json();
        if !estimate["estimate"].is_null() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!(
        !estimate["estimate"].is_null(),
        "no estimate in 60 s: {estimate}"
    );
    assert_eq!(estimate["estimate"]["gallery_size"], support::PEOPLE);
    assert_eq!(estimate["above_target"], false);
    let metrics = get(addr, "/metrics", None).body;
    assert!(
        metrics.contains("\ngatewarden_fpir_estimate 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gatewarden_fpir_target 0.003"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gatewarden_policy_info"),
        "the engine's metrics stay"
    );
    let js = get(addr, "/console/tools.js", None);
    assert_eq!(js.status, 200);
    assert!(js.body.contains("/api/v1/policy/replay"));
    api.stop();
}
