//! The market console in a real browser (headless Chromium). `gatewarden demo --console` runs
//! a real server fed by the load generator; once the load is over (so counters are stable),
//! Chromium loads each view and dumps the rendered DOM, and what the page shows is compared
//! with what the API answers. The console marks every number and row with a `data-testid`, and
//! `body[data-ready]` / `body[data-error]` once a view has rendered or failed.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use serde_json::Value;

use crate::http_client::get;

const NO_BROWSER: &str =
    "install Debian's chromium (apt-get install chromium) or set GATEWARDEN_BROWSER";

/// Bounds against a hung process, not timing assertions: a slow machine only waits longer.
const DEMO_LINE_TIMEOUT: Duration = Duration::from_secs(300);
const BROWSER_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn console_views_show_what_the_api_answers() {
    let Some(browser) = find_browser() else {
        assert!(
            std::env::var("GATEWARDEN_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "no browser for the console test: {NO_BROWSER}"
        );
        eprintln!("skipping the console browser test: {NO_BROWSER}");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut demo = Demo::start(tmp.path());
    let (addr, token) = demo.console();
    let browser = Browser {
        exe: browser,
        profiles: tmp.path().join("browser"),
        base: format!("http://{addr}/"),
        token: token.clone(),
    };
    let api = Api { addr, token };

    check_live(&browser, &api);
    let (market, day) = check_hall(&browser, &api);
    let subject = busiest_subject(&api, market, &day);
    check_person(&browser, &api, subject, &day);
    check_contacts(&browser, &api, subject, &day);
    check_wrong_token(&browser);
    check_wall(&browser, &api);
    check_sparklines(&browser, &api);
    check_revoke_and_reinstate(&browser, &api, subject);
    check_resolving_an_escalation(&browser, &api, &day);

    demo.stop(tmp.path());
}

// ---------------------------------------------------------------------------------------------
// Acting from the console, in a browser driven over the DevTools protocol.

/// Wall mode: no navigation, large type, and the next market after `rotate` seconds (virtual
/// time in the dump: one rotation within its 10 s).
fn check_wall(browser: &Browser, api: &Api) {
    let markets: Vec<u64> = api
        .get("/api/v1/markets")
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["market"].as_u64().unwrap())
        .collect();
    assert!(markets.len() >= 2, "the demo has several markets");
    let dom = browser.dump(&format!("view=hall&wall=1&rotate=6&market={}", markets[0]));
    expect_ready(&dom, "hall");
    assert!(
        body(&dom)
            .attr("class")
            .split_whitespace()
            .any(|c| c == "wall"),
        "wall mode styles the page"
    );
    assert_eq!(
        one(&dom, "hall-title").text(),
        format!("Market {}", markets[1]),
        "the wall moved on to the next market"
    );
}

/// The live view's sparklines start from the server's history, not empty.
fn check_sparklines(browser: &Browser, api: &Api) {
    let history = api.get("/api/v1/stats/history");
    let samples = history["samples"].as_array().unwrap();
    let kept = samples.len();
    let slowest = samples
        .iter()
        .filter_map(|s| s["p99_ms"].as_f64())
        .fold(0.0, f64::max);
    assert!(kept >= 2, "the server kept {kept} samples of a demo run");
    let mut page = browser.page("view=live");
    page.wait_for("document.body.dataset.ready === 'live'");
    let shown =
        page.eval("Number(document.querySelector('[data-testid=spark-eps]').dataset.samples)");
    assert!(
        shown.as_u64().unwrap() >= kept as u64,
        "sparkline of {shown} samples, the server had {kept}"
    );
    // The load is over, so no later second is slower: the p99 line peaks where the history
    // does, in the same unit.
    let peak = page.eval("Number(document.querySelector('[data-testid=spark-p99]').dataset.max)");
    let peak = peak.as_f64().unwrap();
    assert!(
        slowest > 0.0 && (peak - slowest).abs() <= slowest * 1e-6,
        "p99 sparkline peaks at {peak} ms, the history at {slowest} ms"
    );
    let version = api.get("/api/v1/policy")["version"].clone();
    let tile = page.eval("document.querySelector('[data-testid=live-policy-version]').textContent");
    assert_eq!(tile, version, "the policy in force");
}

/// Revoke and reinstate from the person view, with a reason; the registry follows.
fn check_revoke_and_reinstate(browser: &Browser, api: &Api, subject: u64) {
    let status =
        |api: &Api| api.get(&format!("/api/v1/subjects/{subject}"))["subject"]["status"].clone();
    assert_eq!(status(api), "active");
    let mut page = browser.page(&format!("view=person&subject={subject}"));
    for (action, after) in [("revoke", "revoked"), ("reinstate", "active")] {
        page.wait_for(&format!(
            "document.body.dataset.ready === 'person' && \
             document.querySelector('[data-testid=status-form]').dataset.action === '{action}'"
        ));
        page.eval(&format!(
            "document.querySelector('[data-testid=status-reason]').value = 'console test: {action}'; \
             document.querySelector('[data-testid=status-action]').click(); true"
        ));
        page.wait_for(&format!(
            "document.body.dataset.ready === 'person' && \
             document.querySelector('[data-testid=person-status]').textContent === '{after}'"
        ));
        assert_eq!(status(api), after, "after {action} from the console");
    }
    // Every verdict shows the version of the policy that decided it.
    let version = api.get("/api/v1/policy")["version"].clone();
    let shown = page.eval(
        "[...document.querySelectorAll('[data-testid=verdict-policy]')].map((e) => e.textContent)",
    );
    let shown = shown.as_array().unwrap();
    assert!(!shown.is_empty(), "no verdicts shown");
    assert!(
        shown.iter().all(|v| *v == version),
        "{shown:?} against {version}"
    );
}

/// The escalation queue: an open escalation is resolved by a named staff member, once; the
/// resolution shows in the queue, the API and the person's timeline.
fn check_resolving_an_escalation(browser: &Browser, api: &Api, day: &str) {
    let open = api
        .get("/api/v1/markets")
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["market"].as_u64().unwrap())
        .find_map(|m| {
            let rows = api.get(&format!("/api/v1/markets/{m}/escalations?day={day}"));
            let row = rows
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["resolution"].is_null() && r["entry"]["subject"].is_u64())?
                .clone();
            Some((m, row))
        });
    let (market, row) = open.expect("the demo escalated nobody with a known face or card");
    let (gate, seq) = (&row["entry"]["gate"], &row["entry"]["seq"]);
    let subject = row["entry"]["subject"].as_u64().unwrap();
    let selector = format!("tr[data-testid=escalation][data-gate=\"{gate}\"][data-seq=\"{seq}\"]");
    let mut page = browser.page(&format!("view=escalations&market={market}&day={day}"));
    page.wait_for(&format!(
        "document.body.dataset.ready === 'escalations' && document.querySelector('{selector}')"
    ));
    // Without a name the console refuses to send: every resolution records who made it.
    page.eval(&format!(
        "document.querySelector('{selector} [data-testid=resolve-admitted]').click(); true"
    ));
    let error = page.wait_for("document.body.dataset.error");
    assert!(error.as_str().unwrap().contains("your name"), "{error}");
    page.eval(&format!(
        "const name = document.querySelector('[data-testid=staff-name]'); \
         name.value = 'Wang Fang'; name.dispatchEvent(new Event('change')); \
         document.querySelector('{selector} [data-testid=resolve-note]').value = 'paper test shown'; \
         document.querySelector('{selector} [data-testid=resolve-admitted]').click(); true"
    ));
    page.wait_for(&format!(
        "document.querySelector('{selector}')?.dataset.state === 'admitted'"
    ));
    let listed = api.get(&format!("/api/v1/markets/{market}/escalations?day={day}"));
    let resolution = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["entry"]["gate"] == *gate && r["entry"]["seq"] == *seq)
        .unwrap()["resolution"]
        .clone();
    assert_eq!(resolution["outcome"], "admitted");
    assert_eq!(resolution["by"], "Wang Fang");
    assert_eq!(resolution["note"], "paper test shown");
    // A second resolution is refused and the first stands.
    let again = crate::http_client::post_json(
        api.addr,
        &format!("/api/v1/escalations/{gate}/{seq}/resolve"),
        Some(&api.token),
        r#"{"outcome": "turned_away", "by": "Li Wei"}"#,
    );
    assert_eq!(again.status, 409);
    // The person's timeline shows it.
    let dom = browser.dump(&format!("view=person&subject={subject}&day={day}"));
    expect_ready(&dom, "person");
    let resolved: Vec<_> = elements(&dom, "resolution")
        .into_iter()
        .filter(|r| {
            gate.as_u64() == r.attr("data-gate").parse().ok()
                && seq.as_u64() == r.attr("data-seq").parse().ok()
        })
        .collect();
    assert_eq!(resolved.len(), 1, "the resolution in the person view");
    assert_eq!(resolved[0].attr("data-outcome"), "admitted");
    assert!(
        elements(&dom, "timeline-dot").iter().any(|d| d
            .attrs
            .get("data-resolved")
            .map(String::as_str)
            == Some("admitted")),
        "the timeline marks the resolved escalation"
    );
}

