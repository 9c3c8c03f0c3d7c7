#!/usr/bin/env bash
# Installs what the tests need and runs every test of the workspace: moto (EC2, STS, SNS and
# semantics), fauxqs and DynamoDB Local (fleets under load and faults), Prometheus and promtool
# (metrics and alert rules), all from tests/emulators.sh.
set -euo pipefail
source "$(dirname "$0")/emulators.sh"

# With arguments, they choose what to test (`tests/run.sh -p opsfleet-router`); without, all.
if [ $# -gt 0 ]; then
  cargo test "$@"
else
  cargo test --workspace
fi
