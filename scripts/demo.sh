#!/usr/bin/env bash
# `make demo`: from nothing to a live prediction, on the bundled iris example.
set -euo pipefail

workdir="$(mktemp -d "${TMPDIR:-/tmp}/conveyor-demo.XXXXXX")"
project="$workdir/iris"
cleanup() {
    if [ -f "$project/conveyor.yaml" ]; then
        (cd "$project" && conveyor deployments stop) || true
    fi
    rm -rf "$workdir"
}
trap cleanup EXIT

# A free port on loopback, so the demo never collides with a running server.
port="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

echo "\$ conveyor init $project --example iris"
conveyor init "$project" --example iris
cd "$project"

echo
echo "\$ conveyor run --port $port"
conveyor run --port "$port"

echo
echo "\$ conveyor run --port $port    # nothing changed: everything comes from cache"
conveyor run --port "$port"

request='{"rows": [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
          {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}]}'
echo
echo "\$ curl -s http://127.0.0.1:$port/predict -H 'content-type: application/json' -d '$request'"
python - "$port" "$request" <<'PY'
import sys, urllib.request
port, body = sys.argv[1], sys.argv[2].encode()
req = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=body,
                             headers={"content-type": "application/json"})
with urllib.request.urlopen(req, timeout=10) as response:
    print(response.read().decode())
    print(f"(answered by model version {response.headers['X-Model-Version']})")
PY

echo
echo "\$ conveyor models list"
conveyor models list
