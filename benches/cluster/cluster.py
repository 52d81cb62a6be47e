"""Driver of benches/cluster/run.sh: two gatewarden nodes on one PostgreSQL with market
leases, the load generator knowing both, and node a killed with SIGKILL mid-run (issue 14).

Steps:
1. A site in PostgreSQL: a loadgen population (people, faces, gates over 2 markets) imported
   with the CLI; the policy with anti-passback on and an occupancy cap the load reaches. The
   data folder (certificates, credential key, gallery) is copied for node b.
2. Node a prefers market 1, node b market 2 (`[cluster.leases]`); both serve with the admin
   HTTP API on loopback.
3. Enrol a new person at node a (HTTP), then look the person up at node b (HTTP; the answer
   comes from b's registry cache): registry propagation between nodes.
4. `gatewarden-loadgen run` with both `--target`s; at --kill-at-s node a gets SIGKILL. Node b
   takes market 1 once a's lease ran out (ttl, plus the grace for a market it does not prefer).
5. Checks, from the load generator's report and verdicts and from PostgreSQL's entry log:
   nothing lost, every acknowledged event recorded, no (gate, seq) twice, no market over its
   occupancy cap, anti-passback held (no admitted entry of a person already inside), the time
   from the kill until b served market 1 (from b's log line "took market leases"), and the
   time until the per-second p99 was back under 100 ms.

Prints PASS/FAIL lines and writes the JSON report (--out/cluster.json).
"""

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

SERVED_AGAIN_LIMIT_S = 10.0
P99_BACK_LIMIT_S = 15.0
P99_LIMIT_MS = 100.0
ADMIT, ENTRY, EXIT, SIGN_IN = 1, 1, 2, 3  # the entry log's codes


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port(kind=socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def psql(args, sql: str) -> list:
    out = subprocess.run(
        [args.psql, "-d", args.url, "-At", "-F", "\t", "-c", sql],
        check=True, capture_output=True, text=True).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def prepare(args, work: Path) -> int:
    """The site in PostgreSQL; returns the occupancy cap of the policy."""
    gw, lg = args.bin_dir / "gatewarden", args.bin_dir / "gatewarden-loadgen"
    population, site = work / "population", work / "a"
    log(f"preparing: {args.subjects} people, {args.gates} gates over 2 markets, in PostgreSQL")
    run([lg, "population", "--out", population, "--subjects", args.subjects, "--markets", 2,
         "--gates", args.gates], stdout=subprocess.DEVNULL)
    run([gw, "init", site, "--gates", args.gates, "--markets", 2], stdout=subprocess.DEVNULL)
    config = site / "gatewarden.toml"
    config.write_text(f'store = "{args.url}"\n' + config.read_text())
    cap = max(10, args.subjects // 8)
    policy = site / "policy.toml"
    text = policy.read_text()
    text = re.sub(r"(?m)^anti_passback = false", "anti_passback = true", text)
    text = re.sub(r"(?m)^occupancy_cap = .*$", f"occupancy_cap = {cap}", text)
    policy.write_text(text)
    for cmd in (["import", "gates", population / "gates.jsonl"],
                ["import", "subjects", population / "subjects.jsonl"],
                ["health", "import", population / "health.jsonl"],
                ["enroll", "--vectors", population / "templates.npy", "--subjects",
                 population / "template_subjects.txt", "--no-duplicate-check"]):
        run([gw, *cmd, "--data", site], stdout=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "error"})
    shutil.copytree(site, work / "b", symlinks=True)
    return cap


def node_config(args, me: str, quic: dict, http: dict) -> str:
    return (f'store = "{args.url}"\n'
            '[engine]\ndim = 512\nmodel = "demo-face-v1"\npolicy = "policy.toml"\n'
            f'[server]\nlisten = "{quic[me]}"\n'
            f'[http]\nlisten = "{http[me]}"\n'
            f'[cluster]\nnode = "{me}"\nunowned_retry_ms = 500\n'
            f'[cluster.leases]\nttl_ms = {args.ttl_ms}\nrenew_ms = {args.renew_ms}\n'
            f'[[cluster.nodes]]\nname = "a"\naddresses = ["{quic["a"]}"]\nmarkets = [1]\n'
            f'[[cluster.nodes]]\nname = "b"\naddresses = ["{quic["b"]}"]\nmarkets = [2]\n')


def start(args, data: Path, log_path: Path):
    proc = subprocess.Popen(
        [str(args.bin_dir / "gatewarden"), "serve", "--data", str(data)],
        stdout=subprocess.PIPE, stderr=open(log_path, "w"), text=True,
        env={**os.environ, "RUST_LOG": "info", "NO_COLOR": "1"})
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"{data}: serve said {line!r}; see {log_path}")
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc


def http_call(addr: str, token: str, method: str, path: str, body=None):
    req = urllib.request.Request(
        f"http://{addr}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def enrol_at_a_verify_at_b(args, work: Path, http: dict) -> dict:
    """A new person written at node a; how long until node b's registry knows them."""
    subject = 9_000_000
    # A record in the population's own format, under a new id.
    first = (work / "population" / "subjects.jsonl").read_text().splitlines()[0]
    record = {**json.loads(first), "subject": subject}
    for credential in ("id_card", "qr_tokens"):
        record.pop(credential, None)
    token_a = (work / "a" / "admin.token").read_text().strip()
    token_b = (work / "b" / "admin.token").read_text().strip()
    status, body = http_call(http["a"], token_a, "POST", "/api/v1/subjects", [record])
    if status >= 300:
        return {"written_at_a": False, "status": status, "body": body.decode()[:200]}
    written = time.monotonic()
    seen_after = None
    while time.monotonic() - written < 5.0:
        status, _ = http_call(http["b"], token_b, "GET", f"/api/v1/subjects/{subject}")
        if status == 200:
            seen_after = time.monotonic() - written
            break
        time.sleep(0.05)
    return {"written_at_a": True, "seen_at_b_after_s": seen_after}


def served_again_after(log_path: Path, killed_wall: float):
    """Seconds from the kill to b's log line saying it took market 1 (counters rebuilt)."""
    for line in log_path.read_text(errors="replace").splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)
        if "took market leases" not in line or not re.search(r"markets=\[[^\]]*\b1\b", line):
            continue
        stamp = line.split()[0]
        try:
            at = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
        if at >= killed_wall - 1.0:
            return at - killed_wall
    return None