// ---------------------------------------------------------------------------------------------
// The views.

/// Live: totals, queue capacity, failing checks and the per-market table. The load is over, but
/// the page is still bracketed by two API reads so a late verdict cannot make the test flaky.
fn check_live(browser: &Browser, api: &Api) {
    let before = api.get("/api/v1/stats")["engine"].clone();
    let dom = browser.dump("view=live");
    let after = api.get("/api/v1/stats")["engine"].clone();
    expect_ready(&dom, "live");

    for (testid, key) in [
        ("live-admit", "admit"),
        ("live-deny", "deny"),
        ("live-escalate", "escalate"),
        ("live-submitted", "submitted"),
        ("live-rejected-busy", "rejected_busy"),
    ] {
        let shown = one(&dom, testid).number();
        within(&before[key], shown, &after[key], testid);
    }
    assert!(
        one(&dom, "live-admit").number() > 0,
        "the load admitted nobody"
    );
    assert_eq!(
        one(&dom, "live-queue-capacity").number(),
        after["queue_capacity"].as_u64().unwrap()
    );

    let checks = elements(&dom, "failed-check");
    let after_checks = after["failed_checks"].as_object().unwrap();
    assert_eq!(checks.len(), after_checks.len(), "failing check kinds");
    for row in &checks {
        let kind = row.attr("data-check");
        let shown = row.one("failed-check-count").number();
        within(
            &before["failed_checks"][kind],
            shown,
            &after_checks[kind],
            kind,
        );
    }

    let rows = elements(&dom, "market-row");
    let markets = after["markets"].as_array().unwrap();
    assert_eq!(rows.len(), markets.len(), "per-market rows");
    for (row, m) in rows.iter().zip(markets) {
        assert_eq!(row.attr("data-market"), m["market"].to_string());
        let earlier = before["markets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["market"] == m["market"])
            .cloned()
            .unwrap_or(Value::Null);
        for key in ["admit", "deny", "escalate"] {
            let shown = row.one(&format!("market-{key}")).number();
            within(&earlier[key], shown, &m[key], key);
        }
    }
}

/// Hall display of the first market: the counts and every staff row, in the API's order.
/// Returns the market and the engine's day, which the other views then ask for explicitly (a
/// run across midnight must not compare two different days).
fn check_hall(browser: &Browser, api: &Api) -> (u64, String) {
    let markets = api.get("/api/v1/markets");
    let market = markets[0]["market"].as_u64().expect("no market registered");
    let day = api.get(&format!("/api/v1/markets/{market}/hall"))["day"]
        .as_str()
        .unwrap()
        .to_owned();
    let dom = browser.dump(&format!("view=hall&market={market}&day={day}"));
    let hall = api.get(&format!("/api/v1/markets/{market}/hall?day={day}"));
    expect_ready(&dom, "hall");

    for (testid, key) in [
        ("hall-staff", "staff"),
        ("hall-signed-in", "signed_in"),
        ("hall-tested-today", "tested_today"),
        ("hall-not-tested", "not_tested"),
    ] {
        assert_eq!(
            one(&dom, testid).number(),
            hall["counts"][key].as_u64().unwrap(),
            "{testid}"
        );
    }
    let shown: Vec<_> = elements(&dom, "staff-row")
        .iter()
        .map(|row| {
            (
                row.attr("data-subject").to_owned(),
                row.attr("data-tested").to_owned(),
                row.one("staff-test-result").text(),
                row.one("staff-signed-in-at").attr("data-ms").to_owned(),
            )
        })
        .collect();
    let expected: Vec<_> = hall["staff"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["subject"].to_string(),
                if p["tested_today"].as_bool().unwrap() {
                    "yes"
                } else {
                    "no"
                }
                .to_owned(),
                p["test_result"].as_str().unwrap_or("no test").to_owned(),
                p["signed_in_at"]
                    .as_u64()
                    .map_or(String::new(), |ms| ms.to_string()),
            )
        })
        .collect();
    assert!(!expected.is_empty(), "market {market} has no staff");
    assert_eq!(shown, expected, "staff rows of market {market}");
    (market, day)
}

