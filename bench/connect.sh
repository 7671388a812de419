#!/usr/bin/env bash
# bench/connect.sh: CPU per connect-per-transaction cycle (pgbench -S -C:
# login + one SELECT + logout) of one or more pgaudit binaries and of
# PgBouncer, measured back to back on one throwaway cluster, rounds in
# alternating order. Built for A/B measurements of login-path changes.
#
# Usage (as root; see bench/README.md, "Where the login cost is (-C)"):
#   bench/connect.sh                                 # this tree's pgaudit vs PgBouncer
#   BINS="before=/tmp/a after=/tmp/b" bench/connect.sh   # two builds (and PgBouncer)
#   BINS="before=/tmp/a after=/tmp/b" PGBOUNCER=none ROUNDS=4 bench/connect.sh
#
# Environment (defaults in brackets):
#   BINS        NAME=PATH pairs of pgaudit binaries        [pgaudit=build of this tree]
#   PGBOUNCER   a pgbouncer binary, or none                [~/.cache/pgaudit-peers/pgbouncer-1.25.2/bin/pgbouncer]
#   DURATION    seconds per run                            [10]
#   ROUNDS      runs per target; odd rounds in order, even reversed [2]
#   CLIENTS     pgbench -c                                 [10]
#   JOBS        pgbench -j                                 [2]
#   POOL_SIZE   transaction pool size of both proxies      [20]
#   SETTLE      seconds after each run before reading the CPU time [1]
#   WARMUP      seconds of unmeasured -C run per target before the rounds [3]
#   EXTRA_ARGS  more pgaudit flags (all binaries)          []
#   SCALE, PGBIN, KEEP_TMP, HUGE_PAGES as in pgbench.sh
#
# Per run it prints tps, the proxy's user and system CPU per transaction
# (utime and stime of /proc/PID/stat, all threads, clock ticks), voluntary
# and involuntary context switches per transaction, and the 1-minute load
# before the run; at the end the mean per target.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-10}
JOBS=${JOBS:-2}
POOL_SIZE=${POOL_SIZE:-20}
SETTLE=${SETTLE:-1}
WARMUP=${WARMUP:-3}
SCALE=${SCALE:-10}
EXTRA_ARGS=${EXTRA_ARGS:-}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
KEEP_TMP=${KEEP_TMP:-0}
PGBOUNCER=${PGBOUNCER:-$HOME/.cache/pgaudit-peers/pgbouncer-1.25.2/bin/pgbouncer}
BINS=${BINS:-}

# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/lib.sh"

TMP=$(mktemp -d /tmp/pgaudit-connect.XXXXXX)
chown postgres: "$TMP"
chmod 755 "$TMP"
PGDATA_DIR=$TMP/data
PG_STARTED=0
declare -A PID_OF PORT_OF
NAMES=()

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local n
  for n in "${NAMES[@]}"; do
    [[ -n ${PID_OF[$n]:-} ]] && kill "${PID_OF[$n]}" 2>/dev/null || true
  done
  for n in "${NAMES[@]}"; do
    [[ -n ${PID_OF[$n]:-} ]] && wait "${PID_OF[$n]}" 2>/dev/null || true
  done
  if [[ $PG_STARTED == 1 ]]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m immediate stop >/dev/null 2>&1 || true
    release_huge_pages
  fi
  if [[ $KEEP_TMP == 1 || $rc -ne 0 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -z $BINS ]]; then
  log "building pgaudit"
  (cd "$REPO_ROOT" && go build -o "$TMP/pgaudit" ./cmd/pgaudit)
  BINS="pgaudit=$TMP/pgaudit"
fi

start_cluster 200 "bench/connect.sh"

start_pgaudit() { # name bin
  local port admin
  port=$(free_port)
  admin=$(free_port)
  # shellcheck disable=SC2086
  "$2" proxy --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
    --upstream "postgres://postgres@127.0.0.1:$PGPORT/postgres?sslmode=disable" \
    --pool-mode transaction --pool-size "$POOL_SIZE" --log-level warn $EXTRA_ARGS \
    >>"$TMP/$1.log" 2>&1 &
  PID_OF[$1]=$! PORT_OF[$1]=$port
  wait_port "$port" 20 || { tail -20 "$TMP/$1.log" >&2; die "$1 did not start"; }
  log "$1 ($2) on 127.0.0.1:$port, pid ${PID_OF[$1]}"
}