def log_checks(args, day_start_ms: int, cap: int) -> dict:
    dupes = psql(args, "SELECT count(*) FROM (SELECT gate, seq FROM entries GROUP BY gate, seq "
                       "HAVING count(*) > 1) d")[0][0]
    # Per person and market, in decision order: an admitted entry right after an admitted
    # entry is a person let in while inside. (A staff sign-in is not checked for anti-passback
    # by the policy, so it may follow an entry; it still counts as being inside.)
    passback = psql(args, f"""
        WITH adm AS (
          SELECT gate, seq, market, subject, mode, direction, lag(direction) OVER (
                   PARTITION BY market, subject ORDER BY decided_at, id) AS prev
          FROM entries
          WHERE decision = {ADMIT} AND subject IS NOT NULL AND decided_at >= {day_start_ms})
        SELECT gate, seq, market, subject FROM adm
        WHERE direction = {ENTRY} AND prev = {ENTRY} AND mode <> {SIGN_IN}""")
    # The occupancy as the engine counts it (an entry counts if the person was not inside, an
    # exit if they were), its running maximum per market.
    occupancy = psql(args, f"""
        WITH adm AS (
          SELECT id, market, decided_at, direction, lag(direction) OVER (
                   PARTITION BY market, subject ORDER BY decided_at, id) AS prev
          FROM entries
          WHERE decision = {ADMIT} AND subject IS NOT NULL AND decided_at >= {day_start_ms}),
        d AS (
          SELECT market, decided_at, id,
                 CASE WHEN direction = {ENTRY} AND prev IS DISTINCT FROM {ENTRY} THEN 1
                      WHEN direction = {EXIT} AND prev = {ENTRY} THEN -1 ELSE 0 END AS delta
          FROM adm)
        SELECT market, max(occ) FROM (
          SELECT market, sum(delta) OVER (PARTITION BY market ORDER BY decided_at, id) AS occ
          FROM d) s GROUP BY market ORDER BY market""")
    return {"duplicates": int(dupes), "anti_passback_violations": len(passback),
            "anti_passback_examples": passback[:10],
            "max_occupancy": {m: int(o) for m, o in occupancy}, "occupancy_cap": cap}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin-dir", type=Path, required=True)
    p.add_argument("--url", required=True, help="the PostgreSQL URL (run.sh starts one)")
    p.add_argument("--psql", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--subjects", type=int, default=2000)
    p.add_argument("--gates", type=int, default=40)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--duration-s", type=int, default=40)
    p.add_argument("--kill-at-s", type=int, default=12)
    p.add_argument("--ttl-ms", type=int, default=3000)
    p.add_argument("--renew-ms", type=int, default=1000)
    args = p.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    cap = prepare(args, work)
    quic = {n: f"127.0.0.1:{free_port()}" for n in "ab"}
    http = {n: f"127.0.0.1:{free_port(socket.SOCK_STREAM)}" for n in "ab"}
    for n in "ab":
        (work / n / "gatewarden.toml").write_text(node_config(args, n, quic, http))
    logs = {n: work / f"node-{n}.log" for n in "ab"}
    a = start(args, work / "a", logs["a"])
    b = start(args, work / "b", logs["b"])
    log(f"node a on {quic['a']}, node b on {quic['b']}")
    propagation = enrol_at_a_verify_at_b(args, work, http)
    log(f"enrol at a, look up at b: {propagation}")

    report_path, verdicts_path = work / "loadgen.json", work / "verdicts.jsonl"
    day_start_ms = 0  # a fresh database: every entry is this run's
    lg = subprocess.Popen(
        [str(args.bin_dir / "gatewarden-loadgen"), "run", "--target", quic["a"],
         "--target", quic["b"], "--certs", str(work / "a" / "certs"),
         "--population", str(work / "population"), "--rate", str(args.rate),
         "--profile", "constant", "--duration", f"{args.duration_s}s",
         "--reply-timeout", "30s", "--json", str(report_path),
         "--verdicts", str(verdicts_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ticks = []
    reader = threading.Thread(
        target=lambda: [ticks.append(time.monotonic()) for line in lg.stderr
                        if line.startswith("[")], daemon=True)
    reader.start()
    try:
        while len(ticks) < args.kill_at_s and lg.poll() is None:
            time.sleep(0.05)
        load_start = ticks[0] - 1.0 if ticks else time.monotonic()
        a.kill()  # SIGKILL
        killed, killed_wall = time.monotonic(), time.time()
        a.wait()
        kill_t = killed - load_start
        log(f"node a killed at t = {kill_t:.1f} s")
        lg.wait(timeout=args.duration_s + 300)
    finally:
        if lg.poll() is None:
            lg.kill()
        if a.poll() is None:
            a.kill()
        b.send_signal(signal.SIGTERM)
        try:
            b.wait(timeout=30)
        except subprocess.TimeoutExpired:
            b.kill()

    report = json.loads(report_path.read_text())
    received = set()
    for line in verdicts_path.read_text().splitlines():
        v = json.loads(line)
        received.add((int(v["gate"]), int(v["seq"])))
    stored = {(int(g), int(s)) for g, s in psql(args, "SELECT gate, seq FROM entries")}
    missing = received - stored
    checks_log = log_checks(args, day_start_ms, cap)
    served = served_again_after(logs["b"], killed_wall)
    after = [s for s in report["per_second"] if s["t"] > kill_t]
    p99_back = None
    for i, s in enumerate(after):
        if all(x["p99_ms"] <= P99_LIMIT_MS for x in after[i:] if x["verdicts"] > 0):
            p99_back = s["t"] - kill_t
            break
    result = {
        "subjects": args.subjects, "gates": args.gates, "rate": args.rate,
        "duration_s": args.duration_s, "kill_at_s": kill_t, "ttl_ms": args.ttl_ms,
        "renew_ms": args.renew_ms, "sent": report["sent"], "verdicts": report["verdicts"],
        "lost": report["lost"], "errors_by_code": report.get("errors_by_code"),
        "redirects": report.get("redirects"), "failovers": report.get("failovers"),
        "acknowledged": len(received), "acknowledged_not_recorded": len(missing),
        "market_1_served_again_after_s": served, "p99_back_under_100ms_after_s": p99_back,
        "propagation": propagation, **checks_log,
    }
    checks = {
        "nothing_lost": report["lost"] == 0 and len(received) > 0,
        "acknowledged_events_recorded": not missing,
        "no_duplicates": checks_log["duplicates"] == 0,
        "no_market_over_its_cap": all(o <= cap for o in checks_log["max_occupancy"].values()),
        "anti_passback_held": checks_log["anti_passback_violations"] == 0,
        "market_1_served_again_within_10s": served is not None
        and served <= SERVED_AGAIN_LIMIT_S,
        "p99_back_under_100ms_within_15s": p99_back is not None
        and p99_back <= P99_BACK_LIMIT_S,
        "enrolled_at_a_known_at_b_within_1s": propagation.get("seen_at_b_after_s") is not None
        and propagation["seen_at_b_after_s"] <= 1.0,
    }
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'} {name}")
    out = {"result": result, "checks": checks}
    (args.out / "cluster.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
