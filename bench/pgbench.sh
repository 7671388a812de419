#!/usr/bin/env bash
# bench/pgbench.sh: pgbench throughput, latency and proxy CPU per transaction
# of direct Postgres, pgaudit and PgBouncer (1.25.2, built once from source),
# measured in the same run on the same throwaway cluster; pgaudit's dropped
# audit events per cell; and the memory per idle client of both proxies.
#
# Usage (as root; see bench/README.md):
#   bench/pgbench.sh                 # full run (30-45 minutes; DURATION=10: about 25)
#   QUICK=1 bench/pgbench.sh         # smoke run: 5 s per test, 10 and 100 clients
#   DURATION=30 TX_CLIENTS="100 1000" SECTIONS=transaction bench/pgbench.sh
#   SECTIONS=idle IDLE_CLIENTS=10000 bench/pgbench.sh   # memory per idle client only
#   PGBOUNCER=debian bench/pgbench.sh                   # against Debian's PgBouncer 1.18
#
# Environment (defaults in brackets):
#   QUICK            1 = DURATION 5, clients 10 and 100 only            [0]
#   DURATION         seconds per pgbench run                            [15; QUICK: 5]
#   SCALE            pgbench -i scale factor                            [10]
#   JOBS             pgbench -j                                         [2]
#   SECTIONS         which sections to run: session transaction connect idle [all four]
#   TARGETS          which targets: direct pgaudit pgbouncer            [all three;
#                    pgaudit-event is an alias of pgaudit (its name while pgaudit had
#                    two relays); pgaudit-goroutine, that relay removed, is refused;
#                    pgaudit-noaudit is pgaudit with --no-audit (the relay alone,
#                    no events, statistics or findings), not in the default set]
#   RELAY_PARK_AFTER pgaudit's relay_park_after                         [pgaudit's default]
#   SESSION_CLIENTS  client counts, session section                     [10 100]
#   TX_CLIENTS       client counts, transaction section                 [10 100 1000; QUICK: 10 100]
#   TX_PROTOCOLS     pgbench -M values, transaction section             [simple extended prepared]
#   TX_POOL_SIZE     server pool size in transaction mode               [20]
#   CONNECT_CLIENTS  client counts for the -C (connect per tx) section  [10]
#   CONNECT_SLACK_MS added to -T per client and job for the initial connects [60]
#   IDLE_CLIENTS     idle authenticated clients per proxy, idle section [10000]
#   IDLE_SETTLE      seconds between the last idle client connecting and reading VmRSS [3]
#   IDLE_TIMEOUT     seconds the idle clients may take to connect (and to answer the check) [300]
#   SETTLE           seconds after each run before the proxy's CPU time is read [1]
#   PGBOUNCER        1.25: build the release from source once (cached), debian: Debian's
#                    package (1.18), or a path to a pgbouncer binary        [1.25]
#   PGBOUNCER_SRC    the pgbouncer-1.25*.tar.gz, or its directory   [REPO/../shared/peers, also
#                    next to the main checkout of a worktree; missing: falls back to debian]
#   PGBOUNCER_CACHE_ROOT where PgBouncer builds are cached         [~/.cache/pgaudit-peers]
#   RUN_TIMEOUT      seconds a pgbench run may overrun -T before it is killed [120]
#   PGBIN            PostgreSQL server binaries                         [/usr/lib/postgresql/15/bin]
#   PGAUDIT_BIN      use this pgaudit binary instead of building one    [build from repo]
#   RESULTS_DIR      where the CSV and the log go                       [bench/results]
#   KEEP_TMP         1 = keep the temp dir (cluster, logs) after exit   [0]
#   WARMUP           seconds of unmeasured pgbench through each proxy after it (re)starts [5]
#   ROUNDS           measured runs per target and scenario, in alternating order; tps is their mean [2; QUICK: 1]
#   HUGE_PAGES       1 = back shared memory with huge pages if they can be reserved (see lib.sh) [1]
#
# Exit status: 0 all runs clean; 3 some pgbench run had errors or aborted
# clients (the table and CSV are still written); 1 setup failed (temp dir kept).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
  DURATION=${DURATION:-5}
  TX_CLIENTS=${TX_CLIENTS:-"10 100"}
  ROUNDS=${ROUNDS:-1}