/// The person with the most admitted entries at `market` on `day`.
fn busiest_subject(api: &Api, market: u64, day: &str) -> u64 {
    let rows = api.get(&format!(
        "/api/v1/markets/{market}/frequency?day={day}&min=1"
    ));
    rows.as_array()
        .unwrap()
        .iter()
        .max_by_key(|r| r["entries"].as_u64().unwrap())
        .expect("nobody entered the market during the load")["subject"]
        .as_u64()
        .unwrap()
}

/// Person: registry facts, frequency per market, one timeline mark per entry record, and the
/// recent verdicts with their checks in policy order.
fn check_person(browser: &Browser, api: &Api, subject: u64, day: &str) {
    let dom = browser.dump(&format!("view=person&subject={subject}&day={day}"));
    let base = format!("/api/v1/subjects/{subject}");
    let info = api.get(&base);
    let trajectory = api.get(&format!("{base}/trajectory?day={day}"));
    let frequency = api.get(&format!("{base}/frequency?day={day}"));
    let verdicts = api.get(&format!("{base}/verdicts?limit=20"));
    expect_ready(&dom, "person");

    assert_eq!(one(&dom, "person-subject").text(), subject.to_string());
    assert_eq!(
        one(&dom, "person-category").text().replace(' ', "_"),
        info["subject"]["category"].as_str().unwrap()
    );

    let records = trajectory.as_array().unwrap();
    assert!(!records.is_empty(), "subject {subject} has no trajectory");
    assert_eq!(one(&dom, "trajectory-count").number(), records.len() as u64);
    let mut marks: Vec<_> = elements(&dom, "timeline-dot")
        .iter()
        .map(|m| {
            [
                m.attr("data-gate").to_owned(),
                m.attr("data-seq").to_owned(),
                m.attr("data-market").to_owned(),
                m.attr("data-decision").to_owned(),
            ]
        })
        .collect();
    let mut expected: Vec<_> = records
        .iter()
        .map(|r| {
            [
                r["gate"].to_string(),
                r["seq"].to_string(),
                r["market"].to_string(),
                r["decision"].as_str().unwrap().to_owned(),
            ]
        })
        .collect();
    marks.sort();
    expected.sort();
    assert_eq!(marks, expected, "timeline of subject {subject}");

    assert_eq!(
        one(&dom, "person-entries").number(),
        frequency["entries"].as_u64().unwrap()
    );
    let by_market: Vec<_> = elements(&dom, "freq-row")
        .iter()
        .map(|r| {
            (
                r.attr("data-market").to_owned(),
                r.one("freq-entries").number(),
            )
        })
        .collect();
    let expected: Vec<_> = frequency["by_market"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["market"].to_string(), m["entries"].as_u64().unwrap()))
        .collect();
    assert_eq!(by_market, expected, "frequency of subject {subject}");

    check_verdicts(&dom, &verdicts, subject);
}

