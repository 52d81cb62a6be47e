#!/usr/bin/env python3
"""History proof (issue 12): a fresh site against the same site with months of entries.

Run through run.sh, which builds the binaries first. See run.sh for the steps.
"""

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "overload"))
import overload  # noqa: E402  (prepare, cpu and memory readers, the sustainable rule)

DAY_MS = 86_400_000
P99_LIMIT_MS = 100.0


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def write_config(data: Path, entry_days: int, http: bool) -> None:
    (data / "gatewarden.toml").write_text(
        '[server]\nlisten = "127.0.0.1:0"\n'
        f'[http]\nenabled = {"true" if http else "false"}\nlisten = "127.0.0.1:0"\n'
        f'[retention]\nentry_days = {entry_days}\n')


def start_server(bin_dir: Path, data: Path):
    """Starts `gatewarden serve`; returns (process, QUIC address, HTTP address or None)."""
    proc = subprocess.Popen(
        [str(bin_dir / "gatewarden"), "serve", "--data", str(data)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "RUST_LOG": "error"})
    quic, http = None, None
    wants_http = "enabled = true" in (data / "gatewarden.toml").read_text()
    while quic is None or (wants_http and http is None):
        line = proc.stdout.readline()
        if not line:
            proc.kill()
            raise SystemExit("server did not start")
        line = line.strip()
        if line.startswith("listening on "):
            quic = line.removeprefix("listening on ")
        elif line.startswith("http on "):
            http = "http://" + line.removeprefix("http on ")
    return proc, quic, http


def fleet(bin_dir, data, addr, rate, seconds, seed, report):
    return subprocess.Popen(
        [str(bin_dir / "gatewarden-loadgen"), "run", "--target", addr,
         "--certs", str(data / "certs"), "--population", str(data / "population"),
         "--rate", str(rate), "--profile", "constant", "--duration", f"{seconds}s",
         "--json", str(report), "--seed", str(seed), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_step(args, data, rate, entry_days, seed, http=False, during=None):
    """One fleet run at `rate` against a fresh server process; `during(http_addr)` runs
    meanwhile (queries). Returns the loadgen report's figures and the server's CPU."""
    write_config(data, entry_days, http)
    proc, addr, http_addr = start_server(args.bin_dir, data)
    report_path = data / f"report-{int(rate)}-{seed}.json"
    cpu_before = overload.cpu_seconds(proc.pid)
    extra = None
    try:
        f = fleet(args.bin_dir, data, addr, rate, args.step_s, seed, report_path)
        if during is not None:
            extra = during(http_addr, data)
        f.wait()
    finally:
        cpu_after = overload.cpu_seconds(proc.pid)
        rss, _ = overload.stop_server(proc)
    r = json.loads(report_path.read_text())
    out = {
        "rate": rate, "sent": r["sent"], "verdicts": r["verdicts"], "busy": r["busy"],
        "errors": r["errors"], "lost": r["lost"],
        "p50_ms": r["latency_ms"]["p50"], "p99_ms": r["latency_ms"]["p99"],
        "throughput_eps": r["throughput_eps"],
        "server_cpu_s": None if None in (cpu_before, cpu_after) else cpu_after - cpu_before,
        "loadgen_cpu_s": r["cpu_s"], "server_peak_rss_mib": rss,
    }
    if extra is not None:
        out["queries"] = extra
    log("    rate {rate:>6.0f}: verdicts {verdicts:>7} busy {busy:>6} lost {lost:>4} "
        "p50 {p50_ms:6.1f} ms p99 {p99_ms:7.1f} ms CPU server {server_cpu_s:.1f} s".format(**out))
    return out


def search(args, data, label, entry_days):
    log(f"  sustainable-rate search, {label}:")
    best, steps = None, []
    for i, rate in enumerate(float(r) for r in args.rates.split(",")):
        s = run_step(args, data, rate, entry_days, seed=1000 + i)
        steps.append(s)
        if not overload.sustainable(s):
            break
        best = s
    return {"best_rate": best and best["rate"], "steps": steps}


def get(url, token):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = resp.read()
    return (time.perf_counter() - t0) * 1000.0, body


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round((len(s) - 1) * p)))]


