"""Driver of benches/cpu/run.sh: profile `gatewarden serve` under a constant load."""

import argparse
import collections
import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "overload"))
import overload as ov  # noqa: E402  (start_server, cpu_seconds, stop_server)

# Components by symbol (first match wins); kernel-mode samples are one component of their own.
COMPONENTS = [
    ("1:N search", r"index::|kernels::"),
    ("QUIC + TLS (quinn, rustls, ring)", r"quinn|rustls|ring::|ring_core|aes|gcm|sha2|fiat"),
    ("store (SQLite, commit)", r"sqlite|rusqlite|store::|commit"),
    ("policy + pipeline", r"policy::|pipeline::|crossbeam"),
    ("wire codec", r"bincode|protocol::"),
    ("tokio", r"tokio::"),
    ("allocator, libc", r"libc|malloc|free|memmove|memcpy|memset"),
]


def components(perf_data: Path) -> dict:
    out = subprocess.run(["perf", "report", "-i", str(perf_data), "--no-children", "--stdio",
                          "-g", "none", "--percent-limit", "0", "--sort", "dso,sym"],
                         capture_output=True, text=True, check=True).stdout
    share = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)", line)
        if not m:
            continue
        pct, dso, mode, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4)
        if mode == "k":
            share["kernel (scheduler, UDP, fsync)"] += pct
            continue
        name = next((n for n, rx in COMPONENTS if re.search(rx, sym) or re.search(rx, dso)),
                    "other user space")
        share[name] += pct
    return dict(share.most_common())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="a prepared data folder")
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--engine", default="", help="lines for the [engine] table")
    ap.add_argument("--seed", type=int, default=41)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    extra = f"[engine]\n{args.engine}\n" if args.engine else ""
    proc, addr = ov.start_server(args.bin_dir, args.data, server_extra=extra)
    # The server is listening, its gallery open. CPU and samples cover the whole run, the
    # gates' connection set-up included (a short run at a low rate is mostly handshakes).
    time.sleep(1)
    cpu0 = ov.cpu_seconds(proc.pid)
    perf_data = args.out / "perf.data"
    perf = subprocess.Popen(["perf", "record", "-F", "499", "-g", "-p", str(proc.pid),
                             "-o", str(perf_data)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    report_path = args.out / "report.json"
    try:
        subprocess.run(
            [str(args.bin_dir / "gatewarden-loadgen"), "run", "--target", addr,
             "--certs", str(args.data / "certs"), "--population", str(args.data / "population"),
             "--rate", str(args.rate), "--profile", "constant",
             "--duration", f"{args.seconds}s", "--json", str(report_path),
             "--seed", str(args.seed)],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        cpu1 = ov.cpu_seconds(proc.pid)
        perf.send_signal(2)
        perf.wait()
        rss, _ = ov.stop_server(proc)
    rep = json.loads(report_path.read_text())
    server_cpu = cpu1 - cpu0
    result = {
        "rate": args.rate, "seconds": args.seconds, "engine": args.engine,
        "verdicts": rep["verdicts"], "busy": rep["busy"], "lost": rep["lost"],
        "p50_ms": rep["latency_ms"]["p50"], "p99_ms": rep["latency_ms"]["p99"],
        "server_cpu_s": server_cpu, "loadgen_cpu_s": rep["cpu_s"],
        "server_cpu_ms_per_verdict": 1000 * server_cpu / max(1, rep["verdicts"]),
        "server_peak_rss_mib": rss, "components_pct": components(perf_data),
    }
    (args.out / "result.json").write_text(json.dumps(result, indent=2))
    print(f"{rep['verdicts']} verdicts at {args.rate} ev/s, p50 {result['p50_ms']:.1f} ms, "
          f"p99 {result['p99_ms']:.1f} ms, lost {rep['lost']}; server CPU "
          f"{result['server_cpu_ms_per_verdict']:.3f} ms per verdict, load generator "
          f"{1000 * rep['cpu_s'] / max(1, rep['verdicts']):.3f} ms")
    for name, pct in result["components_pct"].items():
        print(f"{pct:6.1f}%  {name}")
    return 0 if rep["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
