"""Driver of benches/reload/run.sh: policy reloads under load (issue 16).

Two runs of `gatewarden-loadgen run` at the same constant rate against a fresh `gatewarden
serve` each, on one prepared data folder whose policy is a file (`policy.toml`, the demo
policy): the first without reloads, the second with a SIGHUP every `--every-s` seconds. Before
each SIGHUP the file is rewritten to alternate between two versions that decide every event
alike (an override for a market with no gates), so the load generator's ground truth holds and
any difference between the runs is the cost of reloading.

Passes when the reload run loses nothing, admits no one falsely, every reload was applied
(the server logs each one), and its p99 from intended send time stays under 100 ms.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "overload"))
from overload import cpu_seconds, log, prepare  # noqa: E402

P99_LIMIT_MS = 100.0
VARIANT = "\n[markets.999999]\noccupancy_cap = 1\n"


def start(bin_dir: Path, data: Path, log_path: Path):
    (data / "gatewarden.toml").write_text(
        '[server]\nlisten = "127.0.0.1:0"\n[http]\nenabled = false\n'
        '[engine]\npolicy = "policy.toml"\n')
    err = open(log_path, "w")
    proc = subprocess.Popen(
        [str(bin_dir / "gatewarden"), "serve", "--data", str(data)],
        stdout=subprocess.PIPE, stderr=err, text=True,
        env={**os.environ, "RUST_LOG": "gatewarden=info"})
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, line.removeprefix("listening on ")


def hangups(proc, policy: Path, base: str, every_s: float, stop: threading.Event, sent: list):
    while not stop.wait(every_s):
        variant = len(sent) % 2 == 0
        tmp = policy.with_suffix(".tmp")
        tmp.write_text(base + (VARIANT if variant else ""))
        os.chmod(tmp, 0o600)
        os.replace(tmp, policy)
        proc.send_signal(signal.SIGHUP)
        sent.append(time.time())


def run(args, data: Path, base: str, reload_every) -> dict:
    args.seed += 1
    policy = data / "policy.toml"
    policy.write_text(base)
    os.chmod(policy, 0o600)
    log_path = data / f"serve-{'reload' if reload_every else 'steady'}.log"
    proc, addr = start(args.bin_dir, data, log_path)
    report_path = data / "report.json"
    stop, sent = threading.Event(), []
    pinger = None
    if reload_every:
        pinger = threading.Thread(
            target=hangups, args=(proc, policy, base, reload_every, stop, sent))
        pinger.start()
    cpu_before = cpu_seconds(proc.pid)
    try:
        subprocess.run(
            [str(args.bin_dir / "gatewarden-loadgen"), "run", "--target", addr,
             "--certs", str(data / "certs"), "--population", str(data / "population"),
             "--rate", str(args.rate), "--profile", "constant",
             "--duration", f"{args.duration_s}s", "--json", str(report_path),
             "--seed", str(args.seed)],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        stop.set()
        if pinger:
            pinger.join()
        time.sleep(0.5)  # let the last reload land before the stop
        cpu_after = cpu_seconds(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    applied = sum("policy reloaded" in l for l in log_path.read_text().splitlines())
    r = json.loads(report_path.read_text())
    result = {
        "reload_every_s": reload_every, "hangups_sent": len(sent), "reloads_applied": applied,
        "sent": r["sent"], "verdicts": r["verdicts"], "busy": r["busy"], "lost": r["lost"],
        "errors": r["errors"], "false_admit": r["accuracy"]["false_admit"],
        "p50_ms": r["latency_ms"]["p50"], "p99_ms": r["latency_ms"]["p99"],
        "server_cpu_s": None if None in (cpu_before, cpu_after) else cpu_after - cpu_before,
    }
    log("  {}: verdicts {verdicts} busy {busy} lost {lost} false admits {false_admit} "
        "p50 {p50_ms:.1f} ms p99 {p99_ms:.1f} ms, SIGHUPs {hangups_sent}, reloads {reloads_applied}"
        .format("reloading" if reload_every else "steady   ", **result))
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--policy", type=Path, required=True, help="the base policy file")
    ap.add_argument("--subjects", type=int, default=100_000)
    ap.add_argument("--gates", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=2000)
    ap.add_argument("--duration-s", type=int, default=30)
    ap.add_argument("--every-s", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=300)
    args = ap.parse_args()
    base = args.policy.read_text()
    with tempfile.TemporaryDirectory(prefix="gw-reload-") as tmp:
        data = Path(tmp) / "site"
        prepare(args.bin_dir, data, args.subjects, args.gates)
        log(f"{args.rate:.0f} ev/s for {args.duration_s} s, {args.gates} gates, "
            f"{args.subjects} people; then again with a SIGHUP every {args.every_s} s")
        steady = run(args, data, base, None)
        reloading = run(args, data, base, args.every_s)
    ok = (reloading["lost"] == 0 and reloading["false_admit"] == 0
          and reloading["errors"] == 0
          and reloading["reloads_applied"] == reloading["hangups_sent"] > 0
          and reloading["p99_ms"] <= P99_LIMIT_MS)
    print(f"{'PASS' if ok else 'FAIL'}: {reloading['reloads_applied']} reloads at "
          f"{args.rate:.0f} ev/s, p99 {reloading['p99_ms']:.1f} ms (steady "
          f"{steady['p99_ms']:.1f} ms), lost {reloading['lost']}, "
          f"false admits {reloading['false_admit']}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reload.json").write_text(
        json.dumps({"steady": steady, "reloading": reloading, "pass": ok}, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
