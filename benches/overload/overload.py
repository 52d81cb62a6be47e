"""Driver of benches/overload/run.sh: sustainable-rate search, then the 2x overload run.

A step starts a fresh `gatewarden serve` on the prepared data folder, runs
`gatewarden-loadgen run` at a constant rate, stops the server with SIGTERM and collects
both sides: the load generator's JSON report and the `stats` line the server prints at exit,
plus the server's peak RSS (VmHWM) read just before the stop.

In the overload run each gate gives up on an event after `--busy-retries` refusals (default
0: a refusal is final, so the offered load is exactly twice the sustainable rate).

A rate is *sustainable* when every event got a verdict (no error, nothing lost; a Busy retried
into a verdict is fine) and the p99 latency from intended send time, back-off included, is at
most 100 ms. The overload run offers twice the
highest sustainable rate and passes when the server answered Busy (it shed), the p99 of the
attempts that got verdicts stays under 100 ms, nothing was lost in flight, there was no false
admit, and the server's peak RSS stayed within 1.5x of the sustainable run's.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

P99_LIMIT_MS = 100.0
RSS_GROWTH_LIMIT = 1.5


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def prepare(bin_dir: Path, data: Path, subjects: int, gates: int) -> None:
    """Population, import, gallery and certificates, through the demo's own set-up."""
    log(f"preparing {data}: {subjects} people, {gates} gates (gatewarden demo --keep)")
    subprocess.run(
        [str(bin_dir / "gatewarden"), "demo", "--keep", str(data),
         "--subjects", str(subjects), "--gates", str(gates),
         "--rate", "50", "--duration", "2s", "--plot", str(data / "setup.svg")],
        check=True, stdout=subprocess.DEVNULL)


def start_server(bin_dir: Path, data: Path, listen: str = "127.0.0.1:0", http: str = "",
                 server_extra: str = ""):
    """Starts `gatewarden serve`; `http` is the admin API's address (none if empty), and
    `server_extra` more lines of its [server] table."""
    http_table = f'listen = "{http}"' if http else "enabled = false"
    (data / "gatewarden.toml").write_text(
        f'[server]\nlisten = "{listen}"\n{server_extra}[http]\n{http_table}\n')
    proc = subprocess.Popen(
        [str(bin_dir / "gatewarden"), "serve", "--data", str(data)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "RUST_LOG": "error"})
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, line.removeprefix("listening on ")


def peak_rss_mib(pid: int, field: str = "VmHWM"):
    """Peak resident memory of a process in MiB (or, with field="VmRSS", the current one)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int):
    """User + system CPU of a process so far (Linux, USER_HZ = 100)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / 100
    except (OSError, IndexError, ValueError):
        return None


def stop_server(proc):
    rss = peak_rss_mib(proc.pid)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    stats = next((json.loads(l[6:]) for l in out.splitlines() if l.startswith("stats ")), None)
    return rss, stats


