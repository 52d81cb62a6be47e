//! Sites through the real binary: only `init` makes one, it is owner-only whatever the umask,
//! loose permissions are refused, CLI writers are refused while a server holds the site, and
//! no import lifts a revocation.

use crate::support::gw;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_gatewarden");

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn init(site: &Path, umask: &str) {
    let status = Command::new("sh")
        .args([
            "-c",
            &format!("umask {umask} && exec \"$0\" init \"$1\" --gates 2"),
        ])
        .arg(BIN)
        .arg(site)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_mistyped_data_folder_is_refused_and_not_created() {
    let tmp = tempfile::tempdir().unwrap();
    let typo = tmp.path().join("sitee");
    let csv = tmp.path().join("people.csv");
    std::fs::write(&csv, "subject,category,home_market\n7,shopper,1\n").unwrap();
    let csv = csv.to_str().unwrap();
    let commands: [&[&str]; 6] = [
        &["serve", "--no-http"],
        &["import", "subjects", csv],
        &["health", "import", csv],
        &["enroll", "--vectors", "faces.npy", "--subjects", "ids.txt"],
        &["query", "trajectory", "7"],
        &["reinstate", "7", "--reason", "checked"],
    ];
    for args in commands {
        let out = gw(args, &typo);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = stderr(&out);
        assert!(
            err.contains("is not a gatewarden site") && err.contains("gatewarden init"),
            "{args:?}: {err}"
        );
        assert!(!typo.exists(), "{args:?} created the folder");
    }
}

#[cfg(unix)]
#[test]
fn init_is_owner_only_whatever_the_umask_and_loose_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let site = tmp.path().join("site");
    init(&site, "000");
    for dir in ["", "store", "certs", "gallery"] {
        assert_eq!(mode(&site.join(dir)), 0o700, "{dir:?}");
    }
    for file in ["gatewarden.toml", "policy.toml", "store/gatewarden.db"] {
        assert_eq!(mode(&site.join(file)), 0o600, "{file}");
    }
    for file in ["gatewarden.toml", "policy.toml"] {
        chmod(&site.join(file), 0o664);
        let out = gw(&["serve", "--no-http"], &site);
        assert!(
            !out.status.success(),
            "serve started with a writable {file}"
        );
        let err = stderr(&out);
        assert!(err.contains("chmod go-w") && err.contains(file), "{err}");
        chmod(&site.join(file), 0o600);
    }
    chmod(&site, 0o777);
    let err = stderr(&gw(&["query", "trajectory", "7"], &site));
    assert!(
        err.contains("every user") && err.contains("chmod go-w"),
        "{err}"
    );
}

/// A running `gatewarden serve` on the site, killed when dropped.
struct Serving(Child);

impl Serving {
    fn start(site: &Path) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--no-http", "--listen", "127.0.0.1:0", "--data"])
            .arg(site)
            .env("RUST_LOG", "off")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("listening on"), "{line:?}");
        Self(child)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn cli_writes_wait_for_the_server_and_no_import_lifts_a_revocation() {
    let tmp = tempfile::tempdir().unwrap();
    let site = tmp.path().join("site");
    init(&site, "022");
    let roster = tmp.path().join("people.csv");
    std::fs::write(&roster, "subject,category,home_market\n7,shopper,1\n").unwrap();
    let roster = roster.to_str().unwrap();
    assert!(gw(&["import", "subjects", roster], &site).status.success());
    let out = gw(&["revoke", "7", "--reason", "lost card"], &site);
    assert!(out.status.success(), "{}", stderr(&out));

    // Re-importing the old roster (status active) must not let the person back in.
    let out = gw(&["import", "subjects", roster], &site);
    assert!(!out.status.success(), "the import lifted a revocation");
    assert!(stderr(&out).contains("reinstate"), "{}", stderr(&out));

    {
        let _server = Serving::start(&site);
        for args in [
            &["import", "subjects", roster][..],
            &["reinstate", "7", "--reason", "found"][..],
            &["revoke", "7", "--reason", "again"][..],
        ] {
            let out = gw(args, &site);
            assert!(!out.status.success(), "{args:?} wrote behind the server");
            let err = stderr(&out);
            assert!(
                err.contains("gatewarden serve") && err.contains("admin API"),
                "{args:?}: {err}"
            );
        }
        // Reading is fine while it serves.
        assert!(gw(&["query", "trajectory", "7"], &site).status.success());
    }

    let out = gw(
        &["reinstate", "7", "--reason", "card found at the desk"],
        &site,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("was revoked"),
        "{out:?}"
    );
    assert!(gw(&["import", "subjects", roster], &site).status.success());
}

