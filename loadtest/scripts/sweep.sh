#!/usr/bin/env bash
# The wire benchmarks of BENCHMARKS.md: router and workers of one process on fauxqs (SQS) and
# DynamoDB Local, each run with its bare-SDK baseline. Writes JSON lines to target/loadtest/
# and the latency-vs-load plot to loadtest/latency-vs-load.png.
#
#   loadtest/scripts/sweep.sh            # everything (about 15 minutes after the build)
#
# Settings: EVENTS (events of a saturation run, default 4000), SECONDS_PER_POINT (length of an
# open-loop run, default 20).
set -euo pipefail
source "$(dirname "$0")/../../tests/emulators.sh"
export AWS_ENDPOINT_URL_SQS="$OPSFLEET_TEST_FAST_SQS" AWS_ENDPOINT_URL_DYNAMODB="$OPSFLEET_TEST_FAST_DYNAMODB"
cargo build --release -p opsfleet-loadtest
lt=target/release/opsfleet-loadtest
out=target/loadtest
mkdir -p "$out"
events=${EVENTS:-4000}
per_point=${SECONDS_PER_POINT:-20}
run() { "$lt" --backend aws --resources-per-event 1 --json --quiet "$@"; }

# Saturation (every event sent at once), one to four workers.
: > "$out/saturation.jsonl"
for workers in 1 2 3 4; do
  run --events "$events" --workers "$workers" | tee -a "$out/saturation.jsonl"
done
saturation=$("$venv/bin/python" -c '
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
print(int(next(r for r in runs if r["workers"] == 2)["events_per_sec"]))' "$out/saturation.jsonl")
echo "saturation at 2 workers: $saturation events/s"

# The router alone: every event sent at once, no workers, until every job was sent.
run --events "$events" --workers 0 | tee "$out/router.jsonl"

# Latency against offered load (open loop), 10 % to 100 % of saturation, 2 workers.
: > "$out/open-loop.jsonl"
for percent in 10 25 50 75 90 100; do
  rate=$((saturation * percent / 100))
  [ "$rate" -ge 1 ] || rate=1
  run --events $((rate * per_point)) --rate "$rate" --workers 2 | tee -a "$out/open-loop.jsonl"
done

# Memory with 1,000 jobs in flight in one worker (each noop sleeps 5 s).
run --events 1000 --workers 1 --max-in-flight 1000 --sleep-ms 5000 | tee "$out/memory.jsonl"

"$venv/bin/pip" install --quiet --disable-pip-version-check matplotlib
"$venv/bin/python" loadtest/scripts/plot.py "$out/open-loop.jsonl" loadtest/latency-vs-load.png