start_pgbouncer() {
  local port
  port=$(free_port)
  cp "$PGBOUNCER" "$TMP/pgbouncer"
  printf '"postgres" ""\n' >"$TMP/userlist.txt"
  cat >"$TMP/pgbouncer.ini" <<EOF
[databases]
* = host=127.0.0.1 port=$PGPORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $TMP/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 10000
max_db_connections = 0
max_prepared_statements = 200
ignore_startup_parameters = extra_float_digits
logfile = $TMP/pgbouncer.log
pidfile = $TMP/pgbouncer.pid
log_connections = 0
log_disconnections = 0
EOF
  chown postgres: "$TMP/pgbouncer.ini" "$TMP/userlist.txt"
  runuser -u postgres -- "$TMP/pgbouncer" -d "$TMP/pgbouncer.ini" >>"$TMP/pgbouncer.out" 2>&1 ||
    { tail -20 "$TMP/pgbouncer.out" >&2; die "pgbouncer did not start"; }
  wait_port "$port" 20 || die "pgbouncer did not start"
  PID_OF[pgbouncer]=$(cat "$TMP/pgbouncer.pid") PORT_OF[pgbouncer]=$port
  log "pgbouncer on 127.0.0.1:$port, pid ${PID_OF[pgbouncer]}"
}

for b in $BINS; do
  NAMES+=("${b%%=*}")
  start_pgaudit "${b%%=*}" "${b#*=}"
done
if [[ $PGBOUNCER != none ]]; then
  NAMES+=(pgbouncer)
  start_pgbouncer
fi

stat_of() { # pid: utime stime voluntary involuntary
  local s
  s=$(cat "/proc/$1/stat")
  s=${s##*) }
  local v n
  v=$(awk '/^voluntary_ctxt/{print $2}' /proc/"$1"/task/*/status | paste -sd+ - | bc)
  n=$(awk '/^nonvoluntary_ctxt/{print $2}' /proc/"$1"/task/*/status | paste -sd+ - | bc)
  awk -v v="$v" -v n="$n" '{print $12, $13, v, n}' <<<"$s"
}

run_pgbench() { # port seconds
  pgbench -h 127.0.0.1 -p "$1" -U postgres -n -S -C -c "$CLIENTS" -j "$JOBS" -T "$2" -M simple postgres 2>&1
}

for n in "${NAMES[@]}"; do
  log "warm-up $n ${WARMUP}s"
  run_pgbench "${PORT_OF[$n]}" "$WARMUP" >/dev/null || die "warm-up of $n failed"
done

declare -A SUM_U SUM_S SUM_TX SUM_TPS SUM_V SUM_N
printf '%-10s %-5s %8s %10s %10s %10s %8s %8s %6s\n' target round tps 'user us' 'sys us' 'total us' 'vcs/tx' 'ivcs/tx' load
for ((r = 1; r <= ROUNDS; r++)); do
  order=("${NAMES[@]}")
  if ((r % 2 == 0)); then
    order=()
    for ((i = ${#NAMES[@]} - 1; i >= 0; i--)); do order+=("${NAMES[$i]}"); done
  fi
  for n in "${order[@]}"; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    read -r u0 s0 v0 n0 < <(stat_of "${PID_OF[$n]}")
    out=$(run_pgbench "${PORT_OF[$n]}" "$DURATION") || { echo "$out" >&2; die "pgbench through $n failed"; }
    sleep "$SETTLE"
    read -r u1 s1 v1 n1 < <(stat_of "${PID_OF[$n]}")
    tx=$(awk '/actually processed/{print $NF}' <<<"$out" | cut -d/ -f1)
    tps=$(awk '/^tps/{print $3; exit}' <<<"$out")
    SUM_U[$n]=$((${SUM_U[$n]:-0} + u1 - u0)) SUM_S[$n]=$((${SUM_S[$n]:-0} + s1 - s0))
    SUM_V[$n]=$((${SUM_V[$n]:-0} + v1 - v0)) SUM_N[$n]=$((${SUM_N[$n]:-0} + n1 - n0))
    SUM_TX[$n]=$((${SUM_TX[$n]:-0} + tx))
    SUM_TPS[$n]=$(awk -v a="${SUM_TPS[$n]:-0}" -v b="$tps" 'BEGIN{print a + b}')
    awk -v n="$n" -v r="$r" -v tps="$tps" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v v=$((v1 - v0)) -v iv=$((n1 - n0)) \
      -v tx="$tx" -v hz="$CLK_TCK" -v load="$load" \
      'BEGIN{printf "%-10s %-5s %8.0f %10.1f %10.1f %10.1f %8.2f %8.2f %6s\n", n, r, tps, u/hz*1e6/tx, s/hz*1e6/tx, (u+s)/hz*1e6/tx, v/tx, iv/tx, load}'
  done
done
echo
echo "mean over $ROUNDS rounds (CPU = total ticks / total transactions):"
for n in "${NAMES[@]}"; do
  awk -v n="$n" -v tps="${SUM_TPS[$n]}" -v r="$ROUNDS" -v u="${SUM_U[$n]}" -v s="${SUM_S[$n]}" -v v="${SUM_V[$n]}" -v iv="${SUM_N[$n]}" \
    -v tx="${SUM_TX[$n]}" -v hz="$CLK_TCK" \
    'BEGIN{printf "%-10s %-5s %8.0f %10.1f %10.1f %10.1f %8.2f %8.2f\n", n, "mean", tps/r, u/hz*1e6/tx, s/hz*1e6/tx, (u+s)/hz*1e6/tx, v/tx, iv/tx}'
done