def step(args, data: Path, rate: float, extra=()) -> dict:
    # Each step draws other people (its own seed): the same people again would meet the
    # daily entry caps the earlier steps used up, and the ground truth assumes a fresh day.
    args.seed += 1
    proc, addr = start_server(args.bin_dir, data,
                              server_extra=getattr(args, "server_extra", ""))
    report_path = data / f"report-{int(rate)}.json"
    cpu_before = cpu_seconds(proc.pid)
    try:
        subprocess.run(
            [str(args.bin_dir / "gatewarden-loadgen"), "run", "--target", addr,
             "--certs", str(data / "certs"), "--population", str(data / "population"),
             "--rate", str(rate), "--profile", "constant",
             "--duration", f"{args.step_s}s", "--json", str(report_path),
             "--seed", str(args.seed), *extra],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        cpu_after = cpu_seconds(proc.pid)
        rss, stats = stop_server(proc)
    report = json.loads(report_path.read_text())
    server_decided = None
    if stats:
        server_decided = stats["admit"] + stats["deny"] + stats["escalate"]
    result = {
        "rate": rate,
        "sent": report["sent"], "verdicts": report["verdicts"], "busy": report["busy"],
        "errors": report["errors"], "lost": report["lost"],
        "lost_unsent": report.get("lost_unsent", 0),
        "p50_ms": report["latency_ms"]["p50"], "p99_ms": report["latency_ms"]["p99"],
        "attempt_p99_ms": report["attempt_latency_ms"]["p99"],
        "throughput_eps": report["throughput_eps"],
        "false_admit": report["accuracy"]["false_admit"],
        "loadgen_cpu_s": report["cpu_s"],
        "server_cpu_s": None if None in (cpu_before, cpu_after) else cpu_after - cpu_before,
        "server_peak_rss_mib": rss,
        "server_decided": server_decided,
        "server_busy_at_door": stats and stats["rejected_busy"],
        "server_busy_expired": stats and stats["expired"],
        "server_e2e_p99_us_upper": stats and stats["end_to_end_us"]["p99"],
    }
    log("  rate {rate:>6.0f}: verdicts {verdicts:>7} busy {busy:>7} lost {lost:>5} "
        "p50 {p50_ms:7.1f} ms p99 {p99_ms:8.1f} ms attempt-p99 {attempt_p99_ms:7.1f} ms "
        "RSS {server_peak_rss_mib:.0f} MiB CPU server {server_cpu_s:.1f} s loadgen {loadgen_cpu_s:.1f} s"
        .format(**result))
    return result


def sustainable(r: dict) -> bool:
    # The definition: p99 <= 100 ms and nothing lost. A Busy that the gate retried
    # into a verdict is not lost; its back-off counts in the latency from intended send.
    return (r["errors"] == 0 and r["lost"] == 0
            and r["verdicts"] == r["sent"] and r["p99_ms"] <= P99_LIMIT_MS)


def write_report(path: Path, result: dict, checks: dict, say) -> int:
    """Writes the JSON report, says one PASS/FAIL line per check, and returns the exit code."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    for name, ok in checks.items():
        say(f"{'PASS' if ok else 'FAIL'}  {name}")
    log(f"report: {path}")
    return 0 if result["passed"] else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--subjects", type=int, default=100_000)
    ap.add_argument("--gates", type=int, default=1000)
    ap.add_argument("--step-s", type=int, default=20)
    ap.add_argument("--rates", default="2000,2500,3000,3500,4000,4500,5000",
                    help="ascending rates to try; the search stops at the first failure")
    ap.add_argument("--busy-retries", type=int, default=0,
                    help="Busy retries per event in the overload run before the gate gives up")
    ap.add_argument("--keep", type=Path, help="prepared data folder to use and keep")
    ap.add_argument("--seed", type=int, default=100, help="seed of the first step")
    args = ap.parse_args()
    data = args.keep or Path(tempfile.mkdtemp(prefix="gatewarden-overload-"))
    try:
        if not (data / "certs").exists():
            prepare(args.bin_dir, data, args.subjects, args.gates)
        log("sustainable-rate search (constant arrivals):")
        best = None
        steps = []
        for rate in (float(r) for r in args.rates.split(",")):
            r = step(args, data, rate)
            steps.append(r)
            if not sustainable(r):
                break
            best = r
        if best is None:
            log("no sustainable rate among the ones tried; try lower --rates")
            return 1
        log(f"highest sustainable rate: {best['rate']:.0f} ev/s; overload at twice that:")
        # Twice the rate means twice the rate: by default each refused event is final (the
        # gate shows "busy, please see staff"), so the offered load is exactly 2x. With
        # --busy-retries N every refusal comes back up to N more times, and the offered load
        # grows with the shedding (see the issue 5 notes for what that does on two cores).
        over = step(args, data, 2 * best["rate"], ("--max-busy-retries", str(args.busy_retries)))
        checks = {
            "server_shed_with_busy": over["busy"] > 0,
            "verdict_p99_under_100ms": over["attempt_p99_ms"] < P99_LIMIT_MS,
            "nothing_lost_in_flight": over["lost"] - over["lost_unsent"] == 0,
            "no_false_admit": over["false_admit"] == 0,
            "memory_bounded": (over["server_peak_rss_mib"] or 0)
            <= RSS_GROWTH_LIMIT * (best["server_peak_rss_mib"] or 0),
        }
        result = {"sustainable": best, "steps": steps, "overload": over, "checks": checks,
                  "passed": all(checks.values())}
        return write_report(args.out / "overload.json", result, checks,
                            lambda line: log("  " + line))
    finally:
        if args.keep is None:
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