/// The verdict cards, most recent first, each with its checks (kind and outcome) in order.
fn check_verdicts(dom: &str, verdicts: &Value, subject: u64) {
    let shown: Vec<_> = elements(dom, "verdict")
        .iter()
        .map(|v| {
            let checks: Vec<_> = v
                .find("check")
                .iter()
                .map(|c| {
                    (
                        c.attr("data-kind").to_owned(),
                        c.attr("data-outcome").to_owned(),
                    )
                })
                .collect();
            (
                v.attr("data-gate").to_owned(),
                v.attr("data-seq").to_owned(),
                v.attr("data-decision").to_owned(),
                checks,
            )
        })
        .collect();
    let expected: Vec<_> = verdicts
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let checks: Vec<_> = v["checks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c["kind"].as_str().unwrap().to_owned(),
                        c["outcome"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            (
                v["entry"]["gate"].to_string(),
                v["entry"]["seq"].to_string(),
                v["entry"]["decision"].as_str().unwrap().to_owned(),
                checks,
            )
        })
        .collect();
    assert!(!expected.is_empty(), "subject {subject} has no verdicts");
    assert!(
        expected.iter().all(|v| !v.3.is_empty()),
        "a verdict without checks"
    );
    assert_eq!(shown, expected, "recent verdicts of subject {subject}");
}