def query_load(args, last_day_ms):
    """Returns a `during` callback that times the four history queries while the fleet runs."""
    def during(http, data):
        token = (data / "admin.token").read_text().strip()
        rng = random.Random(7)
        people = args.subjects
        day = time.strftime("%Y-%m-%d", time.gmtime((last_day_ms - DAY_MS) / 1000))
        kinds = {
            "trajectory_90d": lambda: f"{http}/api/v1/subjects/{1 + rng.randrange(people)}"
                                      f"/trajectory?since={last_day_ms - 90 * DAY_MS}&until={last_day_ms}",
            "contacts_1d": lambda: f"{http}/api/v1/subjects/{1 + rng.randrange(people)}"
                                   f"/contacts?day={day}",
            "hall": lambda: f"{http}/api/v1/markets/{1 + rng.randrange(10)}/hall",
            "frequency_30d": lambda: f"{http}/api/v1/markets/{1 + rng.randrange(10)}"
                                     f"/frequency?since={last_day_ms - 30 * DAY_MS}&until={last_day_ms}",
        }
        times = {k: [] for k in kinds}
        rows = {k: 0 for k in kinds}
        time.sleep(3)  # let the fleet connect
        end = time.time() + args.step_s - 6
        while time.time() < end:
            for k, url in kinds.items():
                if k == "frequency_30d" and len(times[k]) >= 20:
                    continue  # heavy; 20 samples are enough
                ms, body = get(url(), token)
                times[k].append(ms)
                try:
                    rows[k] += len(json.loads(body)) if body.startswith(b"[") else 1
                except ValueError:
                    pass
        out = {k: {"n": len(v), "p50_ms": statistics.median(v), "p99_ms": pct(v, 0.99),
                   "max_ms": max(v), "rows": rows[k]} for k, v in times.items() if v}
        # The write-ahead log's peak, as /metrics reports it, after a minute of load.
        req = urllib.request.Request(f"{http}/metrics")
        with urllib.request.urlopen(req, timeout=30) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(("gatewarden_entry_wal_peak_bytes ",
                                    "gatewarden_entry_wal_bytes ",
                                    "gatewarden_entry_checkpoints_total ")):
                    name, value = line.split()
                    out[name] = float(value)
        return out
    return during


def stats(bin_dir, data):
    out = subprocess.run([str(bin_dir / "gatewarden"), "store", "stats", "--data", str(data),
                          "--json"], check=True, capture_output=True, text=True).stdout
    s = json.loads(out)
    return {k: s[k] for k in ("entries", "bytes", "bytes_per_entry", "wal_bytes",
                              "oldest_day", "newest_day")} | {"partitions": len(s["partitions"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--subjects", type=int, default=100_000)
    ap.add_argument("--gates", type=int, default=1000)
    ap.add_argument("--days", type=int, default=180)
    ap.add_argument("--per-day", type=int, default=150_000)
    ap.add_argument("--step-s", type=int, default=20)
    ap.add_argument("--rates", default="2000,2500,3000,3500,4000")
    ap.add_argument("--query-rate", type=float, default=2000)
    ap.add_argument("--keep", type=Path, help="work folder to use and keep (fresh/, aged/)")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="gatewarden-history-"))
    fresh, aged = work / "fresh", work / "aged"
    result = {"config": {k: str(v) for k, v in vars(args).items()}}
    try:
        if not (fresh / "certs").exists():
            overload.prepare(args.bin_dir, fresh, args.subjects, args.gates)
        if not (aged / "certs").exists():
            log(f"copying the site and writing {args.days} days x {args.per_day} entries")
            shutil.copytree(fresh, aged)
            t0 = time.time()
            subprocess.run([str(args.bin_dir / "gatewarden-loadgen"), "history", "--data",
                            str(aged), "--days", str(args.days), "--per-day", str(args.per_day),
                            "--quiet"], check=True)
            result["history_write_s"] = time.time() - t0
        result["aged_store"] = stats(args.bin_dir, aged)
        log(f"  aged store: {result['aged_store']}")
        keep_all = args.days + 1
        result["fresh"] = search(args, fresh, "fresh store", keep_all)
        result["aged"] = search(args, aged, f"{args.days} days of history", keep_all)
        now_ms = int(time.time() * 1000)
        log(f"  queries over HTTP on the aged store while the fleet sends {args.query_rate:.0f} ev/s:")
        result["queries"] = run_step(args, aged, args.query_rate, keep_all, seed=2000, http=True,
                                     during=query_load(args, now_ms - now_ms % DAY_MS))
        for k, q in result["queries"]["queries"].items():
            if not isinstance(q, dict):
                log(f"    {k} {q:.0f}")
                continue
            log(f"    {k:<15} n {q['n']:>4}  p50 {q['p50_ms']:7.1f} ms  p99 {q['p99_ms']:7.1f} ms"
                f"  max {q['max_ms']:7.1f} ms")
        log(f"  pruning 30 days at start-up while the fleet sends {args.query_rate:.0f} ev/s:")
        # The partitions are consecutive days up to today: keeping 30 fewer deletes 30.
        before = stats(args.bin_dir, aged)["partitions"]
        result["prune"] = run_step(args, aged, args.query_rate, before - 30, seed=3000)
        result["prune"]["partitions_before"] = before
        result["prune"]["partitions_after"] = stats(args.bin_dir, aged)["partitions"]
        log(f"    partitions {before} -> {result['prune']['partitions_after']}")
        f, a = result["fresh"]["best_rate"], result["aged"]["best_rate"]
        result["checks"] = {
            "aged_within_10pct_of_fresh": bool(f and a and a >= 0.9 * f),
            "bytes_per_entry_le_300": (result["aged_store"]["bytes_per_entry"] or 0) <= 300,
            "prune_p99_le_100ms": result["prune"]["p99_ms"] <= P99_LIMIT_MS
            and result["prune"]["lost"] == 0,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "history.json").write_text(json.dumps(result, indent=2))
        for name, ok in result["checks"].items():
            log(f"  {'PASS' if ok else 'FAIL'}  {name}")
        log(f"report: {args.out / 'history.json'}")
        return 0 if all(result["checks"].values()) else 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
