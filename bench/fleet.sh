#!/usr/bin/env bash
# bench/fleet.sh: one pgaudit process against three on one port
# (so_reuseport, peer_id, [peers] over unix sockets), same total server
# connections (POOL_SIZE vs 3 x POOL_SIZE/3, transaction mode), pgbench -S
# through each in alternating rounds on one throwaway cluster. Reports tps
# and the proxies' CPU per 1000 transactions per round and on average, and
# how pgbench's connections spread over the three processes.
#
# Usage (as root; see bench/README.md):
#   bench/fleet.sh                      # 3 rounds x 2 targets x 10 s, about 2 minutes
#   ROUNDS=5 DURATION=20 CLIENTS=100 bench/fleet.sh
#
# Environment (defaults in brackets):
#   DURATION     seconds per pgbench run                          [10]
#   ROUNDS       rounds; the order of the two targets alternates    [3]
#   CLIENTS      pgbench -c                                       [50]
#   JOBS         pgbench -j                                       [2]
#   PROTOCOL     pgbench -M                                       [simple]
#   POOL_SIZE    server connections in all, per target            [21]
#   SCALE        pgbench -i scale factor                          [10]
#   WARMUP       seconds of unmeasured pgbench per target first    [5]
#   PGBIN        PostgreSQL server binaries                       [/usr/lib/postgresql/15/bin]
#   PGAUDIT_BIN  use this pgaudit binary instead of building one  [build from repo]
#   RESULTS_DIR  where the results go                             [bench/results]
#   KEEP_TMP     1 = keep the temp dir                            [0]
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-50}
JOBS=${JOBS:-2}
PROTOCOL=${PROTOCOL:-simple}
POOL_SIZE=${POOL_SIZE:-21}
SCALE=${SCALE:-10}
WARMUP=${WARMUP:-5}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PGAUDIT_BIN=${PGAUDIT_BIN:-}
RESULTS_DIR=${RESULTS_DIR:-$REPO_ROOT/bench/results}
KEEP_TMP=${KEEP_TMP:-0}

# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/lib.sh"

[[ $(id -u) == 0 ]] || die "run as root (Postgres is started as the postgres user via runuser)"
command -v pgbench >/dev/null || die "pgbench not on PATH"
command -v curl >/dev/null || die "curl not on PATH (reads pgaudit's /metrics)"
ulimit -n 65536 2>/dev/null || true

TMP=$(mktemp -d /tmp/pgaudit-fleet-bench.XXXXXX)
chown postgres: "$TMP"
chmod 755 "$TMP"
PGDATA_DIR=$TMP/data
PG_STARTED=0
PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  for pid in "${PIDS[@]}"; do
    kill -INT "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [[ $PG_STARTED == 1 ]]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m immediate -w stop >/dev/null 2>&1
    release_huge_pages
  fi
  if [[ $KEEP_TMP == 1 || $rc != 0 ]]; then log "temp dir kept: $TMP"; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

REV=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -z $PGAUDIT_BIN ]]; then
  log "building pgaudit ($REV)"
  (cd "$REPO_ROOT" && go build -o "$TMP/pgaudit" ./cmd/pgaudit) || die "go build failed"
  PGAUDIT_BIN=$TMP/pgaudit
fi

start_cluster 400 "pgaudit fleet bench"
UPSTREAM="postgres://postgres@127.0.0.1:$PGPORT/postgres?sslmode=disable"

# start_proc NAME PORT POOL [PEER_ID]: a transaction-mode pgaudit on
# 127.0.0.1:PORT; with PEER_ID, so_reuseport and peers 1..3 on unix sockets.
declare -A ADMIN PID
start_proc() {
  local name=$1 port=$2 pool=$3 id=${4:-0} conf=$TMP/$1.toml
  ADMIN[$name]=$(free_port)
  {
    echo "[pgaudit]"
    echo "listen = \"127.0.0.1:$port\""
    echo "admin_listen = \"127.0.0.1:${ADMIN[$name]}\""
    echo "pool_mode = \"transaction\""
    echo "pool_size = $pool"
    echo "max_client_conn = 2000"
    echo "log_level = \"warn\""
    if ((id > 0)); then
      echo "so_reuseport = true"
      echo "peer_id = $id"
      echo "peer_listen = \"$TMP/peer-$id.sock\""
      echo "[peers]"
      for o in 1 2 3; do ((o == id)) || echo "$o = \"$TMP/peer-$o.sock\""; done
    fi
  } >"$conf"
  "$PGAUDIT_BIN" proxy --config "$conf" --upstream "$UPSTREAM" >>"$TMP/$name.log" 2>&1 &
  PID[$name]=$!
  PIDS+=("$!")
  for _ in $(seq 100); do
    curl -s -m 1 -o /dev/null "http://127.0.0.1:${ADMIN[$name]}/readyz" && return 0
    sleep 0.1
  done
  tail -20 "$TMP/$name.log" >&2
  die "$name did not start"
}