fi
DURATION=${DURATION:-15}
SCALE=${SCALE:-10}
JOBS=${JOBS:-2}
SECTIONS=${SECTIONS:-"session transaction connect idle"}
TARGETS=${TARGETS:-"direct pgaudit pgbouncer"}
# pgaudit-event is what the target was called while pgaudit had two relays
# (result files up to 2026-12-02 name it so): the same target.
TARGETS=$(echo " $TARGETS " | sed -E 's/ pgaudit-event / pgaudit /g; s/^ +//; s/ +$//')
RELAY_PARK_AFTER=${RELAY_PARK_AFTER:-}
SESSION_CLIENTS=${SESSION_CLIENTS:-"10 100"}
TX_CLIENTS=${TX_CLIENTS:-"10 100 1000"}
TX_PROTOCOLS=${TX_PROTOCOLS:-"simple extended prepared"}
TX_POOL_SIZE=${TX_POOL_SIZE:-20}
CONNECT_CLIENTS=${CONNECT_CLIENTS:-10}
CONNECT_SLACK_MS=${CONNECT_SLACK_MS:-60}
RUN_TIMEOUT=${RUN_TIMEOUT:-120}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PGAUDIT_BIN=${PGAUDIT_BIN:-}
RESULTS_DIR=${RESULTS_DIR:-$REPO_ROOT/bench/results}
KEEP_TMP=${KEEP_TMP:-0}
WARMUP=${WARMUP:-5}
ROUNDS=${ROUNDS:-2}
SETTLE=${SETTLE:-1}
IDLE_CLIENTS=${IDLE_CLIENTS:-10000}
IDLE_SETTLE=${IDLE_SETTLE:-3}
IDLE_TIMEOUT=${IDLE_TIMEOUT:-300}

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for t in $TARGETS; do
  case $t in
    direct | pgaudit | pgaudit-noaudit | pgbouncer) ;;
    pgaudit-goroutine) die "TARGETS: pgaudit-goroutine: the goroutine relay was removed (one relay since then, docs/relay.md); use pgaudit" ;;
    *) die "TARGETS: unknown target $t (direct, pgaudit, pgaudit-noaudit, pgbouncer)" ;;
  esac
done

[[ $(id -u) == 0 ]] || die "run as root (Postgres and PgBouncer are started as the postgres user via runuser)"
id postgres >/dev/null 2>&1 || die "no postgres user"
[[ -x $PGBIN/initdb && -x $PGBIN/pg_ctl ]] || die "PostgreSQL server binaries not found in $PGBIN"
command -v pgbench >/dev/null || die "pgbench not on PATH"
command -v psql >/dev/null || die "psql not on PATH"

# 1000 pgbench clients (plus as many proxy-side sockets) need many fds.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
log "open files limit: $(ulimit -n)"

# ---------------------------------------------------------------- cleanup
TMP=$(mktemp -d /tmp/pgaudit-bench.XXXXXX)
chown postgres: "$TMP"
chmod 755 "$TMP"
PGDATA_DIR=$TMP/data
# Per pgaudit target (pgaudit, pgaudit-noaudit): pid, port, admin port.
declare -A PA_PID=() PA_PORT=() PA_ADMIN=()
PGBOUNCER_PIDFILE=$TMP/pgbouncer.pid
PG_STARTED=0
IDLE_CLIENT_PID=

stop_pgaudit() {
  local t pid
  for t in "${!PA_PID[@]}"; do
    pid=${PA_PID[$t]}
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
      kill -INT "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  PA_PID=()
}

