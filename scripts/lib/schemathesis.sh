# shellcheck shell=bash
# The schemathesis gate: a real node on a fresh database with the demo data, fuzzed through its
# own OpenAPI document with every check on (scripts/schemathesis.toml), once with an admin token
# and once with a user token, fixed seed, bounded examples. Any 5xx or contract violation fails.
# The node runs against the WeChat sandbox, so the payment and WeChat login routes are fuzzed
# too; requests ask for JSON (`Accept`), as API clients do: a browser's WeChat login callback is
# answered with redirects instead, which the integration tests cover.
# Sourced by scripts/test after `cargo test` built target/debug/gateway.

SCHEMATHESIS_VERSION=${SCHEMATHESIS_VERSION:-4.32.5}
SCHEMATHESIS_EXAMPLES=${SCHEMATHESIS_EXAMPLES:-40}
SCHEMATHESIS_SEED=${SCHEMATHESIS_SEED:-1}

# ensure_schemathesis: a virtual environment under $DATA_DIR with schemathesis from PyPI.
ensure_schemathesis() {
  local venv="$DATA_DIR/schemathesis-venv"
  if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    command -v python3 >/dev/null || apt_install python3
    python3 -m venv --help >/dev/null 2>&1 && python3 -c 'import ensurepip' 2>/dev/null \
      || apt_install python3-venv
    log "installing schemathesis $SCHEMATHESIS_VERSION into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
  fi
  SCHEMATHESIS="$venv/bin/schemathesis"
}

# run_schemathesis_gate: starts a node, fuzzes it as admin and as user, stops it.
run_schemathesis_gate() {
  ensure_schemathesis
  local gateway=target/debug/gateway port=18099 db=hub_schemathesis_gate
  [ -x "$gateway" ] || cargo build --locked -p gateway --bin gateway
  local base=${DATABASE_URL%/*}
  psql "$DATABASE_URL" -qc "drop database if exists $db with (force)" -c "create database $db" >/dev/null
  local url="$base/$db"
  # Load shedding (503) is not what the gate fuzzes: a loaded CI machine must not shed its requests.
  export HUB_DEV_MODE=true HUB_LISTEN=127.0.0.1:$port HUB_LEDGER__MAX_QUEUE_MS=10000 HUB_LEDGER__LATENCY_TARGET_MS=0
  DATABASE_URL=$url "$gateway" migrate >/dev/null
  DATABASE_URL=$url "$gateway" seed >/dev/null
  local log_file="$DATA_DIR/schemathesis-node.log"
  # The payment and WeChat login routes are fuzzed against the WeChat sandbox.
  local sandbox_dir="$DATA_DIR/schemathesis-sandbox"
  "$gateway" sandbox --listen 127.0.0.1:$((port - 1)) --dir "$sandbox_dir" \
    --hub "http://127.0.0.1:$port" >"$DATA_DIR/schemathesis-sandbox.log" 2>&1 &
  local sandbox=$!
  wait_http "http://127.0.0.1:$((port - 1))/sandbox/deliveries" 120 || die "the gate's WeChat sandbox did not start"
  (
    # shellcheck disable=SC1091
    source "$sandbox_dir/hub.env"
    exec env -u REDIS_URL DATABASE_URL="$url" "$gateway" serve >"$log_file" 2>&1
  ) &
  local node=$!
  if ! wait_http "http://127.0.0.1:$port/readyz" 60; then
    kill "$node" "$sandbox" 2>/dev/null || true
    tail -n 50 "$log_file"
    die "the gate's node did not start"
  fi
  local role sub token status=0
  for role in admin user; do
    sub=$([ "$role" = admin ] && echo admin-gate || echo alice)
    token=$(DATABASE_URL=$url "$gateway" token --sub "$sub" --role "$role" --ttl 3600 | tail -n 1)
    log "schemathesis as $role: every check, seed $SCHEMATHESIS_SEED, $SCHEMATHESIS_EXAMPLES examples per operation"
    "$SCHEMATHESIS" --config-file scripts/schemathesis.toml run \
      "http://127.0.0.1:$port/api/v1/openapi.json" \
      --header "Authorization: Bearer $token" --header "Accept: application/json" \
      --checks all --seed "$SCHEMATHESIS_SEED" --max-examples "$SCHEMATHESIS_EXAMPLES" \
      --generation-database none \
      --exclude-path-regex '^/(connection|demo|console)' \
      --no-color --report junit --report-dir "$DATA_DIR/schemathesis-$role" || status=$?
  done
  kill "$node" "$sandbox" 2>/dev/null || true
  wait "$node" "$sandbox" 2>/dev/null || true
  unset HUB_DEV_MODE HUB_LISTEN HUB_LEDGER__MAX_QUEUE_MS HUB_LEDGER__LATENCY_TARGET_MS
  [ "$status" = 0 ] || { tail -n 30 "$log_file"; die "the schemathesis gate failed"; }
}