/// Contacts: one row per person and market, as the API lists them.
fn check_contacts(browser: &Browser, api: &Api, subject: u64, day: &str) {
    let dom = browser.dump(&format!(
        "view=contacts&subject={subject}&day={day}&window_s=600"
    ));
    let contacts = api.get(&format!(
        "/api/v1/subjects/{subject}/contacts?day={day}&window_s=600"
    ));
    expect_ready(&dom, "contacts");
    let expected: Vec<_> = contacts
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            [
                c["subject"].to_string(),
                c["market"].to_string(),
                c["passages"].to_string(),
                c["closest_ms"].to_string(),
            ]
        })
        .collect();
    assert!(
        !expected.is_empty(),
        "subject {subject} met nobody during the load"
    );
    let shown: Vec<_> = elements(&dom, "contact-row")
        .iter()
        .map(|r| {
            [
                r.attr("data-subject").to_owned(),
                r.attr("data-market").to_owned(),
                r.one("contact-passages").number().to_string(),
                r.one("contact-closest-ms").attr("data-value").to_owned(),
            ]
        })
        .collect();
    assert_eq!(one(&dom, "contacts-count").number(), expected.len() as u64);
    assert_eq!(shown, expected, "contacts of subject {subject}");
}

/// A wrong token renders no data and says what to do.
fn check_wrong_token(browser: &Browser) {
    let dom = browser.dump_with_token("not-the-token", "view=live");
    let body = body(&dom);
    assert_eq!(
        body.attrs.get("data-ready"),
        None,
        "rendered with a wrong token"
    );
    let error = body.attrs.get("data-error").cloned().unwrap_or_default();
    assert!(error.contains("token missing or wrong"), "error: {error:?}");
    // The advice fits `serve` as well as the demo.
    let advice = one(&dom, "error").text();
    assert!(
        advice.contains("/#token=TOKEN")
            && advice.contains("admin.token")
            && advice.contains("gatewarden serve")
            && advice.contains("gatewarden demo --console"),
        "{advice}"
    );
    assert!(elements(&dom, "live-admit").is_empty());
}

fn expect_ready(dom: &str, view: &str) {
    let body = body(dom);
    assert_eq!(
        body.attrs.get("data-ready").map(String::as_str),
        Some(view),
        "the {view} view did not render; the page says {:?}",
        body.attrs.get("data-error")
    );
    assert_eq!(body.attrs.get("data-error"), None);
}

/// `low <= shown <= high`, with absent API counters (a kind not yet seen) as zero.
fn within(low: &Value, shown: u64, high: &Value, what: &str) {
    let low = low.as_u64().unwrap_or(0);
    let high = high.as_u64().unwrap_or(0);
    assert!(
        low <= shown && shown <= high,
        "{what}: page shows {shown}, the API said {low} before and {high} after"
    );
}

// ---------------------------------------------------------------------------------------------
// The API, through the tests' own HTTP client.

struct Api {
    addr: SocketAddr,
    token: String,
}

impl Api {
    fn get(&self, path: &str) -> Value {
        let response = get(self.addr, path, Some(&self.token));
        assert_eq!(response.status, 200, "GET {path}");
        response.json()
    }
}

// ---------------------------------------------------------------------------------------------
// The demo process.

/// `gatewarden demo --console` in its own process group (with its server child), killed as a
/// group if the test fails before stopping it, so no server outlives the test.
struct Demo {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stopped: bool,
}