PORT1=$(free_port)
PORT3=$(free_port)
start_proc single "$PORT1" "$POOL_SIZE"
for id in 1 2 3; do start_proc "fleet$id" "$PORT3" $((POOL_SIZE / 3)) "$id"; done
log "single: 127.0.0.1:$PORT1 (pool $POOL_SIZE); fleet: 3 x 127.0.0.1:$PORT3 (pool $((POOL_SIZE / 3)) each)"

procs_of() { if [[ $1 == single ]]; then echo single; else echo fleet1 fleet2 fleet3; fi; }
port_of() { if [[ $1 == single ]]; then echo "$PORT1"; else echo "$PORT3"; fi; }
ticks_of() {
  local s=0 p
  for p in $(procs_of "$1"); do s=$((s + $(cpu_ticks "${PID[$p]}"))); done
  echo "$s"
}
bench() { # target seconds outfile
  pgbench -n -S -M "$PROTOCOL" -c "$CLIENTS" -j "$JOBS" -T "$2" -h 127.0.0.1 -p "$(port_of "$1")" >"$3" 2>&1 || true
}

for t in single fleet; do
  log "warm-up $t ($WARMUP s)"
  bench "$t" "$WARMUP" "$TMP/warmup-$t.txt"
done

STAMP=$(date +%Y%m%d-%H%M%S)
mkdir -p "$RESULTS_DIR"
CSV=$RESULTS_DIR/fleet-$STAMP.csv
TXT=$RESULTS_DIR/fleet-$STAMP.txt
echo "round,target,tps,transactions,failed,proxy_cpu_s,cpu_ms_per_1k_tx,load1_before,spread" >"$CSV"
declare -A SUM_TPS SUM_CPU N
for r in $(seq "$ROUNDS"); do
  order="single fleet"
  ((r % 2 == 0)) && order="fleet single"
  for t in $order; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    spread=""
    declare -A X0=()
    for p in $(procs_of "$t"); do X0[$p]=$(metric_at "${ADMIN[$p]}" pgaudit_pool_transactions_total); done
    c0=$(ticks_of "$t")
    out=$TMP/r$r-$t.txt
    log "round $r $t (load $load)"
    bench "$t" "$DURATION" "$out"
    c1=$(ticks_of "$t")
    for p in $(procs_of "$t"); do
      spread+="$p:$(($(metric_at "${ADMIN[$p]}" pgaudit_pool_transactions_total) - X0[$p])) "
    done
    tps=$(awk '/^tps = / {print $3; exit}' "$out")
    tx=$(awk '/number of transactions actually processed/ {print $NF; exit}' "$out")
    failed=$(awk '/number of failed transactions/ {print $5; exit}' "$out")
    [[ -n $tps ]] || { cat "$out" >&2; die "pgbench through $t failed"; }
    cpu=$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", d / hz}')
    per=$(awk -v c="$cpu" -v n="$tx" 'BEGIN {printf "%.1f", c * 1e6 / n}')
    echo "$r,$t,$tps,$tx,${failed:-?},$cpu,$per,$load,${spread% }" >>"$CSV"
    SUM_TPS[$t]=$(awk -v a="${SUM_TPS[$t]:-0}" -v b="$tps" 'BEGIN {print a + b}')
    SUM_CPU[$t]=$(awk -v a="${SUM_CPU[$t]:-0}" -v b="$per" 'BEGIN {print a + b}')
    N[$t]=$((${N[$t]:-0} + 1))
  done
done

{
  echo "pgaudit fleet bench $STAMP (pgaudit $REV, PostgreSQL $PG_VERSION, $(nproc) CPUs, huge pages: $HUGE_PAGES_USED)"
  echo "pgbench -n -S -M $PROTOCOL -c $CLIENTS -j $JOBS -T $DURATION, $ROUNDS rounds alternating;"
  echo "single = 1 process, pool $POOL_SIZE; fleet = 3 processes on one port (so_reuseport, peers), pool $((POOL_SIZE / 3)) each"
  echo
  column -s, -t "$CSV"
  echo
  for t in single fleet; do
    awk -v t="$t" -v s="${SUM_TPS[$t]}" -v c="${SUM_CPU[$t]}" -v n="${N[$t]}" \
      'BEGIN {printf "%-6s mean tps %8.0f   proxy CPU %6.1f ms per 1000 transactions\n", t, s / n, c / n}'
  done
  awk -v a="${SUM_TPS[fleet]}" -v b="${SUM_TPS[single]}" 'BEGIN {printf "fleet/single tps: %.2f\n", a / b}'
} | tee "$TXT"
log "results: $TXT, $CSV"
