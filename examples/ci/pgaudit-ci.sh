#!/bin/sh
# pgaudit-ci.sh: run a test suite through pgaudit, then fail on new findings.
#
#   pgaudit-ci.sh UPSTREAM_DSN TEST-COMMAND [ARGS...]
#
# Starts `pgaudit proxy` in front of UPSTREAM_DSN with an audit log (which has
# row counts, unlike Postgres's own logs), runs the test command with
# DATABASE_URL pointing at the proxy, stops the proxy (SIGTERM: pending shapes
# are explained and the log is flushed), then runs `pgaudit lint` over the
# audit log with --dsn UPSTREAM_DSN for the EXPLAIN rules. The baseline file is
# used when it exists (first run: every finding is new); to accept the current
# findings, run: pgaudit lint --write-baseline "$PGAUDIT_BASELINE" "$PGAUDIT_AUDIT_LOG"
#
# Exit status: the test command's when it fails, else lint's (0 no new
# finding at or above PGAUDIT_FAIL_ON, 1 new findings, 2 usage or input error).
#
# Environment (all optional):
#   PGAUDIT           pgaudit binary (default: pgaudit on PATH)
#   PGAUDIT_LISTEN    proxy address, loopback (default 127.0.0.1:6432)
#   PGAUDIT_ADMIN_LISTEN  admin HTTP address (default: off, so that parallel
#                     CI jobs on one host do not contend for 127.0.0.1:9930)
#   PGAUDIT_USER, PGAUDIT_DB  user and database in DATABASE_URL (default postgres)
#   PGAUDIT_AUDIT_LOG audit log path (default pgaudit-audit.jsonl)
#   PGAUDIT_BASELINE  baseline file (default .pgaudit-baseline.json)
#   PGAUDIT_OUTPUT    lint output: github, text, json, sarif (default github)
#   PGAUDIT_FAIL_ON   info, warning or error (default warning)
set -eu

if [ $# -lt 2 ]; then
  echo "usage: $0 UPSTREAM_DSN TEST-COMMAND [ARGS...]" >&2
  exit 2
fi
upstream=$1
shift
pgaudit=${PGAUDIT:-pgaudit}
listen=${PGAUDIT_LISTEN:-127.0.0.1:6432}
audit=${PGAUDIT_AUDIT_LOG:-pgaudit-audit.jsonl}
baseline=${PGAUDIT_BASELINE:-.pgaudit-baseline.json}
host=${listen%:*}
port=${listen##*:}

"$pgaudit" proxy --upstream "$upstream" --listen "$listen" --audit-log "$audit" \
  --admin-listen "${PGAUDIT_ADMIN_LISTEN:-}" &
proxy=$!
stop_proxy() {
  if kill -0 "$proxy" 2>/dev/null; then
    kill -TERM "$proxy"
    wait "$proxy" || true
  fi
}
trap stop_proxy EXIT

# Wait until the proxy accepts connections (at most 30 s).
i=0
until pg_isready -q -h "$host" -p "$port" -U "${PGAUDIT_USER:-postgres}"; do
  i=$((i + 1))
  if [ "$i" -ge 150 ] || ! kill -0 "$proxy" 2>/dev/null; then
    echo "pgaudit proxy did not start on $listen" >&2
    exit 2
  fi
  sleep 0.2
done

DATABASE_URL="postgres://${PGAUDIT_USER:-postgres}@$listen/${PGAUDIT_DB:-postgres}?sslmode=disable"
export DATABASE_URL
status=0
"$@" || status=$?
stop_proxy
trap - EXIT
if [ "$status" -ne 0 ]; then
  echo "test command failed (exit $status)" >&2
  exit "$status"
fi

set -- --output "${PGAUDIT_OUTPUT:-github}" --fail-on "${PGAUDIT_FAIL_ON:-warning}" --dsn "$upstream"
if [ -f "$baseline" ]; then
  set -- "$@" --baseline "$baseline"
fi
exec "$pgaudit" lint "$@" "$audit"
