"""gatewarden vs FAISS on the same data, same threads, same run. Driven by run.sh.

Two races: the default one (FAISS IndexFlatIP and SQ8 against gatewarden f32 and int8), and
`--race binary` (1-bit recipes with exact re-rank: FAISS IndexBinaryFlat over sign codes plus
an exact re-rank of the top 16, IndexRaBitQ + IndexRefineFlat and IndexRaBitQFastScan +
IndexRefineFlat with k_factor 16, against gatewarden binary and int8), default N = 1M.

Data (seeded, numpy): identities are random unit vectors (the gallery); genuine probes are an
identity plus orthogonal noise with cosine U(0.6, 0.75) to it; impostors are random unit
vectors; 70% of queries are genuine. Ground truth: exact top-1 (float32 BLAS scores, the best
5 re-scored in float64).

Memory bandwidth is measured in the same run with numpy, one thread: the best of 5 passes of
each of several reductions (u64 sum, f32 dot, max, sum) over a 1 GiB array, i.e. a
single-core streaming read from huge pages.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import faiss

BATCHES = [1, 16, 64, 256]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def unit_rows(rng, n, d, chunk=65536):
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - s), d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s:s + len(x)] = x
    return out


def make_queries(rng, gallery, q, genuine_share=0.7):
    n, d = gallery.shape
    genuine = rng.random(q) < genuine_share
    truth_id = np.where(genuine, rng.integers(0, n, q), -1)
    out = unit_rows(rng, q, d)  # impostors, and the noise directions
    for j in np.nonzero(genuine)[0]:
        ident = gallery[truth_id[j]].astype(np.float64)
        noise = out[j].astype(np.float64)
        noise -= noise.dot(ident) * ident
        noise /= np.linalg.norm(noise)
        c = rng.uniform(0.6, 0.75)
        v = c * ident + np.sqrt(1 - c * c) * noise
        out[j] = (v / np.linalg.norm(v)).astype(np.float32)
    return out, genuine


def exact_top1(gallery, queries, chunk=65536):
    q = queries.shape[0]
    best_s = np.full((q, 5), -np.inf, dtype=np.float32)
    best_i = np.zeros((q, 5), dtype=np.int64)
    for s in range(0, gallery.shape[0], chunk):
        sc = queries @ gallery[s:s + chunk].T
        idx = np.argpartition(-sc, 4, axis=1)[:, :5] if sc.shape[1] > 5 else np.tile(np.arange(sc.shape[1]), (q, 1))
        cand_s = np.take_along_axis(sc, idx, axis=1)
        all_s = np.concatenate([best_s, cand_s], axis=1)
        all_i = np.concatenate([best_i, idx + s], axis=1)
        keep = np.argsort(-all_s, axis=1, kind="stable")[:, :5]
        best_s = np.take_along_axis(all_s, keep, axis=1)
        best_i = np.take_along_axis(all_i, keep, axis=1)
    top1 = np.empty(q, dtype=np.int64)
    for j in range(q):
        cands = best_i[j]
        exact = gallery[cands].astype(np.float64) @ queries[j].astype(np.float64)
        order = sorted(range(5), key=lambda t: (-exact[t], cands[t]))
        top1[j] = cands[order[0]]
    return top1


def bandwidth_gbs():
    """Single-core streaming read rate: the best of several numpy reductions over 1 GiB.

    numpy madvises large arrays into transparent huge pages, so this is the machine's best
    case (no 4 KiB page boundaries for the prefetchers), the bar the scans are held to.
    """
    a = np.ones(1 << 28, dtype=np.float32)  # 1 GiB
    u = a.view(np.uint64)
    probes = {"numpy u64 sum": lambda: u.sum(), "numpy f32 dot": lambda: np.dot(a, a),
              "numpy f32 max": lambda: a.max(), "numpy f32 sum": lambda: a.sum()}
    best = {}
    for name, f in probes.items():
        f()  # fault pages in
        t = []
        for _ in range(5):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
        best[name] = a.nbytes / min(t) / 1e9
    del a, u
    name = max(best, key=best.get)
    return best[name], name, best


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(np.ceil(p * len(xs))) - 1))]


def faiss_single(index, queries, k):
    lat = []
    ids = []
    for j in range(len(queries)):
        t0 = time.perf_counter()
        _, i = index.search(queries[j:j + 1], k)
        lat.append((time.perf_counter() - t0) * 1e3)
        ids.append(i[0, 0])
    return {"p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99), "qps": 1e3 * len(lat) / sum(lat)}, np.array(ids)


def faiss_batch(index, queries, k, b):
    t0 = time.perf_counter()
    top = []
    for s in range(0, len(queries), b):
        _, i = index.search(queries[s:s + b], k)
        top.append(i[:, 0])
    return len(queries) / (time.perf_counter() - t0), np.concatenate(top)


def gw(args, gallery_path, queries_path, precision, batch, out_dir, tag):
    rep = os.path.join(out_dir, f"gw_{tag}_report.json")
    res = os.path.join(out_dir, f"gw_{tag}_results.json")
    cmd = [args.bin, "search", "--gallery", gallery_path, "--queries", queries_path, "--k", str(args.k),
           "--batch", str(batch), "--threads", str(args.threads), "--precision", precision,
           "--report", rep, "--out", res]
    subprocess.run(cmd, check=True)
    with open(rep) as f:
        r = json.load(f)
    with open(res) as f:
        top1 = np.array([x["ids"][0] for x in json.load(f)["results"]])
    return r, top1


def run_size(args, n, bw):
    d = args.dim
    out_dir = os.path.join(args.out, f"n{n}")
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(args.seed + n)
    t0 = time.perf_counter()
    gallery = unit_rows(rng, n, d)
    n_single = args.single_queries or (200 if n <= 200_000 else 40)
    n_batch = args.batch_queries or (1024 if n <= 200_000 else 256)
    queries, genuine = make_queries(rng, gallery, max(n_single, n_batch))
    gpath, qpath, q1path = (os.path.join(out_dir, x) for x in ("gallery.npy", "queries.npy", "queries_single.npy"))
    np.save(gpath, gallery)
    np.save(qpath, queries[:n_batch])
    np.save(q1path, queries[:n_single])
    truth = exact_top1(gallery, queries)
    log(f"[n={n}] data + ground truth in {time.perf_counter() - t0:.1f} s; "
        f"{n_single} single queries, {n_batch} batch queries, {genuine[:n_batch].sum()} genuine")

    gwg = os.path.join(out_dir, "gallery.gwg")
    subprocess.run([args.bin, "gallery", "build", "--vectors", gpath, "--precision", "int8", "--out", gwg], check=True)

    def agreement(top1, count):
        g = genuine[:count]
        return float((top1[:count][g] == truth[:count][g]).mean())

    res = {"n": n, "dim": d, "threads": args.threads, "single_queries": n_single, "batch_queries": n_batch,
           "genuine_batch_queries": int(genuine[:n_batch].sum())}
    faiss.omp_set_num_threads(args.threads)
    f32_bytes, i8_bytes = n * d * 4, n * d

    # FAISS
    for name in ["flat", "sq8"]:
        t0 = time.perf_counter()
        if name == "flat":
            index = faiss.IndexFlatIP(d)
        else:
            index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
            index.train(gallery[: min(n, 100_000)])
        index.add(gallery)
        log(f"[n={n}] faiss {name} built in {time.perf_counter() - t0:.1f} s")
        index.search(queries[:4], args.k)  # warm-up
        single, top1 = faiss_single(index, queries[:n_single], args.k)
        r = {"single": single, "agreement_single": agreement(top1, n_single), "batch_qps": {}}
        r["scan_gbs"] = (f32_bytes if name == "flat" else i8_bytes) / (single["p50_ms"] / 1e3) / 1e9
        r["bandwidth_share"] = r["scan_gbs"] / bw
        for b in BATCHES[1:]:
            variants = {}
            thresholds = [None, 0] if name == "flat" else [None]
            for thr in thresholds:
                old = faiss.cvar.distance_compute_blas_threshold
                if thr is not None:
                    faiss.cvar.distance_compute_blas_threshold = thr
                qps, top = faiss_batch(index, queries[:n_batch], args.k, b)
                faiss.cvar.distance_compute_blas_threshold = old
                variants["blas" if thr == 0 else "default"] = qps
                if b == 64:
                    r.setdefault("agreement_batch64", agreement(top, n_batch))
            r["batch_qps"][str(b)] = max(variants.values())
            r.setdefault("batch_variants", {})[str(b)] = variants
            log(f"[n={n}] faiss {name} batch {b}: {variants}")
        r["batch_qps"]["1"] = single["qps"]
        res[f"faiss_{name}"] = r
        del index

    # gatewarden
    for precision in ["f32", "int8"]:
        rep, top1 = gw(args, gwg, q1path, precision, 1, out_dir, f"{precision}_b1")
        single = {"p50_ms": rep["batch_latency_ms_p50"], "p99_ms": rep["batch_latency_ms_p99"], "qps": rep["queries_per_second"]}
        r = {"single": single, "isa": rep["isa"], "agreement_single": agreement(top1, n_single), "batch_qps": {"1": single["qps"]}}
        r["scan_gbs"] = (f32_bytes if precision == "f32" else i8_bytes) / (single["p50_ms"] / 1e3) / 1e9
        r["bandwidth_share"] = r["scan_gbs"] / bw
        for b in BATCHES[1:]:
            rep, top = gw(args, gwg, qpath, precision, b, out_dir, f"{precision}_b{b}")
            r["batch_qps"][str(b)] = rep["queries_per_second"]
            if b == 64:
                r["agreement_batch64"] = agreement(top, n_batch)
        res[f"gw_{precision}"] = r
        log(f"[n={n}] gatewarden {precision}: {r}")

    fl, sq, g32, g8 = res["faiss_flat"], res["faiss_sq8"], res["gw_f32"], res["gw_int8"]
    res["ratios"] = {
        "f32_p50_vs_flat": g32["single"]["p50_ms"] / fl["single"]["p50_ms"],
        "f32_p99_vs_flat": g32["single"]["p99_ms"] / fl["single"]["p99_ms"],
        "int8_speedup_p50_vs_flat": fl["single"]["p50_ms"] / g8["single"]["p50_ms"],
        "int8_speedup_p50_vs_sq8": sq["single"]["p50_ms"] / g8["single"]["p50_ms"],
        "f32_batch64_qps_vs_flat_best": g32["batch_qps"]["64"] / fl["batch_qps"]["64"],
        "int8_batch64_qps_vs_flat_best": g8["batch_qps"]["64"] / fl["batch_qps"]["64"],
        "f32_bandwidth_share": g32["bandwidth_share"],
        "int8_top1_agreement_genuine": g8["agreement_batch64"],
    }
    res["targets_met"] = {
        "f32_latency_le_flat": res["ratios"]["f32_p50_vs_flat"] <= 1.0,
        "f32_scan_ge_85pct_bandwidth": g32["bandwidth_share"] >= 0.85,
        "int8_4x_flat": res["ratios"]["int8_speedup_p50_vs_flat"] >= 4.0,
        "int8_2x_sq8": res["ratios"]["int8_speedup_p50_vs_sq8"] >= 2.0,
        "int8_top1_999": g8["agreement_batch64"] >= 0.999 and g8["agreement_single"] >= 0.999,
        "f32_batch64_ge_flat": res["ratios"]["f32_batch64_qps_vs_flat_best"] >= 1.0,
        "int8_batch64_ge_2x_flat": res["ratios"]["int8_batch64_qps_vs_flat_best"] >= 2.0,
    }
    if not args.keep_data:
        for p in (gpath, gwg):
            os.remove(p)
    return res


def make_size(args, n, default_single, default_batch):
    """Seeded gallery and queries for size n, saved as .npy, plus exact top-1 ground truth."""
    d = args.dim
    out_dir = os.path.join(args.out, f"n{n}")
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(args.seed + n)
    gallery = unit_rows(rng, n, d)
    n_single = args.single_queries or default_single
    n_batch = args.batch_queries or default_batch
    queries, genuine = make_queries(rng, gallery, max(n_single, n_batch))
    paths = {x: os.path.join(out_dir, f"{x}.npy") for x in ("gallery", "queries", "queries_single")}
    np.save(paths["gallery"], gallery)
    np.save(paths["queries"], queries[:n_batch])
    np.save(paths["queries_single"], queries[:n_single])
    truth = exact_top1(gallery, queries)
    return out_dir, gallery, queries, genuine, truth, n_single, n_batch, paths


class SignRerank:
    """FAISS IndexBinaryFlat over sign codes (centred on the gallery mean, as gatewarden's
    codes are), then an exact inner-product re-rank of the `shortlist` nearest codes."""

    def __init__(self, gallery, shortlist=16):
        self.gallery = gallery
        self.centre = gallery.mean(axis=0)
        self.shortlist = shortlist
        self.index = faiss.IndexBinaryFlat(gallery.shape[1])
        self.index.add(self.codes(gallery))

    def codes(self, x):
        return np.packbits(x > self.centre, axis=1, bitorder="little")

    def search(self, queries, k):
        _, cand = self.index.search(self.codes(queries), max(k, self.shortlist))
        scores = np.einsum("qkd,qd->qk", self.gallery[cand], queries)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(cand, order, 1)


def run_binary_race(args, n, bw):
    t0 = time.perf_counter()
    out_dir, gallery, queries, genuine, truth, n_single, n_batch, paths = make_size(args, n, 200, 256)
    log(f"[n={n}] data + ground truth in {time.perf_counter() - t0:.1f} s")
    gwg = os.path.join(out_dir, "gallery_binary.gwg")
    t0 = time.perf_counter()
    subprocess.run([args.bin, "gallery", "build", "--vectors", paths["gallery"], "--precision", "binary",
                    "--out", gwg], check=True)
    log(f"[n={n}] gatewarden binary gallery built in {time.perf_counter() - t0:.1f} s")

    def agreement(top1, count, want_genuine=True):
        g = genuine[:count] if want_genuine else ~genuine[:count]
        return float((top1[:count][g] == truth[:count][g]).mean()) if g.any() else 1.0

    res = {"n": n, "dim": args.dim, "threads": args.threads, "single_queries": n_single,
           "batch_queries": n_batch, "genuine_single": int(genuine[:n_single].sum()),
           "genuine_batch": int(genuine[:n_batch].sum())}
    faiss.omp_set_num_threads(args.threads)

    def record(key, single, top1_single, qps64, top1_batch, build_s=None):
        r = {"single": single, "batch_qps": {"1": single["qps"], "64": qps64},
             "top1_genuine_single": agreement(top1_single, n_single),
             "top1_genuine_batch64": agreement(top1_batch, n_batch),
             "top1_impostor_single": agreement(top1_single, n_single, False),
             "top1_impostor_batch64": agreement(top1_batch, n_batch, False)}
        if build_s is not None:
            r["build_s"] = build_s
        res[key] = r
        log(f"[n={n}] {key}: {r}")

    peers = {
        "faiss_binflat_rerank16": lambda: SignRerank(gallery, 16),
        "faiss_rabitq_refine16": lambda: faiss.IndexRaBitQ(args.dim, faiss.METRIC_INNER_PRODUCT),
        "faiss_rabitq_fastscan_refine16": lambda: faiss.IndexRaBitQFastScan(args.dim, faiss.METRIC_INNER_PRODUCT),
    }
    for key, make in peers.items():
        t0 = time.perf_counter()
        index = make()
        if not isinstance(index, SignRerank):
            index.train(gallery[: min(n, 100_000)])
            index = faiss.IndexRefineFlat(index)
            index.k_factor = 16
            index.add(gallery)
        build_s = time.perf_counter() - t0
        index.search(queries[:4], args.k)  # warm-up
        single, top1 = faiss_single(index, queries[:n_single], args.k)
        qps64, top64 = faiss_batch(index, queries[:n_batch], args.k, 64)
        record(key, single, top1, qps64, top64, build_s)
        del index

    for precision in ["binary", "int8"]:
        rep, top1 = gw(args, gwg, paths["queries_single"], precision, 1, out_dir, f"{precision}_b1")
        single = {"p50_ms": rep["batch_latency_ms_p50"], "p99_ms": rep["batch_latency_ms_p99"],
                  "qps": rep["queries_per_second"]}
        rep64, top64 = gw(args, gwg, paths["queries"], precision, 64, out_dir, f"{precision}_b64")
        record(f"gw_{precision}", single, top1, rep64["queries_per_second"], top64)
        res[f"gw_{precision}"]["isa"] = rep["isa"]

    best_peer = min((k for k in peers), key=lambda k: res[k]["single"]["p50_ms"])
    gb, g8 = res["gw_binary"], res["gw_int8"]
    res["best_faiss_1bit"] = best_peer
    res["ratios"] = {
        "binary_speedup_p50_vs_best_faiss_1bit": res[best_peer]["single"]["p50_ms"] / gb["single"]["p50_ms"],
        "binary_batch64_qps_vs_int8": gb["batch_qps"]["64"] / g8["batch_qps"]["64"],
        "binary_top1_genuine": min(gb["top1_genuine_single"], gb["top1_genuine_batch64"]),
    }
    res["targets_met"] = {
        "binary_1p5x_best_faiss_1bit": res["ratios"]["binary_speedup_p50_vs_best_faiss_1bit"] >= 1.5,
        "binary_top1_999": res["ratios"]["binary_top1_genuine"] >= 0.999,
        "binary_batch64_3x_int8": res["ratios"]["binary_batch64_qps_vs_int8"] >= 3.0,
    }
    if not args.keep_data:
        for p in (paths["gallery"], gwg):
            os.remove(p)
    return res


def binary_table(all_res):
    head = ["N", "engine", "p50 ms", "p99 ms", "b1 q/s", "b64 q/s", "top-1 genuine", "top-1 impostor"]
    rows = [head]
    labels = [("faiss_binflat_rerank16", "FAISS BinaryFlat + re-rank 16"),
              ("faiss_rabitq_refine16", "FAISS RaBitQ + RefineFlat 16"),
              ("faiss_rabitq_fastscan_refine16", "FAISS RaBitQFastScan + RefineFlat 16"),
              ("gw_binary", "gatewarden binary"), ("gw_int8", "gatewarden int8")]
    for r in all_res:
        for key, label in labels:
            e = r[key]
            rows.append([f"{r['n']:,}", label, f"{e['single']['p50_ms']:.2f}", f"{e['single']['p99_ms']:.2f}",
                         f"{e['batch_qps']['1']:.0f}", f"{e['batch_qps']['64']:.0f}",
                         f"{100 * min(e['top1_genuine_single'], e['top1_genuine_batch64']):.2f}%",
                         f"{100 * min(e['top1_impostor_single'], e['top1_impostor_batch64']):.2f}%"])
    widths = [max(len(x[i]) for x in rows) for i in range(len(head))]
    lines = [" | ".join(c.rjust(w) for c, w in zip(x, widths)) for x in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    print("\n".join(lines))
    for r in all_res:
        print(f"\nN={r['n']:,} ratios: " + ", ".join(f"{k}={v:.3f}" for k, v in r["ratios"].items()))
        print(f"N={r['n']:,} targets: " + ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in r["targets_met"].items()))


def table(all_res, bw, bw_name):
    rows = []
    head = ["N", "engine", "p50 ms", "p99 ms", "b1 q/s", "b16 q/s", "b64 q/s", "b256 q/s", "top-1 genuine", "scan GB/s", "% of BW"]
    rows.append(head)
    for r in all_res:
        for key, label in [("faiss_flat", "FAISS FlatIP"), ("faiss_sq8", "FAISS SQ8"), ("gw_f32", "gatewarden f32"), ("gw_int8", "gatewarden int8")]:
            e = r[key]
            rows.append([f"{r['n']:,}", label, f"{e['single']['p50_ms']:.2f}", f"{e['single']['p99_ms']:.2f}",
                         *[f"{e['batch_qps'][str(b)]:.0f}" for b in BATCHES],
                         f"{100 * min(e['agreement_single'], e.get('agreement_batch64', 1)):.2f}%",
                         f"{e['scan_gbs']:.1f}", f"{100 * e['bandwidth_share']:.0f}%"])
    widths = [max(len(x[i]) for x in rows) for i in range(len(head))]
    lines = [" | ".join(c.rjust(w) for c, w in zip(x, widths)) for x in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    print(f"memory bandwidth (1 thread, {bw_name}): {bw:.1f} GB/s")
    print("\n".join(lines))
    for r in all_res:
        print(f"\nN={r['n']:,} ratios: " + ", ".join(f"{k}={v:.3f}" for k, v in r["ratios"].items()))
        print(f"N={r['n']:,} targets: " + ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in r["targets_met"].items()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--race", choices=["flat", "binary"], default="flat")
    ap.add_argument("--sizes", default="")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--single-queries", type=int, default=0)
    ap.add_argument("--batch-queries", type=int, default=0)
    ap.add_argument("--keep-data", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    bw, bw_name, bw_all = bandwidth_gbs()
    log(f"bandwidth: {bw_all}")
    sizes = args.sizes or ("1000000" if args.race == "binary" else "100000,1000000")
    run = run_binary_race if args.race == "binary" else run_size
    all_res = [run(args, int(n), bw) for n in sizes.split(",")]
    out = {"bandwidth_gbs": bw, "bandwidth_method": bw_name, "bandwidth_all": bw_all,
           "faiss_version": faiss.__version__, "numpy_version": np.__version__,
           "faiss_opt_level": os.environ.get("FAISS_OPT_LEVEL", "auto"),
           "gatewarden_isa": os.environ.get("GATEWARDEN_ISA", "auto"),
           "seconds": time.perf_counter() - t0, "sizes": all_res}
    name = "results_binary.json" if args.race == "binary" else "results.json"
    with open(os.path.join(args.out, name), "w") as f:
        json.dump(out, f, indent=2)
    if args.race == "binary":
        print(f"memory bandwidth (1 thread, {bw_name}): {bw:.1f} GB/s")
        binary_table(all_res)
    else:
        table(all_res, bw, bw_name)
    print(f"\n(total {out['seconds']:.0f} s; JSON: {os.path.join(args.out, name)})")


if __name__ == "__main__":
    main()
