#!/usr/bin/env bash
# Side-by-side race: gatewarden search vs FAISS IndexFlatIP and IndexScalarQuantizer (8-bit,
# inner product) on the same seeded face-like .npy files, same threads, same run.
#
#   benches/compare/run.sh                      # N = 100k and 1M, d = 512, 1 thread
#   benches/compare/run.sh --sizes 100000       # faster
#   benches/compare/run.sh --threads 2
#   benches/compare/run.sh --race binary        # N = 1M: 1-bit recipes (FAISS BinaryFlat +
#                                               # re-rank 16, RaBitQ(+FastScan) + RefineFlat 16)
#                                               # against gatewarden binary and int8
#
# Builds its own virtual environment (benches/compare/.venv: faiss-cpu + numpy from PyPI) on
# first use, and the release binary if missing. Output: a table on stdout, and
# benches/compare/out/results.json with every figure and the ratios.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv="$here/.venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import faiss, numpy' 2>/dev/null; then
    echo "setting up $venv (faiss-cpu, numpy)..." >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check faiss-cpu numpy
fi
bin="$root/target/release/gatewarden"
if [ ! -x "$bin" ]; then
    (cd "$root" && cargo build --release -p gatewarden-cli --bin gatewarden)
fi
# One BLAS/OpenMP thread unless --threads says otherwise: compare.py sets FAISS's own count,
# and numpy (ground truth, bandwidth probe) must not steal the other core mid-measurement.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
# A forced instruction set applies to both sides of the race: FAISS loads its AVX2 build (not
# its AVX-512 one) when GATEWARDEN_ISA=avx2 forces ours.
if [ "${GATEWARDEN_ISA:-}" = avx2 ]; then export FAISS_OPT_LEVEL=avx2; fi
exec "$venv/bin/python" "$here/compare.py" --bin "$bin" --out "$here/out" "$@"
