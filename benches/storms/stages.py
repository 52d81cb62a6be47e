"""Where a storm's latency goes: the engine's stage histograms, second by second.

Starts `gatewarden serve` on a prepared data folder (one `benches/storms/run.sh --keep DIR`
made), runs the load generator against it with gates that retry every Busy, and reads
`/api/v1/stats` once a second. Each line is one second: events submitted, refused at the door
(Busy) and expired in the queue, then the p99 bucket (upper bound, microseconds) of the queue
wait, matching, group commit and end to end (queue to durable), the median commit size, and
the commits that took 4 ms or more, by bucket. This is what found the checkpoint that stalled
every commit once a second (benches/README.md, "Storm proofs").

    python3 benches/storms/stages.py --data DIR --rate 6000 --seconds 20
    python3 benches/storms/stages.py --data DIR --rate 6000 --set '[engine]' \
        --set 'checkpoint_interval_ms = 60000'      # the same load without checkpoints
"""

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "overload"))
import overload  # noqa: E402

STAGES = ["queue_wait_us", "matching_us", "commit_us", "end_to_end_us"]


def free_port(kind) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def upper_bound(buckets, q):
    """The upper bound of the log2 bucket holding quantile `q` (0 when empty)."""
    total = sum(buckets)
    if total == 0:
        return 0
    seen = 0
    for i, n in enumerate(buckets):
        seen += n
        if seen >= total * q:
            return 2 ** (i + 1)
    return 2 ** len(buckets)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a prepared storms data folder")
    ap.add_argument("--bin-dir", type=Path,
                    default=Path(__file__).resolve().parents[2] / "target" / "release")
    ap.add_argument("--rate", type=float, default=6000)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--gates", type=int, default=1000)
    ap.add_argument("--busy-retries", type=int, default=5)
    ap.add_argument("--set", dest="lines", action="append", default=[], metavar="LINE",
                    help="a line added to the server's configuration after [server] listen "
                         "(repeatable; a table header such as '[engine]' starts a table)")
    args = ap.parse_args()
    http = f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"
    listen = f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    extra = "".join(f"{line}\n" for line in args.lines)
    server, addr = overload.start_server(args.bin_dir, args.data, listen, http, extra)
    token = (args.data / "admin.token").read_text().strip()

    def stats():
        req = urllib.request.Request(f"http://{http}/api/v1/stats",
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=2) as r:
            return json.loads(r.read())["engine"]

    report = args.data / "report-stages.json"
    lg = subprocess.Popen(
        [str(args.bin_dir / "gatewarden-loadgen"), "run", "--target", addr,
         "--certs", str(args.data / "certs"), "--population", str(args.data / "population"),
         "--gates", str(args.gates), "--rate", str(args.rate), "--profile", "constant",
         "--duration", f"{args.seconds}s", "--json", str(report), "--keep-alive", "3s",
         "--max-busy-retries", str(args.busy_retries), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Every figure after the first bar is the upper bound of a log2 bucket.
        print("  s  submitted   busy expired | p99 us: queue   match  commit     e2e"
              " | commit size p50 | commits >= 4 ms")
        before, started = stats(), time.monotonic()
        while lg.poll() is None:
            time.sleep(1)
            now = stats()
            diff = {k: now[k] - before[k] for k in ("submitted", "rejected_busy", "expired")}
            hist = {k: [a - b for a, b in zip(now[k]["buckets"], before[k]["buckets"])]
                    for k in STAGES + ["commit_size"]}
            slow = " ".join(f"{2 ** i // 1000}ms:{n}" for i, n in enumerate(hist["commit_us"])
                            if n and i >= 12)
            print(f"{time.monotonic() - started:3.0f} {diff['submitted']:10d} "
                  f"{diff['rejected_busy']:6d} {diff['expired']:7d} |"
                  + "".join(f" {upper_bound(hist[k], 0.99):8d}" for k in STAGES)
                  + f" | {upper_bound(hist['commit_size'], 0.5):15d} | {slow}", flush=True)
            before = now
    finally:
        if lg.poll() is None:
            lg.kill()
        overload.stop_server(server)
    r = json.loads(report.read_text())
    print(json.dumps({k: r[k] for k in ("sent", "verdicts", "busy", "lost", "cpu_s",
                                        "attempt_latency_ms")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
