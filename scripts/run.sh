#!/usr/bin/env bash
# `make run`: the API and one worker on the embedded SQLite database, a small demo
# capacity job submitted through the API, and its result when it finishes. In a terminal
# the API and worker keep running afterwards (Ctrl-C stops both); elsewhere they stop.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-.venv/bin}
PORT=${CAPACITY_PORT:-8000}
SPEC=${SPEC:-examples/demo-capacity.json}
export CAPACITY_DATABASE_URL=${CAPACITY_DATABASE_URL:-sqlite:///./capacity.db}
API="http://127.0.0.1:${PORT}"
mkdir -p .run

"$BIN/capacity" db upgrade >/dev/null
"$BIN/capacity" keys revoke demo >/dev/null 2>&1 || true  # the last run's demo key
CAPACITY_API_KEY=$("$BIN/capacity" keys create --name demo | tail -n 1)
export CAPACITY_API_KEY

"$BIN/capacity" serve --port "$PORT" >.run/api.log 2>&1 &
api=$!
"$BIN/capacity" worker >.run/worker.log 2>&1 &
worker=$!
trap 'kill "$api" "$worker" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
trap 'exit 130' INT TERM

"$BIN/python" - "$API" <<'PY'
import sys, time, httpx
url = sys.argv[1] + "/readyz"
for _ in range(150):
    try:
        if httpx.get(url, timeout=1).status_code == 200:
            sys.exit(0)
    except httpx.HTTPError:
        pass
    time.sleep(0.2)
sys.exit(f"the API did not become ready at {url}; see .run/api.log")
PY

job=$("$BIN/capacity" submit "$SPEC" --kind capacity --api "$API" --json \
      | "$BIN/python" -c 'import json, sys; print(json.load(sys.stdin)["id"])')
echo "dashboard  $API/dashboard"
echo "API        $API  (OpenAPI: $API/docs; logs in .run/)"
echo "demo job   $API/v1/jobs/$job  ($SPEC)"
echo "trials     $API/v1/jobs/$job/trials"
echo "waiting for the result ..."
"$BIN/capacity" job "$job" --api "$API" --wait
echo "result     $API/v1/jobs/$job/result  (on the dashboard: $API/dashboard#/jobs/$job)"

if [ -t 0 ] && [ "${KEEP_RUNNING:-1}" = 1 ]; then
  echo "API and worker keep running (key for writes: CAPACITY_API_KEY=$CAPACITY_API_KEY); Ctrl-C stops them"
  wait "$api"
fi
