//! The policy lifecycle: `gatewarden policy check`, and a running server that rereads its
//! policy on SIGHUP and `POST /api/v1/policy/reload`, atomically (a refused file changes
//! nothing; every event is decided by one whole policy).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use gatewarden::clock::{Clock, SystemClock};
use gatewarden::policy::{DEMO_POLICY_TOML, PolicyBook};
use gatewarden::{Engine, Reply};
use gatewarden_protocol::{CheckKind, Verdict};

use crate::http_client::{get, post_json};
use crate::support::{self, verify_event};

const BIN: &str = env!("CARGO_BIN_EXE_gatewarden");

fn gw(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn policy_check_lists_every_problem_or_says_what_the_policy_does() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("policy.toml");
    std::fs::write(&good, DEMO_POLICY_TOML).unwrap();
    let out = gw(&["policy", "check", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    let version = PolicyBook::from_toml(DEMO_POLICY_TOML, "x").unwrap();
    assert!(
        summary.contains(&format!("policy version {}", version.version())),
        "{summary}"
    );
    assert!(
        summary.contains("health code: green pass, yellow escalate, red deny"),
        "{summary}"
    );
    assert!(summary.contains("merchant"), "{summary}");

    let bad = dir.path().join("bad.toml");
    let broken = DEMO_POLICY_TOML
        .replace("margin = 0.05", "margin = 7")
        .replace("liveness_min = 0.5", "liveness = 0.5")
        .replace("[default.categories.staff]", "[default.categories.staf]");
    std::fs::write(&bad, broken).unwrap();
    let out = gw(&["policy", "check", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    let problems: Vec<&str> = err.lines().filter(|l| l.starts_with("bad.toml:")).collect();
    assert_eq!(problems.len(), 4, "{err}");
    assert!(
        problems.iter().any(|l| l.contains("match margin 7")),
        "{err}"
    );
    assert!(
        problems.iter().any(|l| l.contains("`liveness_min`")),
        "{err}"
    );
    assert!(problems.iter().any(|l| l.contains("`staf`")), "{err}");
    assert!(err.contains("bad.toml has 4 problems"), "{err}");
    assert!(text(&out.stdout).is_empty());

    // A missing file: the OS error once, not twice.
    let out = gw(&["policy", "check", "no-such-policy.toml"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("no-such-policy.toml"), "{err}");
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
}

/// A `gatewarden serve` on a fresh `init` site with its HTTP API on a free port; killed when
/// dropped.
struct Served {
    child: Child,
    http: SocketAddr,
    token: String,
    site: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Served {
    fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let site = tmp.path().join("site");
        let out = gw(&["init", site.to_str().unwrap(), "--gates", "2"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--data",
            ])
            .arg(&site)
            .env("RUST_LOG", "off")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let mut next = || {
            line.clear();
            stdout.read_line(&mut line).unwrap();
            line.trim().to_owned()
        };
        assert!(next().starts_with("listening on "));
        let http: SocketAddr = next().strip_prefix("http on ").unwrap().parse().unwrap();
        assert!(next().starts_with("console on "));
        let token = std::fs::read_to_string(site.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        Self {
            child,
            http,
            token,
            site,
            _tmp: tmp,
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn version(&self) -> String {
        let r = get(self.http, "/api/v1/stats", Some(&self.token));
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["engine"]["policy_version"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Polls until the version in force is not `old` (a SIGHUP is handled asynchronously).
    fn wait_for_new_version(&self, old: &str) -> String {
        let start = SystemClock.instant();
        loop {
            let v = self.version();
            if v != old {
                return v;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "still version {old} 30 s after SIGHUP"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Writes the policy file, keeping its owner-only mode.
    fn write_policy(&self, text: &str) {
        std::fs::write(self.site.join("policy.toml"), text).unwrap();
    }

    fn reload(&self, token: Option<&str>) -> crate::http_client::Response {
        post_json(self.http, "/api/v1/policy/reload", token, "")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn version_of(text: &str) -> String {
    PolicyBook::from_toml(text, "policy.toml")
        .unwrap()
        .version()
        .to_string()
}

#[test]
fn serve_reloads_on_sighup_and_api_and_keeps_its_policy_when_the_file_is_refused() {
    let mut served = Served::start();
    let v0 = served.version();
    assert_eq!(v0, version_of(DEMO_POLICY_TOML));
    let metrics = get(served.http, "/metrics", None).body;
    assert!(
        metrics.contains(&format!("gatewarden_policy_info{{version=\"{v0}\"}} 1")),
        "{metrics}"
    );

    // SIGHUP: the new file is in force, and the server is still up.
    let tighter = DEMO_POLICY_TOML.replace("occupancy_cap = 1_000_000", "occupancy_cap = 999");
    served.write_policy(&tighter);
    served.signal("HUP");
    let v1 = served.wait_for_new_version(&v0);
    assert_eq!(v1, version_of(&tighter));
    assert!(served.alive(), "SIGHUP stopped the server");
    let policy = get(served.http, "/api/v1/policy", Some(&served.token)).json();
    assert_eq!(policy["version"], v1.as_str());
    assert!(
        policy["summary"]
            .as_str()
            .unwrap()
            .contains("at 999 people inside"),
        "{policy}"
    );

    // A bad file: SIGHUP and the API both refuse it, and version v1 stays in force.
    let broken = tighter
        .replace("margin = 0.05", "margin = 7")
        .replace("stale_code = \"escalate\"", "stale_code = \"maybe\"");
    served.write_policy(&broken);
    served.signal("HUP");
    let r = served.reload(Some(&served.token));
    assert_eq!(r.status, 422, "{}", r.body);
    let body = r.json();
    assert_eq!(body["code"], "policy_refused");
    assert_eq!(body["version"], v1.as_str());
    let problems = body["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 2, "{body}");
    let margin_line = broken.lines().position(|l| l == "margin = 7").unwrap() + 1;
    assert_eq!(problems[0]["line"], margin_line, "{body}");
    assert_eq!(problems[0]["origin"], "policy.toml");
    assert!(
        problems[1]["reason"].as_str().unwrap().contains("maybe"),
        "{body}"
    );
    assert_eq!(served.version(), v1);
    assert!(served.alive());

    // The admin token is required.
    assert_eq!(served.reload(None).status, 401);
    assert_eq!(served.reload(Some("wrong")).status, 401);

    // A file the server cannot read, or must not trust, changes nothing either.
    let file = served.site.join("policy.toml");
    std::fs::remove_file(&file).unwrap();
    let r = served.reload(Some(&served.token));
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("cannot read policy file")
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        served.write_policy(&tighter);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let r = served.reload(Some(&served.token));
        assert_eq!(r.status, 409, "{}", r.body);
        assert!(
            r.json()["error"].as_str().unwrap().contains("chmod go-w"),
            "{}",
            r.body
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    assert_eq!(served.version(), v1);

    // A good file through the API: the answer names both versions.
    let looser = DEMO_POLICY_TOML.replace("occupancy_cap = 1_000_000", "occupancy_cap = 5000");
    served.write_policy(&looser);
    let r = served.reload(Some(&served.token));
    assert_eq!(r.status, 200, "{}", r.body);
    let done = r.json();
    let v2 = version_of(&looser);
    assert_eq!(done["version"], v2.as_str());
    assert_eq!(done["previous"], v1.as_str());
    assert_eq!(done["changed"], true);
    assert_eq!(served.version(), v2);
    // Reloading the same content again changes nothing and says so.
    let again = served.reload(Some(&served.token)).json();
    assert_eq!(again["changed"], false);

    served.signal("TERM");
    assert!(served.child.wait().unwrap().success());
}

fn thresholds(v: &Verdict) -> (Option<f64>, Option<f64>) {
    let of = |kind| {
        v.checks
            .iter()
            .find(|c| c.kind == kind)
            .and_then(|c| c.threshold)
    };
    (of(CheckKind::Temperature), of(CheckKind::Liveness))
}

#[test]
fn no_event_is_decided_by_a_mix_of_two_policies() {
    let dir = tempfile::tempdir().unwrap();
    let a = DEMO_POLICY_TOML.to_owned();
    let b = DEMO_POLICY_TOML
        .replace(
            "temperature_ceiling_c = 37.3",
            "temperature_ceiling_c = 38.0",
        )
        .replace("liveness_min = 0.5", "liveness_min = 0.6");
    let policy = dir.path().join("policy.toml");
    write_private(&policy, &a);
    let mut config = support::config();
    config.engine.policy = Some("policy.toml".into());
    let engine = Arc::new(Engine::open(dir.path(), config).unwrap());
    support::populate(&engine, crate::server::now());

    let flipper = {
        let engine = Arc::clone(&engine);
        let a = a.clone();
        std::thread::spawn(move || {
            for i in 0..60 {
                write_private(&policy, if i % 2 == 0 { &b } else { &a });
                engine.reload_policy().unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let mut seen: Vec<(f64, f64)> = Vec::new();
    let mut pending = Vec::new();
    for seq in 1..=600u64 {
        let subject = seq % support::PEOPLE + 1;
        let gate = (seq % u64::from(support::GATES)) as u32 + 1;
        pending.push(engine.submit(verify_event(gate, seq, subject, crate::server::now())));
        if pending.len() == 32 {
            for s in pending.drain(..) {
                seen.push(pair(s.wait()));
            }
        }
    }
    for s in pending.drain(..) {
        seen.push(pair(s.wait()));
    }
    flipper.join().unwrap();
    let whole = [(37.3, 0.5), (38.0, 0.6)];
    let mixed: Vec<_> = seen.iter().filter(|p| !whole.contains(p)).collect();
    assert!(
        mixed.is_empty(),
        "verdicts decided by a mix of policies: {mixed:?}"
    );
    assert_eq!(seen.len(), 600);
    // Both policies decided some of them: the reloads really happened under load.
    assert!(
        whole.iter().all(|w| seen.contains(w)),
        "one policy decided everything"
    );
    // The last file written (i = 59: a) is in force.
    assert_eq!(engine.policy_version().to_string(), version_of(&a));
}

/// Temperature and liveness thresholds of a verdict (as written in the file, so exact).
fn pair(reply: Reply) -> (f64, f64) {
    let Reply::Verdict(v) = reply else {
        panic!("expected a verdict, got {reply:?}");
    };
    let (t, l) = thresholds(&v);
    (t.unwrap(), l.unwrap())
}

/// Writes `text` to `path` owner-only, replacing it in one rename.
fn write_private(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::rename(&tmp, path).unwrap();
}