/// `query` reads and prints times in the site's configured time zone, unless told otherwise.
#[test]
fn query_uses_the_sites_utc_offset() {
    use gatewarden::store::{EntryRecord, EventFingerprint, ModeKind, Store};
    use gatewarden_protocol::{
        Decision, Direction, Display, DisplayColour, GateId, MarketId, SubjectId, UnixMillis,
        Verdict, ZoneId,
    };

    let tmp = tempfile::tempdir().unwrap();
    let site = tmp.path().join("site");
    init(&site, "022");
    // 2026-01-01 00:30 UTC: 08:30 in Beijing (the template's 480), 00:30 at offset 0.
    let at = UnixMillis(1_767_227_400_000);
    {
        let store = Store::open(&site.join("store")).unwrap();
        let verdict = Verdict {
            gate: GateId(1),
            seq: 1,
            decision: Decision::Admit,
            subject: Some(SubjectId(7)),
            score: Some(0.9),
            checks: vec![],
            display: Display {
                colour: DisplayColour::Green,
                text: "welcome".to_owned(),
            },
            decided_at: at,
            replayed: false,
        };
        let record = EntryRecord {
            verdict,
            market: MarketId(1),
            zone: ZoneId(1),
            mode: ModeKind::Identify,
            direction: Direction::Entry,
            captured_at: at,
            fingerprint: EventFingerprint([1; 16]),
            policy: None,
        };
        store.entry_writer().unwrap().commit(&[record]).unwrap();
    }
    let trajectory = |extra: &[&str]| {
        let mut args = vec!["query", "trajectory", "7"];
        args.extend_from_slice(extra);
        let out = gw(&args, &site);
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        trajectory(&[]).contains("2026-01-01 08:30"),
        "{}",
        trajectory(&[])
    );
    let config = site.join("gatewarden.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("utc_offset_minutes = 480", "utc_offset_minutes = 0"),
    )
    .unwrap();
    assert!(
        trajectory(&[]).contains("2026-01-01 00:30"),
        "{}",
        trajectory(&[])
    );
    let flagged = trajectory(&["--utc-offset", "-300"]);
    assert!(flagged.contains("2025-12-31 19:30"), "{flagged}");
}

/// `store stats` reads the day partitions (also while a server holds the site); `store prune`
/// deletes the days past retention as whole files, never keeps more than the configuration
/// says, and waits for the server like every CLI write.
#[test]
fn store_stats_and_prune_work_on_day_partitions() {
    use gatewarden::clock::{Clock, SystemClock};
    use gatewarden::store::{EntryRecord, EventFingerprint, ModeKind, Store};
    use gatewarden_protocol::{
        Decision, Direction, Display, DisplayColour, GateId, MarketId, UnixMillis, Verdict, ZoneId,
    };

    const DAY_MS: u64 = 86_400_000;
    let tmp = tempfile::tempdir().unwrap();
    let site = tmp.path().join("site");
    init(&site, "022");
    let today = SystemClock.now().0 / DAY_MS * DAY_MS;
    {
        let store = Store::open(&site.join("store")).unwrap();
        let records: Vec<EntryRecord> = (0..10u64)
            .map(|days_ago| {
                let at = UnixMillis(today - days_ago * DAY_MS + 1_000);
                EntryRecord {
                    verdict: Verdict {
                        gate: GateId(1),
                        seq: 100 - days_ago,
                        decision: Decision::Deny,
                        subject: None,
                        score: None,
                        checks: vec![],
                        display: Display {
                            colour: DisplayColour::Red,
                            text: "Not identified".to_owned(),
                        },
                        decided_at: at,
                        replayed: false,
                    },
                    market: MarketId(1),
                    zone: ZoneId(1),
                    mode: ModeKind::Identify,
                    direction: Direction::Entry,
                    captured_at: at,
                    fingerprint: EventFingerprint([3; 16]),
                    policy: None,
                }
            })
            .collect();
        store.entry_writer().unwrap().commit(&records).unwrap();
    }
    let stats = |site: &Path| -> serde_json::Value {
        let out = gw(&["store", "stats", "--json"], site);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let s = stats(&site);
    assert_eq!(s["entries"], 10);
    assert_eq!(s["partitions"].as_array().unwrap().len(), 10);
    assert!(s["bytes_per_entry"].as_f64().unwrap() > 0.0);
    let table = gw(&["store", "stats"], &site);
    assert!(String::from_utf8_lossy(&table.stdout).contains("10 partitions"));

    // Longer than the configuration allows, or zero: refused, nothing deleted.
    for days in ["0", "181"] {
        let out = gw(&["store", "prune", "--entry-days", days], &site);
        assert!(!out.status.success(), "--entry-days {days} was accepted");
    }
    {
        let _server = Serving::start(&site);
        let out = gw(&["store", "prune", "--entry-days", "3"], &site);
        assert!(!out.status.success(), "pruned behind the server");
        assert_eq!(stats(&site)["entries"], 10, "stats works beside the server");
    }
    let out = gw(&["store", "prune", "--entry-days", "3"], &site);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("7 partitions deleted"),
        "{out:?}"
    );
    let s = stats(&site);
    assert_eq!(s["entries"], 3);
    let out = gw(&["store", "prune"], &site);
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing deleted"));
}