impl Demo {
    fn start(tmp: &Path) -> Self {
        let stderr = std::fs::File::create(tmp.join("demo.stderr")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_gatewarden"))
            .args([
                "demo",
                "--console",
                "--console-addr",
                "127.0.0.1:0",
                "--subjects",
                "2000",
                "--gates",
                "20",
                "--markets",
                "3",
                "--rate",
                "150",
                "--duration",
                "6s",
                "--plot",
            ])
            .arg(tmp.join("p.svg"))
            // The demo's temporary data folder goes under the test's, removed either way.
            .env("TMPDIR", tmp)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
            stopped: false,
        }
    }

    /// The console's address and token from the URL the demo prints, once the load is over
    /// and the demo says the console stays up.
    fn console(&mut self) -> (SocketAddr, String) {
        let line = self.wait_for("console: ");
        let url = line.strip_prefix("console: http://").unwrap();
        let (addr, token) = url.split_once("/#token=").unwrap();
        let stays = self.wait_for("console stays up at ");
        assert!(stays.contains(url), "{stays:?} does not name {url:?}");
        (addr.parse().unwrap(), token.to_owned())
    }

    fn wait_for(&mut self, prefix: &str) -> String {
        loop {
            match self.lines.recv_timeout(DEMO_LINE_TIMEOUT) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no {prefix:?} line from the demo ({e}); it printed {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// SIGTERM, as Ctrl-C would: the demo stops its server cleanly and removes its folder.
    fn stop(mut self, tmp: &Path) {
        let pid = self.child.id();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.wait_for("server shutdown: clean");
        let status = self.child.wait().unwrap();
        self.stopped = true;
        assert!(status.success(), "demo exited with {status}");
        let folder = tmp.join(format!("gatewarden-demo-{pid}"));
        assert!(!folder.exists(), "{} was left behind", folder.display());
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if !self.stopped {
            kill_group(self.child.id());
            let _ = self.child.wait();
        }
    }
}

fn kill_group(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
}

// ---------------------------------------------------------------------------------------------
// The browser.

/// GATEWARDEN_BROWSER, else the first of chromium, chromium-browser, google-chrome on PATH.
fn find_browser() -> Option<PathBuf> {
    if let Some(exe) = std::env::var_os("GATEWARDEN_BROWSER") {
        return Some(PathBuf::from(exe));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|exe| exe.is_file())
        })
}

struct Browser {
    exe: PathBuf,
    /// A fresh profile per run, so no session storage (token) carries over between pages.
    profiles: PathBuf,
    base: String,
    token: String,
}

impl Browser {
    /// A page at `#token=...&<fragment>` to act in, in a fresh profile.
    fn page(&self, fragment: &str) -> crate::cdp::Page {
        static PAGE: AtomicU32 = AtomicU32::new(0);
        let profile = self
            .profiles
            .join(format!("cdp-{}", PAGE.fetch_add(1, Ordering::Relaxed)));
        let url = format!("{}#token={}&{fragment}", self.base, self.token);
        crate::cdp::Page::open(&self.exe, &profile, &url)
    }

    /// The DOM of the console at `#token=...&<fragment>` with the demo's token.
    fn dump(&self, fragment: &str) -> String {
        self.dump_with_token(&self.token, fragment)
    }

    fn dump_with_token(&self, token: &str, fragment: &str) -> String {
        self.dump_url(&format!("{}#token={token}&{fragment}", self.base))
    }

