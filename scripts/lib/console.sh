# shellcheck shell=bash
# The console's browser tests: Debian's chromium (installed when missing) driven by playwright-core
# (gateway/console/package-lock.json) against two real nodes of target/debug/gateway on a fresh
# database, linked by Redis, with the WeChat sandbox. Screenshots go to target/console-screenshots/.
# Sourced by scripts/test after `cargo test` built target/debug/gateway.

CONSOLE_DB=${CONSOLE_DB:-hub_console_test}

# ensure_chromium: Debian's chromium at /usr/bin/chromium.
ensure_chromium() {
  [ -x /usr/bin/chromium ] || apt_install chromium
}

# run_console_tests: the console's vendored files checked against npm, then the browser tests.
run_console_tests() {
  ensure_chromium
  local gateway=$PWD/target/debug/gateway
  [ -x "$gateway" ] || cargo build --locked -p gateway --bin gateway
  log "installing the console's pinned npm packages (npm ci)"
  npm ci --prefix gateway/console --no-audit --no-fund --loglevel=error
  local logs=$PWD/target/console-logs
  rm -rf "$logs" && mkdir -p "$logs"
  local base=${DATABASE_URL%/*}
  psql "$DATABASE_URL" -qc "drop database if exists $CONSOLE_DB with (force)" -c "create database $CONSOLE_DB" >/dev/null
  local url="$base/$CONSOLE_DB" port_a=18211 sandbox_port=18210
  DATABASE_URL=$url "$gateway" migrate >/dev/null
  DATABASE_URL=$url "$gateway" seed >/dev/null
  # The sandbox notifies node A and sends QR logins back to it.
  local sandbox_dir="$DATA_DIR/console-sandbox"
  "$gateway" sandbox --listen 127.0.0.1:$sandbox_port --dir "$sandbox_dir" \
    --hub "http://127.0.0.1:$port_a" >"$logs/sandbox.log" 2>&1 &
  local sandbox=$!
  wait_http "http://127.0.0.1:$sandbox_port/sandbox/deliveries" 120 || die "the console tests' WeChat sandbox did not start"
  local status=0
  log "browser tests of the console (chromium, playwright-core)"
  (
    cd gateway/console
    # The nodes and `gateway token` (which mints the tests' service and admin tokens) share it.
    HUB_JWT_SECRET=${HUB_JWT_SECRET:-console-tests-secret-0123456789-0123456789} \
    GATEWAY=$gateway DATABASE_URL=$url SANDBOX_URL=http://127.0.0.1:$sandbox_port \
      SANDBOX_ENV=$sandbox_dir/hub.env CONSOLE_LOG_DIR=$logs \
      CONSOLE_SCREENSHOTS=$PWD/../../target/console-screenshots CONSOLE_PORT_A=$port_a \
      node --test --test-concurrency=1 tests/
  ) || status=$?
  kill "$sandbox" 2>/dev/null || true
  wait "$sandbox" 2>/dev/null || true
  if [ "$status" != 0 ]; then
    tail -n 30 "$logs"/console-a.log "$logs"/console-b.log 2>/dev/null || true
    die "the console's browser tests failed (logs in $logs)"
  fi
}