stop_pgbouncer() {
  if [[ -s $PGBOUNCER_PIDFILE ]]; then
    local pid
    pid=$(cat "$PGBOUNCER_PIDFILE")
    if kill -0 "$pid" 2>/dev/null; then
      kill -INT "$pid" 2>/dev/null || true   # SIGINT = immediate shutdown
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PGBOUNCER_PIDFILE"
  fi
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if [[ -n $IDLE_CLIENT_PID ]]; then kill -KILL "$IDLE_CLIENT_PID" 2>/dev/null; wait "$IDLE_CLIENT_PID" 2>/dev/null; fi
  stop_pgaudit
  stop_pgbouncer
  if [[ $PG_STARTED == 1 ]]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m immediate -w stop >/dev/null 2>&1
    release_huge_pages
  fi
  if [[ $KEEP_TMP == 1 || ($rc != 0 && $rc != 3) ]]; then
    log "temp dir kept: $TMP"
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- pgbouncer
# PGBOUNCER=1.25 (default) builds the current release once into a cache
# directory; debian or a path also work (select_pgbouncer in lib.sh).
if [[ " $TARGETS " == *" pgbouncer "* ]]; then
  select_pgbouncer
else
  PGBOUNCER_BIN=
  PGBOUNCER_VERSION=none
  PGBOUNCER_ORIGIN="not run"
fi
# PgBouncer learned prepared statements in transaction mode in 1.21.
pgbouncer_has_prepared() {
  [[ -n $PGBOUNCER_BIN ]] || return 1
  local maj min
  IFS=. read -r maj min _ <<<"$PGBOUNCER_VERSION"
  ((maj > 1 || (maj == 1 && min >= 21)))
}

# ---------------------------------------------------------------- pgaudit
NOAUDIT_NOTE=
if [[ " $TARGETS " == *" pgaudit-noaudit "* ]]; then NOAUDIT_NOTE="; pgaudit-noaudit: the same binary with --no-audit"; fi
PGAUDIT_REV=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$REPO_ROOT" status --porcelain 2>/dev/null | head -1) ]]; then
  PGAUDIT_REV="$PGAUDIT_REV-dirty"
fi
if [[ " $TARGETS " == *" pgaudit "* || " $TARGETS " == *" pgaudit-noaudit "* ]]; then
  if [[ -n $PGAUDIT_BIN ]]; then
    [[ -x $PGAUDIT_BIN ]] || die "PGAUDIT_BIN=$PGAUDIT_BIN is not executable"
    log "using prebuilt pgaudit: $PGAUDIT_BIN"
    PGAUDIT_REV="$PGAUDIT_REV (prebuilt $PGAUDIT_BIN)"
  else
    log "building pgaudit ($PGAUDIT_REV)"
    (cd "$REPO_ROOT" && go build -ldflags "-X main.version=$PGAUDIT_REV" -o "$TMP/pgaudit" ./cmd/pgaudit) ||
      die "go build ./cmd/pgaudit failed (set PGAUDIT_BIN to a prebuilt binary)"
    PGAUDIT_BIN=$TMP/pgaudit
  fi
fi

# The idle section's client (bench/idle): N connections held open.
if [[ " $SECTIONS " == *" idle "* ]]; then
  log "building bench/idle"
  (cd "$REPO_ROOT" && go build -o "$TMP/idle" ./bench/idle) || die "go build ./bench/idle failed"
  if (($(ulimit -n) < IDLE_CLIENTS + 256)); then
    log "WARNING: open files limit $(ulimit -n) is below IDLE_CLIENTS + 256 = $((IDLE_CLIENTS + 256)): the proxies cannot accept all idle clients"
  fi
fi

# ---------------------------------------------------------------- postgres
start_cluster 1200 "pgaudit bench"

# ---------------------------------------------------------------- proxies
PGBOUNCER_PORT=
PGBOUNCER_PID=
CUR_PROXY_CONF=
# Client limit of both proxies: room for the idle section's clients.
MAX_CLIENT_CONN=$((IDLE_CLIENTS + 1000))
if ((MAX_CLIENT_CONN < 10000)); then MAX_CLIENT_CONN=10000; fi

# pgaudit runs with its defaults (analysis on, no audit log) plus an admin
# listener on a free port, whose /metrics the bench reads for the audit
# queue's drop counter. The config file only raises max_client_conn (and
# sets relay_park_after when RELAY_PARK_AFTER is set). The pgaudit-noaudit
# target adds --no-audit: the same relay and pool without the audit
# pipeline, so the two rows split pgaudit's CPU between relay and analysis.
start_pgaudit() { # mode size target
  local t=$3 port admin extra=()
  if [[ $t == pgaudit-noaudit ]]; then extra=(--no-audit); fi
  port=$(free_port)
  admin=$(free_port)
  printf '[pgaudit]\nmax_client_conn = %d\n' "$MAX_CLIENT_CONN" >"$TMP/$t.toml"
  if [[ -n $RELAY_PARK_AFTER ]]; then printf 'relay_park_after = "%s"\n' "$RELAY_PARK_AFTER" >>"$TMP/$t.toml"; fi
  "$PGAUDIT_BIN" proxy --config "$TMP/$t.toml" --listen "127.0.0.1:$port" \
    --admin-listen "127.0.0.1:$admin" \
    --upstream "postgres://postgres@127.0.0.1:$PGPORT/postgres?sslmode=disable" \
    --pool-mode "$1" --pool-size "$2" --log-level warn "${extra[@]}" \
    >>"$TMP/$t.log" 2>&1 &
  PA_PID[$t]=$! PA_PORT[$t]=$port PA_ADMIN[$t]=$admin
  wait_port "$port" 20 || { tail -20 "$TMP/$t.log" >&2; die "$t did not start"; }
  wait_port "$admin" 10 || log "$t's admin listener 127.0.0.1:$admin does not answer: events_dropped will show ?"
  log "$t $1 pool $2 on 127.0.0.1:$port (pid ${PA_PID[$t]}, admin $admin)"
}

start_pgbouncer() { # mode size
  PGBOUNCER_PORT=$(free_port)
  local extra=
  if [[ $1 == transaction ]] && pgbouncer_has_prepared; then extra="max_prepared_statements = 200"; fi
  printf '"postgres" ""\n' >"$TMP/userlist.txt"
  cat >"$TMP/pgbouncer.ini" <<EOF
[databases]
* = host=127.0.0.1 port=$PGPORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGBOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $TMP/userlist.txt
pool_mode = $1
default_pool_size = $2
max_client_conn = $MAX_CLIENT_CONN
max_db_connections = 0
ignore_startup_parameters = extra_float_digits
logfile = $TMP/pgbouncer.log
pidfile = $PGBOUNCER_PIDFILE
log_connections = 0
log_disconnections = 0
$extra
EOF
  chown postgres: "$TMP/pgbouncer.ini" "$TMP/userlist.txt"
  # runuser goes through PAM, which resets the soft fd limit to 1024: too
  # few for 1000 clients. Raise it again (up to our hard limit) as postgres.
  runuser -u postgres -- sh -c 'ulimit -n "$1" && exec "$2" -d "$3"' sh "$(ulimit -n)" "$PGBOUNCER_BIN" "$TMP/pgbouncer.ini" \
    >>"$TMP/pgbouncer.out" 2>&1 ||
    { tail -20 "$TMP/pgbouncer.out" "$TMP/pgbouncer.log" >&2 || true; die "pgbouncer did not start"; }
  wait_port "$PGBOUNCER_PORT" 20 || { tail -20 "$TMP/pgbouncer.log" >&2; die "pgbouncer did not start"; }
  PGBOUNCER_PID=$(cat "$PGBOUNCER_PIDFILE")
  local lim
  lim=$(awk '/^Max open files/ {print $4}' "/proc/$PGBOUNCER_PID/limits" 2>/dev/null || echo "?")
  log "pgbouncer $PGBOUNCER_VERSION $1 pool $2 on 127.0.0.1:$PGBOUNCER_PORT (pid $PGBOUNCER_PID, open files limit $lim)"
}

# (Re)start both proxies when the pool configuration changes.
configure_proxies() { # mode size
  [[ "$1/$2" == "$CUR_PROXY_CONF" ]] && return
  stop_pgaudit
  stop_pgbouncer
  local t
  for t in $TARGETS; do
    if [[ $t == pgaudit* ]]; then start_pgaudit "$1" "$2" "$t"; fi
  done
  if [[ " $TARGETS " == *" pgbouncer "* ]]; then start_pgbouncer "$1" "$2"; fi
  CUR_PROXY_CONF="$1/$2"
  warm_proxies "$2"
}

# warm_proxies SIZE: an unmeasured pgbench -S run of $WARMUP seconds with
# SIZE clients through each proxy, so that every server connection of the
# pool exists and its backend has touched shared buffers before the first
# measured run. A fresh backend page-faults on every shared buffer it
# touches for the first time: on this kind of machine that doubled the
# Postgres CPU per transaction of whichever target ran on fresh backends.
warm_proxies() {
  [[ $WARMUP -gt 0 ]] || return 0
  local port t
  for t in $TARGETS; do
    [[ $t == direct ]] && continue
    if [[ $t == pgaudit* ]]; then port=${PA_PORT[$t]}; else port=$PGBOUNCER_PORT; fi
    pgbench -S -n -T "$WARMUP" -c "$1" -j "$JOBS" -h 127.0.0.1 -p "$port" >/dev/null 2>&1 ||
      log "warm-up through $t failed (ignored)"
  done
}

# ---------------------------------------------------------------- running
STAMP=$(date +%Y%m%d-%H%M%S)
mkdir -p "$RESULTS_DIR"
CSV=$RESULTS_DIR/pgbench-$STAMP.csv
RAW=$RESULTS_DIR/pgbench-$STAMP-raw.log
echo "section,mode,pool_size,clients,protocol,target,tps,p50_ms,p99_ms,failed,proxy_cpu_us_per_tx,events_dropped,status,pgaudit_vs_direct,pgaudit_vs_pgbouncer,cpu_pgaudit_vs_pgbouncer,load1" >"$CSV"
ROWS=()      # table rows, '|' separated
FAILURES=()  # human-readable failure notes

# Latency percentiles (ms) over all pgbench -l files with prefix $1.
latency_pcts() {
  local files=("$1".*)
  if [[ ! -e ${files[0]} ]]; then echo "- -"; return; fi
  awk '$3 ~ /^[0-9]+$/ {print $3}' "${files[@]}" | sort -n >"$1.sorted"
  rm -f "${files[@]}"
  awk '{v[NR] = $1}
       END {
         if (NR == 0) { print "- -"; exit }
         i50 = int(NR * 0.50 + 0.999999); i99 = int(NR * 0.99 + 0.999999)
         if (i50 < 1) i50 = 1; if (i99 < 1) i99 = 1
         printf "%.3f %.3f\n", v[i50] / 1000, v[i99] / 1000
       }' "$1.sorted"
  rm -f "$1.sorted"
}

ratio() { # a b
  awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else print "n/a" }'
}

