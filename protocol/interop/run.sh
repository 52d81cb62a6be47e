#!/usr/bin/env bash
# Interop proof: a gate client on another QUIC stack (Python aioquic), written from
# protocol/PROTOCOL.md alone, against a real `gatewarden serve`.
#
# Usage (from anywhere):  protocol/interop/run.sh
#   GATEWARDEN=path/to/gatewarden   the server binary (default: target/debug/gatewarden,
#                                   build it with `cargo build -p gatewarden-cli --bin gatewarden`)
#   PYTHON=python3.11               the interpreter for the venv (default: python3)
#   KEEP=1                          keep the temporary data folder and server logs
#   STRICT=1                        also fail on the WARN lines: spec promises beyond the core
#                                   list (e.g. closing the connection after a handshake error)
#
# It makes a venv under protocol/interop/.venv (pip install aioquic, once), a fresh data folder
# in a temp dir with the gatewarden CLI (one enrolled person with a green health record),
# starts the server on a free loopback port, runs the client, stops the server with SIGTERM
# and exits with the client's status. Every wait is bounded.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

GATEWARDEN="${GATEWARDEN:-target/debug/gatewarden}"
PYTHON="${PYTHON:-python3}"
VENV="$HERE/.venv"
START_TIMEOUT_S=20     # server start: open the store, map the gallery, bind
CLIENT_TIMEOUT_S=60    # backstop: the client bounds each wait (5 s) and itself (50 s)
STOP_TIMEOUT_S=10      # graceful drain after SIGTERM

log() { printf '[interop] %s\n' "$*" >&2; }

if [[ ! -x "$GATEWARDEN" ]]; then
    log "no server binary at $GATEWARDEN: run 'cargo build -p gatewarden-cli --bin gatewarden' or set GATEWARDEN"
    exit 2
fi

# The venv: made once, reused while aioquic imports.
if ! "$VENV/bin/python" -c 'import aioquic' 2>/dev/null; then
    log "creating $VENV and installing aioquic"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check aioquic
fi
PY="$VENV/bin/python"

T0=$(date +%s.%N)
TMP="$(mktemp -d "${TMPDIR:-/tmp}/gatewarden-interop.XXXXXX")"
DATA="$TMP/data"
SERVER_PID=""

cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ "${KEEP:-0}" == 1 ]]; then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT

# --- the data folder, made with the gatewarden CLI only ---------------------------------------
# Gates 1 and 3 stand in market 1, gates 2 and 4 in market 2.
"$GATEWARDEN" init "$DATA" --gates 4 --markets 2 >/dev/null
# A free port instead of the fixed 4433, so parallel runs and other servers do not clash.
sed -i 's/^listen = .*/listen = "127.0.0.1:0"/' "$DATA/gatewarden.toml"
grep -q '^listen = "127.0.0.1:0"' "$DATA/gatewarden.toml" || {
    log "could not set [server] listen in $DATA/gatewarden.toml"; exit 2; }
# Two nodes on paper: this server is node "a" and serves market 1; node "b" (not started: only
# its address is sent) serves market 2, so gate 2 must be redirected there (PROTOCOL.md,
# "Markets served elsewhere"). Node a's own address is what b would send; a listens on a free
# port here.
REDIRECT_ADDRESS="127.0.0.1:4999"
cat >>"$DATA/gatewarden.toml" <<EOF

[cluster]
node = "a"
[[cluster.nodes]]
name = "a"
addresses = ["127.0.0.1:4433"]
markets = [1]
[[cluster.nodes]]
name = "b"
addresses = ["$REDIRECT_ADDRESS"]
markets = [2]
EOF

"$PY" "$HERE/gate_client.py" prepare --out "$TMP/in" >/dev/null
"$GATEWARDEN" import subjects "$TMP/in/subjects.jsonl" --data "$DATA" >/dev/null
"$GATEWARDEN" health import "$TMP/in/health.jsonl" --data "$DATA" >/dev/null
"$GATEWARDEN" enroll --vectors "$TMP/in/template.npy" --subjects "$TMP/in/ids.txt" \
    --data "$DATA" >/dev/null
log "data folder ready: 4 gates in markets 1 and 2 (market 2 served by node b), subject 1 enrolled"

# --- the server ---------------------------------------------------------------------------------
"$GATEWARDEN" serve --data "$DATA" >"$TMP/server.out" 2>"$TMP/server.err" &
SERVER_PID=$!
ADDR=""
for _ in $(seq $((START_TIMEOUT_S * 10))); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        log "server exited during start:"; cat "$TMP/server.err" >&2; exit 2
    fi
    line="$(head -n 1 "$TMP/server.out" 2>/dev/null || true)"
    if [[ "$line" == "listening on "* ]]; then
        ADDR="${line#listening on }"
        break
    fi
    sleep 0.1
done
if [[ -z "$ADDR" ]]; then
    log "server printed no 'listening on' line within ${START_TIMEOUT_S} s"; cat "$TMP/server.err" >&2
    exit 2
fi
PORT="${ADDR##*:}"
log "server pid $SERVER_PID listening on $ADDR"

# --- the client ---------------------------------------------------------------------------------
set +e
timeout --signal=TERM --kill-after=5 "$CLIENT_TIMEOUT_S" "$PY" "$HERE/gate_client.py" run \
    --host 127.0.0.1 --port "$PORT" --server-name localhost \
    --ca "$DATA/certs/ca.pem" --cert "$DATA/certs/gates/1.pem" --key "$DATA/certs/gates/1.key" \
    --gate 1 --other-gate 2 --market 1 \
    --redirect-gate 2 --redirect-market 2 --redirect-node b --redirect-address "$REDIRECT_ADDRESS" \
    ${STRICT:+--strict}
STATUS=$?
set -e
[[ $STATUS == 124 ]] && log "client timed out after ${CLIENT_TIMEOUT_S} s"

# --- graceful stop --------------------------------------------------------------------------------
kill -TERM "$SERVER_PID"
for _ in $(seq $((STOP_TIMEOUT_S * 10))); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$SERVER_PID" 2>/dev/null; then
    log "server still running ${STOP_TIMEOUT_S} s after SIGTERM; killing it"
    STATUS=$(( STATUS == 0 ? 3 : STATUS ))
else
    wait "$SERVER_PID" 2>/dev/null && SERVER_RC=0 || SERVER_RC=$?
    SERVER_PID=""
    log "server stopped after SIGTERM (exit $SERVER_RC)"
    if [[ $SERVER_RC != 0 ]]; then
        log "server exited non-zero:"; tail -n 20 "$TMP/server.err" >&2
        STATUS=$(( STATUS == 0 ? 3 : STATUS ))
    fi
fi
if [[ $STATUS != 0 && -s "$TMP/server.err" ]]; then
    log "server log (last 20 lines):"; tail -n 20 "$TMP/server.err" >&2
fi

log "done in $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s, client status $STATUS"
exit "$STATUS"
