"""Driver of benches/storms/run.sh: the three storm proofs of issue 13.

1. retry: gates that retry every Busy with PROTOCOL.md's back-off (hint x 2^(n-1), at most
   4 s, x [0.5, 1.5)), up to their own limit (`--busy-retries`, then they call staff), at 2x
   and 4x the highest sustainable rate. Passes when the goodput (verdicts per second of the
   schedule) is at least 90% of the sustainable rate, the p99 of the attempts that got a
   verdict is at most 100 ms, nothing is lost, nothing falsely admitted, and the server's peak
   RSS is within 1.5x of the sustainable run's.
2. fleet: 10,000 gates, each with its own certificate and connection, 2,000 ev/s in total.
   The fleet first stays quiet (`--hold`) so that the server's resident memory per idle
   connection can be read (RSS with the fleet connected minus RSS before, over the
   connections); the load generator reports its own side the same way. Passes when the p99
   from intended send is at most 100 ms and nothing is lost; the memory is reported against
   the 64 KiB goal.
3. restart: the same fleet and load; the server is killed (SIGKILL) mid-run and started again
   on the same port and data folder. Passes when every gate is connected again within 15 s of
   the kill, the per-second p99 is back under 100 ms (and stays there) within 20 s, and every
   verdict the fleet received (before the kill and after) is on disk.

Everything on loopback, server and fleet on this machine. The helpers (preparation, server
start and stop, CPU and memory readers, one load step, the sustainable rule) are
benches/overload/overload.py's.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "overload"))
import overload  # noqa: E402

P99_LIMIT_MS = overload.P99_LIMIT_MS
GOODPUT_SHARE = 0.9
RECONNECT_LIMIT_S = 15.0
P99_BACK_LIMIT_S = 20.0
MEMORY_GOAL_KIB = 64.0

log = overload.log


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def free_port(kind=socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def goodput(report: dict) -> float:
    """Verdicts per second of the schedule (retries answered after it are not counted)."""
    duration = report["config"]["duration_s"]
    done = sum(s["verdicts"] for s in report["per_second"] if s["t"] <= duration + 1e-6)
    return done / duration


def connections(http: str):
    """The server's open connections, from its /metrics."""
    try:
        with urllib.request.urlopen(f"http://{http}/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("gatewarden_connections "):
                    return int(float(line.split()[1]))
    except OSError:
        return None
    return None


def loadgen_args(args, data: Path, target: str, gates: int, rate: float, duration_s: int,
                 report: Path, extra=()) -> list:
    args.seed += 1
    return [str(args.bin_dir / "gatewarden-loadgen"), "run", "--target", target,
            "--certs", str(data / "certs"), "--population", str(data / "population"),
            "--gates", str(gates), "--rate", str(rate), "--profile", "constant",
            "--duration", f"{duration_s}s", "--json", str(report), "--seed", str(args.seed),
            "--keep-alive", args.keep_alive, "--max-busy-retries", str(args.busy_retries),
            *extra]


# 1. Retrying gates ---------------------------------------------------------------------------

def retry_proof(args, data: Path) -> dict:
    log(f"retry proof (load average {load_average()}):")
    steps = []
    ns = argparse.Namespace(bin_dir=args.bin_dir, step_s=args.step_s, seed=args.seed)
    gates = ("--gates", str(args.retry_gates))
    best = None
    rates = [args.sustainable] if args.sustainable else [float(r) for r in args.rates.split(",")]
    for rate in rates:
        r = overload.step(ns, data, rate, gates)
        steps.append(r)
        if not overload.sustainable(r):
            break
        best = r
    if best is None and args.sustainable:
        # Measured before on a quieter machine: the reference run still gives the memory.
        best = steps[0]
        log(f"  {args.sustainable:.0f} ev/s is not sustainable now (machine load); using it "
            "as given")
    if best is None:
        log("  no sustainable rate among the ones tried; try lower --rates")
        return {"steps": steps, "checks": {"sustainable_rate_found": False}}
    rate = best["rate"]
    log(f"  highest sustainable rate {rate:.0f} ev/s; retrying gates at 2x and 4x, "
        f"{args.retry_s} s each")
    ns.step_s = args.retry_s
    runs, checks, without = [], {}, []
    for factor in (2, 4):
        if args.compare:
            # The same load with refusals as full requests (shedding below requests off), for
            # comparison under the same machine load; not judged.
            ns.server_extra = "shed_below_requests = false\n"
            w = overload.step(ns, data, factor * rate,
                              gates + ("--max-busy-retries", str(args.busy_retries)))
            report = json.loads((data / f"report-{int(factor * rate)}.json").read_text())
            w.update({"factor": factor, "goodput_eps": goodput(report),
                      "shed_below_requests": False})
            log(f"  {factor}x without shedding below requests: goodput "
                f"{w['goodput_eps']:.0f} ev/s, attempt p99 {w['attempt_p99_ms']:.1f} ms")
            without.append(w)
            ns.server_extra = ""
        ns.seed += 1
        loadavg = load_average()
        r = overload.step(ns, data, factor * rate,
                          gates + ("--max-busy-retries", str(args.busy_retries)))
        report = json.loads((data / f"report-{int(factor * rate)}.json").read_text())
        r.update({
            "factor": factor, "load_average_before": loadavg,
            "goodput_eps": goodput(report),
            "busy_gave_up": report["busy_gave_up"],
            "latency_ms": report["latency_ms"],
            "attempt_latency_ms": report["attempt_latency_ms"],
        })
        log(f"  {factor}x: goodput {r['goodput_eps']:.0f} ev/s, {r['busy']} Busy, "
            f"{r['busy_gave_up']} gave up, attempt p99 {r['attempt_p99_ms']:.1f} ms, end p50 "
            f"{r['p50_ms']:.0f} ms p99 {r['p99_ms']:.0f} ms")
        runs.append(r)
        checks[f"retry_{factor}x_goodput_at_least_90pct"] = r["goodput_eps"] >= GOODPUT_SHARE * rate
        checks[f"retry_{factor}x_attempt_p99_under_100ms"] = r["attempt_p99_ms"] <= P99_LIMIT_MS
        checks[f"retry_{factor}x_nothing_lost"] = r["lost"] == 0
        checks[f"retry_{factor}x_no_false_admit"] = r["false_admit"] == 0
        checks[f"retry_{factor}x_memory_bounded"] = (
            (r["server_peak_rss_mib"] or 0)
            <= overload.RSS_GROWTH_LIMIT * (best["server_peak_rss_mib"] or 0))
    return {"sustainable": best, "steps": steps, "runs": runs, "without_shedding": without,
            "checks": checks}


# 2. A fleet of 10,000 ------------------------------------------------------------------------

def fleet_proof(args, data: Path) -> dict:
    log(f"fleet proof: {args.fleet} gates, {args.fleet_rate:.0f} ev/s, {args.fleet_s} s "
        f"(load average {load_average()})")
    port, http = free_port(), f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"
    proc, addr = overload.start_server(args.bin_dir, data, f"127.0.0.1:{port}", http,
                                        args.server_extra)
    report_path = data / "report-fleet.json"
    try:
        time.sleep(1.0)
        rss_before = overload.peak_rss_mib(proc.pid, "VmRSS")
        cpu_before = overload.cpu_seconds(proc.pid)
        lg = subprocess.Popen(
            loadgen_args(args, data, addr, args.fleet, args.fleet_rate, args.fleet_s,
                         report_path, ("--hold", f"{args.hold_s}s", "--quiet")),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Wait for the whole fleet, then let it settle, still quiet (--hold).
        deadline = time.monotonic() + 120
        conns = 0
        while time.monotonic() < deadline and lg.poll() is None:
            conns = connections(http) or 0
            if conns >= args.fleet:
                break
            time.sleep(0.5)
        time.sleep(2.0)
        rss_connected = overload.peak_rss_mib(proc.pid, "VmRSS")
        conns = connections(http) or conns
        lg.wait(timeout=args.fleet_s + args.hold_s + 300)
        cpu_after = overload.cpu_seconds(proc.pid)
    finally:
        peak, _ = overload.stop_server(proc)
    report = json.loads(report_path.read_text())
    per_conn = ((rss_connected - rss_before) * 1024 / conns
                if conns and rss_before and rss_connected else None)
    r = {
        "gates": args.fleet, "rate": args.fleet_rate, "connected": report["gates_connected"],
        "server_connections_seen": conns, "connect_s": report["connect_s"],
        "sent": report["sent"], "verdicts": report["verdicts"], "lost": report["lost"],
        "errors": report["errors"], "false_admit": report["accuracy"]["false_admit"],
        "latency_ms": report["latency_ms"],
        "server_rss_before_mib": rss_before, "server_rss_fleet_connected_mib": rss_connected,
        "server_peak_rss_mib": peak, "server_kib_per_connection": per_conn,
        "loadgen_kib_per_connection": report["rss_per_connection_kib"],
        "loadgen_rss_connected_mib": report["rss_connected_mib"],
        "server_cpu_s": None if None in (cpu_before, cpu_after) else cpu_after - cpu_before,
        "loadgen_cpu_s": report["cpu_s"],
    }
    log(f"  connected {r['connected']} in {r['connect_s']:.1f} s; p50 "
        f"{r['latency_ms']['p50']:.1f} ms p99 {r['latency_ms']['p99']:.1f} ms; lost {r['lost']}; "
        f"server {per_conn or 0:.1f} KiB per idle connection, load generator "
        f"{r['loadgen_kib_per_connection']:.1f} KiB")
    checks = {
        "fleet_all_connected": r["connected"] == args.fleet,
        "fleet_p99_under_100ms": r["latency_ms"]["p99"] <= P99_LIMIT_MS,
        "fleet_nothing_lost": r["lost"] == 0 and r["errors"] == 0,
        "fleet_no_false_admit": r["false_admit"] == 0,
        "fleet_server_memory_per_connection_within_goal":
            per_conn is not None and per_conn <= MEMORY_GOAL_KIB,
    }
    return {"run": r, "checks": checks}


# 3. Everyone reconnecting at once -----------------------------------------------------------

def stored_keys(store: Path) -> set:
    keys = set()
    for day in sorted((store / "entries").glob("*.db")):
        with sqlite3.connect(f"file:{day}?mode=ro", uri=True) as db:
            keys.update(db.execute("SELECT gate, seq FROM entries"))
    return keys


def restart_proof(args, data: Path) -> dict:
    log(f"restart proof: {args.fleet} gates, {args.fleet_rate:.0f} ev/s, kill -9 at "
        f"{args.kill_at_s} s of {args.fleet_s} s (load average {load_average()})")
    port = free_port()
    listen = f"127.0.0.1:{port}"
    proc, addr = overload.start_server(args.bin_dir, data, listen,
                                        server_extra=args.server_extra)
    report_path = data / "report-restart.json"
    verdicts_path = data / "verdicts-restart.jsonl"
    verdicts_path.unlink(missing_ok=True)
    lg = subprocess.Popen(
        loadgen_args(args, data, addr, args.fleet, args.fleet_rate, args.fleet_s, report_path,
                     ("--verdicts", str(verdicts_path))),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # The progress lines (one a second from the load's start) time the kill.
    ticks = []
    reader = threading.Thread(
        target=lambda: [ticks.append(time.monotonic()) for line in lg.stderr
                        if line.startswith("[")], daemon=True)
    reader.start()
    second = None
    try:
        while len(ticks) < args.kill_at_s and lg.poll() is None:
            time.sleep(0.05)
        load_start = ticks[0] - 1.0 if ticks else time.monotonic()
        cpu_first = overload.cpu_seconds(proc.pid)
        proc.kill()
        killed = time.monotonic()
        proc.wait()
        kill_t = killed - load_start
        second, _ = overload.start_server(args.bin_dir, data, listen,
                                          server_extra=args.server_extra)
        start_s = time.monotonic() - killed
        log(f"  killed at t = {kill_t:.1f} s; the new server listened {start_s:.2f} s later")
        lg.wait(timeout=args.fleet_s + 300)
        reader.join(timeout=5)
    finally:
        if lg.poll() is None:
            lg.kill()
        if proc.poll() is None:
            proc.kill()
        peak2, _ = overload.stop_server(second) if second else (None, None)
    report = json.loads(report_path.read_text())
    gates = args.fleet
    after = [s for s in report["per_second"] if s["t"] > kill_t]
    # Back: the first second, once the fleet has noticed the kill, with every gate connected.
    dip = next((i for i, s in enumerate(after) if s["gates_connected"] < gates), None)
    back = None if dip is None else next(
        (s["t"] for s in after[dip:] if s["gates_connected"] >= gates), None)
    # p99 is back once every later second of the schedule has verdicts and a p99 in bounds.
    scheduled = [s for s in after if s["t"] <= report["config"]["duration_s"] + 1e-6]
    p99_back = None
    for i, s in enumerate(scheduled):
        if all(x["verdicts"] > 0 and x["p99_ms"] <= P99_LIMIT_MS for x in scheduled[i:]):
            p99_back = s["t"]
            break
    received = [json.loads(l) for l in verdicts_path.read_text().splitlines() if l.strip()]
    on_disk = stored_keys(data / "store")
    missing = [v for v in received if (v["gate"], v["seq"]) not in on_disk]
    r = {
        "gates": gates, "rate": args.fleet_rate, "kill_at_s": kill_t,
        "server_start_s": start_s,
        "all_reconnected_after_s": None if back is None else back - kill_t,
        "p99_back_under_100ms_after_s": None if p99_back is None else p99_back - kill_t,
        "sent": report["sent"], "verdicts": report["verdicts"], "lost": report["lost"],
        "errors": report["errors"], "reconnects": report["reconnects"],
        "transport_retries": report["transport_retries"], "replayed": report["replayed"],
        "false_admit": report["accuracy"]["false_admit"],
        "verdicts_checked_on_disk": len(received), "verdicts_missing_on_disk": len(missing),
        "latency_ms": report["latency_ms"], "loadgen_cpu_s": report["cpu_s"],
        "server_peak_rss_after_restart_mib": peak2,
        "first_server_cpu_s": cpu_first,
        "per_second": [{k: s.get(k) for k in ("t", "verdicts", "busy", "p99_ms",
                                              "gates_connected", "gates_lost")}
                       for s in report["per_second"]],
    }
    fmt = lambda v: "never" if v is None else f"{v:.1f} s"  # noqa: E731
    log(f"  every gate back {fmt(r['all_reconnected_after_s'])} after the kill; p99 back under "
        f"100 ms {fmt(r['p99_back_under_100ms_after_s'])} after; {len(received)} verdicts "
        f"checked, {len(missing)} missing on disk; lost {r['lost']}")
    checks = {
        "restart_all_reconnected_within_15s": back is not None
        and back - kill_t <= RECONNECT_LIMIT_S,
        "restart_p99_back_within_20s": p99_back is not None
        and p99_back - kill_t <= P99_BACK_LIMIT_S,
        "restart_acknowledged_verdicts_on_disk": not missing and len(received) > 0,
        "restart_nothing_lost": r["lost"] == 0,
        "restart_no_false_admit": r["false_admit"] == 0,
    }
    return {"run": r, "checks": checks}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--subjects", type=int, default=100_000)
    ap.add_argument("--fleet", type=int, default=10_000, help="gates of the fleet proofs")
    ap.add_argument("--fleet-rate", type=float, default=2000)
    ap.add_argument("--fleet-s", type=int, default=60)
    ap.add_argument("--hold-s", type=int, default=10,
                    help="quiet time of the connected fleet before its load")
    ap.add_argument("--kill-at-s", type=int, default=20)
    ap.add_argument("--keep-alive", default="3s", help="the gates' keep-alive interval")
    ap.add_argument("--retry-gates", type=int, default=1000)
    ap.add_argument("--rates", default="2000,3000,4000,5000,6000",
                    help="ascending rates for the sustainable-rate search")
    ap.add_argument("--step-s", type=int, default=20, help="length of a search step")
    ap.add_argument("--retry-s", type=int, default=60, help="length of the 2x and 4x runs")
    ap.add_argument("--busy-retries", type=int, default=5,
                    help="Busy replies a gate retries before it calls staff")
    ap.add_argument("--compare", action="store_true",
                    help="also run 2x and 4x with shed_below_requests = false (not judged)")
    ap.add_argument("--sustainable", type=float,
                    help="skip the search: the highest sustainable rate, measured before")
    ap.add_argument("--only", choices=["retry", "fleet", "restart"], action="append",
                    help="run only these proofs (repeatable)")
    ap.add_argument("--server-set", dest="server_extra", action="append", default=[],
                    metavar="KEY=VALUE",
                    help="a [server] setting for the fleet and restart servers, e.g. "
                         "max_handshakes=1024 (repeatable)")
    ap.add_argument("--keep", type=Path, help="prepared data folder to use and keep")
    ap.add_argument("--seed", type=int, default=300)
    args = ap.parse_args()
    args.server_extra = "".join(f"{line}\n" for line in args.server_extra)
    data = args.keep or Path(tempfile.mkdtemp(prefix="gatewarden-storms-"))
    proofs = args.only or ["retry", "fleet", "restart"]
    try:
        if not (data / "certs").exists():
            started = time.monotonic()
            overload.prepare(args.bin_dir, data, args.subjects, args.fleet)
            log(f"prepared in {time.monotonic() - started:.0f} s")
        result = {"load_average_start": load_average(), "cpus": os.cpu_count()}
        for name, proof in (("retry", retry_proof), ("fleet", fleet_proof),
                            ("restart", restart_proof)):
            if name in proofs:
                result[name] = proof(args, data)
        checks = {k: v for name in proofs for k, v in result[name]["checks"].items()}
        result["checks"] = checks
        result["passed"] = all(checks.values())
        result["load_average_end"] = load_average()
        code = overload.write_report(args.out / "storms.json", result, checks, print)
        print(json.dumps({k: v for k, v in result.items() if k != "checks"}, indent=2))
        return code
    finally:
        if args.keep is None:
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