# sum_or_mark ACC VALUE: ACC + VALUE for numbers; "-" when both are "-"
# (not measured for this target), "?" once either is unknown.
sum_or_mark() {
  if [[ -z $1 || $1 == - ]] && [[ $2 == - ]]; then echo -
  elif [[ ${1:-0} =~ ^[0-9]+$ && $2 =~ ^[0-9]+$ ]]; then echo $((${1:-0} + $2))
  elif [[ -z $1 && $2 =~ ^[0-9]+$ ]]; then echo "$2"
  else echo "?"; fi
}

# run_one section mode size clients proto target connect_flag -> sets R_TPS R_FAILED R_STATUS;
# the latency log files stay behind under $TMP/lat-TAG (see scenario)
run_one() {
  local section=$1 mode=$2 size=$3 clients=$4 proto=$5 target=$6 cflag=$7 port pid=
  case $target in
    direct) port=$PGPORT ;;
    pgaudit | pgaudit-noaudit) port=${PA_PORT[$target]} pid=${PA_PID[$target]} ;;
    pgbouncer) port=$PGBOUNCER_PORT pid=$PGBOUNCER_PID ;;
  esac
  if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
    die "$target (pid $pid) is gone before $section/$mode c=$clients $proto"
  fi
  local tag="$section-$mode-c$clients-$proto-$target"
  local out=$TMP/out-$tag.txt prefix=$TMP/lat-$tag
  # pgbench's -T clock includes the initial connections (tps does not):
  # give slow connection setup (about 20 ms per backend fork here, much more
  # under load) extra time so that the measured window stays near DURATION.
  local secs=$DURATION
  if [[ -z $cflag ]]; then secs=$((DURATION + (clients * CONNECT_SLACK_MS / JOBS + 999) / 1000)); fi
  local args=(-S -n -T "$secs" -c "$clients" -j "$JOBS" -M "$proto" -l --log-prefix="$prefix" -h 127.0.0.1 -p "$port")
  if [[ -n $cflag ]]; then args+=("$cflag"); fi
  log "$section/$mode c=$clients $proto ${cflag:+$cflag }-> $target"
  local rc attempt t0 elapsed c0='' c1='' d0='' d1=''
  for attempt in 1 2; do
    rc=0
    R_LOAD=$(cut -d' ' -f1 /proc/loadavg)
    # The proxy's CPU time (utime + stime, all threads) around the run, and
    # pgaudit's count of audit events dropped because the queue was full.
    if [[ -n $pid ]]; then c0=$(cpu_ticks "$pid" || true); fi
    if [[ $target == pgaudit ]]; then d0=$(metric_at "${PA_ADMIN[$target]}" pgaudit_audit_events_dropped_total); fi
    t0=$SECONDS
    timeout -k 10 $((secs + RUN_TIMEOUT)) pgbench "${args[@]}" >"$out" 2>&1 || rc=$?
    elapsed=$((SECONDS - t0))
    if [[ -n $pid ]]; then
      # pgaudit's audit pipeline works off its queue asynchronously: give
      # it (and PgBouncer alike) SETTLE seconds before reading the CPU time.
      sleep "$SETTLE"
      c1=$(cpu_ticks "$pid" || true)
    fi
    if [[ $target == pgaudit ]]; then d1=$(metric_at "${PA_ADMIN[$target]}" pgaudit_audit_events_dropped_total); fi
    { echo "=== $tag (load before: $R_LOAD, ${elapsed}s, proxy CPU ticks ${c0:--}..${c1:--} at $CLK_TCK/s, audit events dropped ${d0:--}..${d1:--}): pgbench ${args[*]}"; cat "$out"; echo; } >>"$RAW"
    # The clock ran out while the clients were still connecting (slow
    # backend forks under load): retry once with room for that.
    if [[ $attempt == 1 && $rc == 0 && -z $cflag ]] &&
      grep -q '^number of transactions actually processed: 0$' "$out" &&
      ! grep -q 'aborted' "$out"; then
      rm -f "$prefix".*
      secs=$((elapsed * 3 / 2 + DURATION))
      args[3]=$secs
      log "  no transaction within -T (clients still connecting after ${elapsed}s); retrying with -T $secs"
      continue
    fi
    break
  done
  R_TPS=$(awk '/^tps = / {print $3; exit}' "$out")
  R_FAILED=$(awk -F'[: ]+' '/^number of failed transactions/ {print $5; exit}' "$out")
  R_TPS=${R_TPS:-0}
  R_FAILED=${R_FAILED:-?}
  local errs
  # Distinct error lines, client numbers folded, with counts.
  errs=$(grep -Ei 'error|fatal|detail|abort|could not|failed: ' "$out" | grep -v '^number of failed' |
    sed -E 's/client [0-9]+/client N/g; s/127\.0\.0\.1:[0-9]+->/127.0.0.1:PORT->/g' |
    sort | uniq -c | sort -rn | head -8 || true)
  local processed
  processed=$(awk -F': ' '/^number of transactions actually processed/ {split($2, a, "/"); print a[1]; exit}' "$out")
  R_TX=${processed:-0}
  R_TICKS=- R_DROPPED=-
  if [[ -n $pid ]]; then
    if [[ -n $c0 && -n $c1 ]]; then R_TICKS=$((c1 - c0)); else R_TICKS='?'; fi
  fi
  if [[ $target == pgaudit ]]; then
    if [[ -n $d0 && -n $d1 ]]; then R_DROPPED=$((d1 - d0)); else R_DROPPED='?'; fi
  fi
  if [[ $rc == 0 && ($R_FAILED == 0 || $R_FAILED == ?) && -z $errs && ${processed:-0} != 0 ]]; then
    R_STATUS=ok
  else
    if [[ $rc == 124 || $rc == 137 ]]; then R_STATUS=TIMEOUT
    elif grep -q 'Run was aborted' "$out"; then R_STATUS=ABORTED
    elif [[ $rc != 0 ]]; then R_STATUS=FAILED
    elif [[ ${processed:-0} == 0 ]]; then R_STATUS=NO-TX
    else R_STATUS=ERRORS; fi
    local aborted
    aborted=$(grep -c 'aborted in command' "$out" || true)
    FAILURES+=("$tag: $R_STATUS: pgbench exit $rc, ${processed:-no} transactions processed, $aborted of $clients clients aborted, failed transactions $R_FAILED, tps $R_TPS"$'\n'"${errs:-$(tail -5 "$out")}")
    cp "$out" "$RESULTS_DIR/pgbench-$STAMP-$tag.err.log"
  fi
}