    /// Runs headless Chromium on the URL and returns the DOM it dumps. Virtual time lets the
    /// page's timers run (10 s of polling) without waiting for them, and it does not advance
    /// while a fetch is pending, so the dump holds the rendered answers.
    fn dump_url(&self, url: &str) -> String {
        static PROFILE: AtomicU32 = AtomicU32::new(0);
        let profile = self
            .profiles
            .join(PROFILE.fetch_add(1, Ordering::Relaxed).to_string());
        let child = Command::new(&self.exe)
            .args(crate::cdp::HEADLESS)
            .args(["--dump-dom", "--virtual-time-budget=10000"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; {NO_BROWSER}", self.exe.display()));
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        // Read the output on a thread: a full pipe must not block the browser while we wait.
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let Ok(output) = rx.recv_timeout(BROWSER_TIMEOUT) else {
            kill_group(pid);
            panic!("the browser did not finish {url} in {BROWSER_TIMEOUT:?}");
        };
        // Helpers Chromium started in its group (crash handler, zygote) go with it.
        kill_group(pid);
        let output = output.unwrap();
        assert!(
            output.status.success(),
            "the browser failed on {url}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the dumped DOM. Chromium serialises every attribute as name="value" with quotes
// escaped, so a small scanner finds elements by data-testid without an HTML parser.

struct Element {
    attrs: BTreeMap<String, String>,
    /// The markup up to the element's first closing tag; the console never nests an element
    /// with a data-testid inside another of the same tag.
    inner: String,
}

impl Element {
    fn attr(&self, name: &str) -> &str {
        self.attrs
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", self.attrs))
    }

    fn text(&self) -> String {
        let mut out = String::new();
        let mut in_tag = false;
        for c in self.inner.chars() {
            match c {
                '<' => in_tag = true,
                '>' => in_tag = false,
                c if !in_tag => out.push(c),
                _ => {}
            }
        }
        unescape(out.trim())
    }

    /// The rendered number, from `data-value` (the text is formatted for people: 1,234).
    fn number(&self) -> u64 {
        let value = self.attr("data-value");
        value
            .parse()
            .unwrap_or_else(|e| panic!("{value:?} in {:?} is not a count: {e}", self.attrs))
    }

    fn find(&self, testid: &str) -> Vec<Self> {
        elements(&self.inner, testid)
    }

    fn one(&self, testid: &str) -> Self {
        let mut found = self.find(testid);
        assert_eq!(found.len(), 1, "{testid} inside {:?}", self.attrs);
        found.remove(0)
    }
}

/// Every element whose data-testid is exactly `testid`, in document order.
fn elements(html: &str, testid: &str) -> Vec<Element> {
    let needle = format!("data-testid=\"{testid}\"");
    html.match_indices(&needle)
        .map(|(at, _)| {
            let start = html[..at].rfind('<').unwrap();
            element_at(html, start)
        })
        .collect()
}

fn one(html: &str, testid: &str) -> Element {
    let mut found = elements(html, testid);
    assert_eq!(found.len(), 1, "elements with data-testid={testid}");
    found.remove(0)
}

fn body(html: &str) -> Element {
    element_at(html, html.find("<body").expect("no <body> in the dump"))
}

/// The element whose start tag begins at `start` (the `<`).
fn element_at(html: &str, start: usize) -> Element {
    let end = start + html[start..].find('>').unwrap();
    let tag = &html[start + 1..end];
    let name = tag.split_whitespace().next().unwrap();
    let rest = &html[end + 1..];
    let inner = rest
        .find(&format!("</{name}>"))
        .map_or("", |close| &rest[..close]);
    Element {
        attrs: parse_attrs(&tag[name.len()..]),
        inner: inner.to_owned(),
    }
}

fn parse_attrs(mut s: &str) -> BTreeMap<String, String> {
    let mut attrs = BTreeMap::new();
    loop {
        s = s.trim_start();
        let Some(eq) = s.find('=') else { break };
        let name = s[..eq].trim();
        let value_start = &s[eq + 1..];
        let Some(value) = value_start.strip_prefix('"') else {
            break;
        };
        let close = value.find('"').unwrap();
        attrs.insert(name.to_owned(), unescape(&value[..close]));
        s = &value[close + 1..];
    }
    attrs
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

#[test]
fn dom_scanner_reads_attributes_rows_and_text() {
    let html = r#"<body data-ready="live"><table><tr data-testid="row" data-subject="7" class="">
        <td data-testid="n" data-value="1234">1,234</td><td data-testid="t">a &amp; <b>b</b></td></tr>
        <tr data-testid="row" data-subject="8"><td data-testid="n" data-value="5">5</td></tr></table></body>"#;
    assert_eq!(body(html).attrs["data-ready"], "live");
    let rows = elements(html, "row");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].attr("data-subject"), "7");
    assert_eq!(rows[0].one("n").number(), 1234);
    assert_eq!(rows[0].one("t").text(), "a & b");
    assert_eq!(rows[1].one("n").number(), 5);
    assert!(elements(html, "ro").is_empty());
}