# scenario section mode size clients proto [flag]
scenario() {
  local section=$1 mode=$2 size=$3 clients=$4 proto=$5 cflag=${6:-}
  local pname=$proto${cflag:+ $cflag}
  configure_proxies "$mode" "$size"
  local t d_tps='' a_tps='' b_tps='' round order lat
  local -A tps p50 p99 failed status load ticks txs dropped cpu
  # Rounds alternate the order of the targets (ABC, CBA, ...): what runs
  # right after direct Postgres's 1000 fresh backends exit, or after a
  # proxy's warm-up, is not always the same target. tps is the mean over
  # the rounds; the latency percentiles are over all their transactions.
  for ((round = 1; round <= ROUNDS; round++)); do
    order=$TARGETS
    if ((round % 2 == 0)); then order=$(echo "$TARGETS" | tr ' ' '\n' | tac | tr '\n' ' '); fi
    for t in $order; do
      if [[ $t == pgbouncer && $mode == transaction && $proto == prepared ]] && ! pgbouncer_has_prepared; then
        tps[$t]=n/a p50[$t]=n/a p99[$t]=n/a failed[$t]=n/a load[$t]=- ticks[$t]=- dropped[$t]=- status[$t]="n/a: PgBouncer $PGBOUNCER_VERSION has no prepared statements in transaction pools (needs 1.21+)"
        continue
      fi
      run_one "$section" "$mode" "$size" "$clients" "$proto" "$t" "$cflag"
      tps[$t]=$(awk -v a="${tps[$t]:-0}" -v b="$R_TPS" -v n="$ROUNDS" 'BEGIN {printf "%.2f", a + b / n}')
      failed[$t]=$(awk -v a="${failed[$t]:-0}" -v b="$R_FAILED" 'BEGIN {if (b ~ /^[0-9]+$/ && a ~ /^[0-9]+$/) print a + b; else print "?"}')
      load[$t]="${load[$t]:+${load[$t]}/}$R_LOAD"
      # Proxy CPU and transactions summed over the rounds; "?" sticks.
      ticks[$t]=$(sum_or_mark "${ticks[$t]:-}" "$R_TICKS")
      txs[$t]=$((${txs[$t]:-0} + R_TX))
      dropped[$t]=$(sum_or_mark "${dropped[$t]:-}" "$R_DROPPED")
      if [[ ${status[$t]:-ok} == ok ]]; then status[$t]=$R_STATUS; fi
    done
  done
  for t in $TARGETS; do
    # CPU per transaction: the proxy's utime + stime over all rounds of
    # the cell divided by all their transactions, in microseconds.
    cpu[$t]=$(awk -v t="${ticks[$t]}" -v hz="$CLK_TCK" -v n="${txs[$t]:-0}" \
      'BEGIN {if (t ~ /^[0-9]+$/ && n > 0) printf "%.1f", t / hz * 1e6 / n; else if (t == "-" || t == "?") print t; else print "n/a"}')
    [[ ${tps[$t]} == n/a ]] && continue
    tps[$t]=$(awk -v t="${tps[$t]}" 'BEGIN{printf "%.0f", t}')
    lat=$(latency_pcts "$TMP/lat-$section-$mode-c$clients-$proto-$t")
    p50[$t]=${lat% *} p99[$t]=${lat#* }
  done
  d_tps=${tps[direct]:-n/a} b_tps=${tps[pgbouncer]:-n/a}
  for t in $TARGETS; do
    local r1=- r2=- r3=-
    # Ratios on the pgaudit rows.
    if [[ $t == pgaudit* ]]; then
      r1=$(ratio "${tps[$t]}" "$d_tps") r2=$(ratio "${tps[$t]}" "$b_tps") r3=$(ratio "${cpu[$t]:-}" "${cpu[pgbouncer]:-}")
    fi
    local dsize=$size
    if [[ $t == direct ]]; then dsize=-; fi
    ROWS+=("$section|$mode|$dsize|$clients|$pname|$t|${tps[$t]}|${p50[$t]}|${p99[$t]}|${failed[$t]}|${cpu[$t]}|${dropped[$t]}|$r1|$r2|$r3|${load[$t]}|${status[$t]}")
    echo "$section,$mode,$dsize,$clients,$pname,$t,${tps[$t]},${p50[$t]},${p99[$t]},${failed[$t]},${cpu[$t]},${dropped[$t]},\"${status[$t]}\",$r1,$r2,$r3,${load[$t]}" >>"$CSV"
  done
}

# ---------------------------------------------------------------- idle
# idle_section: memory per idle client. Both proxies are restarted (transaction
# mode, pool TX_POOL_SIZE) and warmed up, so that each starts from the same
# state; then, one proxy at a time, bench/idle opens IDLE_CLIENTS connections
# that authenticate and then send nothing. The proxy's VmRSS is read before
# they connect and IDLE_SETTLE seconds after the last one did; the
# difference divided by the connected clients is the KiB per idle client.
# Afterwards every client runs SELECT 1 once (the proxy must still serve
# them all) and they disconnect. Direct Postgres is skipped (a backend per
# client; max_connections is 1200).
IDLE_CSV=$RESULTS_DIR/pgbench-$STAMP-idle.csv
IDLE_ROWS=()
idle_section() {
  local t port pid n=$IDLE_CLIENTS
  local -A kib
  CUR_PROXY_CONF=
  configure_proxies transaction "$TX_POOL_SIZE"
  echo "target,clients,connected,connect_s,rss_before_kib,rss_after_kib,kib_per_client,checked_ok,pgaudit_vs_pgbouncer,status" >"$IDLE_CSV"
  for t in $TARGETS; do
    case $t in
      pgaudit) port=${PA_PORT[$t]} pid=${PA_PID[$t]} ;;
      pgbouncer) port=$PGBOUNCER_PORT pid=$PGBOUNCER_PID ;;
      *) continue ;;
    esac
    kill -0 "$pid" 2>/dev/null || die "$t (pid $pid) is gone before the idle section"
    local out=$TMP/idle-$t.out err=$TMP/idle-$t.err before after i ready='' checked='' st=ok
    sleep "$SETTLE"
    before=$(rss_kib "$pid")
    log "idle: $n clients -> $t (RSS before: $before KiB)"
    "$TMP/idle" -n "$n" -dsn "host=127.0.0.1 port=$port user=postgres dbname=postgres sslmode=disable" >"$out" 2>"$err" &
    IDLE_CLIENT_PID=$!
    for ((i = 0; i < IDLE_TIMEOUT * 5; i++)); do
      ready=$(grep -m1 '^ready ' "$out" || true)
      [[ -n $ready ]] && break
      kill -0 "$IDLE_CLIENT_PID" 2>/dev/null || break
      sleep 0.2
    done
    local connected=0 csecs=- ok=0
    if [[ -n $ready ]]; then
      connected=$(sed -E 's/.*connected=([0-9]+).*/\1/' <<<"$ready")
      csecs=$(sed -E 's/.*seconds=([0-9.]+).*/\1/' <<<"$ready")
      sleep "$IDLE_SETTLE"
      after=$(rss_kib "$pid")
      kill -USR1 "$IDLE_CLIENT_PID" 2>/dev/null || true
      for ((i = 0; i < IDLE_TIMEOUT * 5; i++)); do
        checked=$(grep -m1 '^checked ' "$out" || true)
        [[ -n $checked ]] && break
        kill -0 "$IDLE_CLIENT_PID" 2>/dev/null || break
        sleep 0.2
      done
      [[ -z $checked ]] || ok=$(sed -E 's/.*ok=([0-9]+).*/\1/' <<<"$checked")
    else
      after=$(rss_kib "$pid")
      st=TIMEOUT
    fi
    kill -TERM "$IDLE_CLIENT_PID" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do kill -0 "$IDLE_CLIENT_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$IDLE_CLIENT_PID" 2>/dev/null || true
    wait "$IDLE_CLIENT_PID" 2>/dev/null || true
    IDLE_CLIENT_PID=
    { echo "=== idle $t: $n clients, RSS ${before}..${after} KiB"; cat "$out" "$err"; echo; } >>"$RAW"
    if [[ $st == ok && ($connected != "$n" || $ok != "$n") ]]; then st=FAILED; fi
    if [[ $st != ok ]]; then
      FAILURES+=("idle $t: $st: $connected of $n clients connected, $ok answered SELECT 1 afterwards"$'\n'"$(head -8 "$err")")
    fi
    kib[$t]=$(awk -v a="$after" -v b="$before" -v n="$connected" 'BEGIN {if (n > 0 && a ~ /^[0-9]+$/ && b ~ /^[0-9]+$/) printf "%.2f", (a - b) / n; else print "n/a"}')
    IDLE_ROWS+=("$t|$n|$connected|$csecs|$((before / 1024))|$((${after:-0} / 1024))|${kib[$t]}|$ok|RATIO|$st")
    echo "$t,$n,$connected,$csecs,$before,$after,${kib[$t]},$ok,RATIO,$st" >>"$IDLE_CSV"
    log "  $connected connected in ${csecs}s, RSS $before -> $after KiB: ${kib[$t]} KiB per idle client; $ok answered SELECT 1"
  done
  # The ratio goes on the pgaudit row.
  local r t2
  for i in "${!IDLE_ROWS[@]}"; do
    t2=${IDLE_ROWS[$i]%%|*}
    if [[ $t2 == pgaudit ]]; then
      r=$(ratio "${kib[$t2]:-}" "${kib[pgbouncer]:-}")
      IDLE_ROWS[i]=${IDLE_ROWS[$i]/|RATIO|/|$r|}
      sed -i -E "s|^($t2,.*),RATIO,|\1,$r,|" "$IDLE_CSV"
    else
      IDLE_ROWS[i]=${IDLE_ROWS[$i]/|RATIO|/|-|}
    fi
  done
  sed -i -E "s/,RATIO,/,-,/" "$IDLE_CSV"
  # Later sections get fresh proxies.
  CUR_PROXY_CONF=
}

CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
PGAUDIT_VERSION=$([[ -n $PGAUDIT_BIN ]] && "$PGAUDIT_BIN" version 2>/dev/null || echo none)
HEADER="machine: $(nproc) cores, ${CPU_MODEL:-unknown CPU}, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, $(uname -sr)
versions: PostgreSQL $PG_VERSION, $(pgbench --version), PgBouncer $PGBOUNCER_VERSION ($PGBOUNCER_ORIGIN), pgaudit $PGAUDIT_REV ($PGAUDIT_VERSION; default analysis on, no audit log$NOAUDIT_NOTE)
settings: duration ${DURATION}s (+ ${CONNECT_SLACK_MS} ms per client/job for connecting), scale $SCALE, pgbench -S -n -j $JOBS, transaction pool size $TX_POOL_SIZE, session pool size = clients, $ROUNDS rounds per target in alternating order (tps = mean), warm-up ${WARMUP}s per proxy start, proxy CPU read ${SETTLE}s after each run, huge pages: $HUGE_PAGES_USED"
if [[ " $SECTIONS " == *" idle "* ]]; then
  HEADER+=", idle: $IDLE_CLIENTS clients, RSS read ${IDLE_SETTLE}s after they connected"
fi
log "${HEADER//$'\n'/; }"

for section in $SECTIONS; do
  case $section in
    session)
      for c in $SESSION_CLIENTS; do scenario session session "$c" "$c" simple; done ;;
    transaction)
      for c in $TX_CLIENTS; do
        for proto in $TX_PROTOCOLS; do scenario transaction transaction "$TX_POOL_SIZE" "$c" "$proto"; done
      done ;;
    connect)
      for c in $CONNECT_CLIENTS; do scenario connect transaction "$TX_POOL_SIZE" "$c" simple -C; done ;;
    idle) idle_section ;;
    *) die "unknown section $section" ;;
  esac
done

# ---------------------------------------------------------------- report
{
  echo
  echo "$HEADER"
  echo
  if ((${#ROWS[@]})); then
    for r in "section|mode|pool|clients|protocol|target|tps|p50 ms|p99 ms|failed|proxy CPU us/tx|events dropped|pgaudit/direct|pgaudit/pgbouncer|CPU/tx pgaudit/pgbouncer|load|status" "${ROWS[@]}"; do
      st=${r##*|}
      echo "${r%|*}|${st%%:*}"
    done | column -t -s '|' 2>/dev/null || printf '%s\n' "${ROWS[@]}"
    echo "proxy CPU us/tx: utime + stime of the proxy process (/proc/PID/stat) over the cell's runs / their transactions; events dropped: pgaudit_audit_events_dropped_total over the cell's runs (pgaudit's default queue size)"
    echo
  fi
  if ((${#IDLE_ROWS[@]})); then
    echo "idle clients (transaction pool $TX_POOL_SIZE; KiB per client = (VmRSS after - VmRSS before) / connected):"
    for r in "target|clients|connected|connect s|RSS before MiB|RSS after MiB|KiB per client|answered SELECT 1|pgaudit/pgbouncer|status" "${IDLE_ROWS[@]}"; do
      echo "$r"
    done | column -t -s '|' 2>/dev/null || printf '%s\n' "${IDLE_ROWS[@]}"
    echo
  fi
  if ((${#FAILURES[@]})); then
    echo "FAILURES (full pgbench output in $RESULTS_DIR/pgbench-$STAMP-*.err.log):"
    printf '  %s\n' "${FAILURES[@]}"
  else
    echo "no failed runs"
  fi
  for r in "${ROWS[@]}"; do
    IFS='|' read -r _ mode _ _ proto target _ <<<"$r"
    st=${r##*|}
    if [[ $st == n/a* ]]; then echo "note: $target $mode/$proto: ${st#n/a: }"; fi
  done | sort -u
  echo
  echo "csv: $CSV"
  if ((${#IDLE_ROWS[@]})); then echo "idle csv: $IDLE_CSV"; fi
  echo "raw pgbench output: $RAW"
} | tee "$RESULTS_DIR/pgbench-$STAMP.txt"
for palog in "$TMP"/pgaudit.log "$TMP"/pgaudit-noaudit.log; do
  [[ -s $palog ]] || continue
  t=$(basename "$palog" .log)
  cp "$palog" "$RESULTS_DIR/pgbench-$STAMP-$t.log"
  log "$t logged $(wc -l <"$palog") lines at warn and above (kept in $RESULTS_DIR/pgbench-$STAMP-$t.log); by level/message/error:"
  sed -E 's/127\.0\.0\.1:[0-9]+->/127.0.0.1:PORT->/g' "$palog" |
    awk '{ lvl = msg = err = ""
           if (match($0, /"level":"[^"]*"/)) lvl = substr($0, RSTART + 9, RLENGTH - 10)
           if (match($0, /"message":"[^"]*"/)) msg = substr($0, RSTART + 11, RLENGTH - 12)
           if (match($0, /"error":"([^"\\]|\\.)*"/)) err = substr($0, RSTART + 9, RLENGTH - 10)
           print lvl " | " msg " | " err }' | sort | uniq -c | sort -rn | head -15 >&2
done
if [[ -s $TMP/pgbouncer.log ]] && grep -qE ' (WARNING|ERROR|FATAL) ' "$TMP/pgbouncer.log"; then
  cp "$TMP/pgbouncer.log" "$RESULTS_DIR/pgbench-$STAMP-pgbouncer.log"
  log "pgbouncer logged warnings/errors (kept in $RESULTS_DIR/pgbench-$STAMP-pgbouncer.log):"
  grep -E ' (WARNING|ERROR|FATAL) ' "$TMP/pgbouncer.log" | sed -E 's/^.* (WARNING|ERROR|FATAL) /\1 /; s/[0-9]+/N/g' |
    sort | uniq -c | sort -rn | head -10 >&2
fi
if ((${#FAILURES[@]})); then exit 3; fi
