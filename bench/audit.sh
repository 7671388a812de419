#!/usr/bin/env bash
# bench/audit.sh: the cost of pgaudit's audit pipeline. The same proxy
# configuration (transaction pool of 20, 100 pgbench -S clients) runs with
# auditing on (every statement fingerprinted, analysed and written to an audit
# log) and off (--no-audit: the proxy relays without emitting events), runs
# interleaved on one throwaway cluster. Reports tps, the on/off tps ratio and
# the proxy's CPU time per 1000 statements in each mode.
#
# Usage (as root; see bench/README.md):
#   bench/audit.sh                    # 5 s warm-ups, then 2 rounds x 2 protocols x 3 modes x 20 s (about 6 minutes)
#   DURATION=60 ROUNDS=3 bench/audit.sh
#
# Environment (defaults in brackets):
#   DURATION     seconds per pgbench run                                [20]
#   ROUNDS       how often each (protocol, mode) pair runs, interleaved   [2]
#   PROTOCOLS    pgbench -M values                                      [prepared simple]
#   MODES        on: --audit-log FILE --audit-sample all;
#                off: --no-audit;
#                none: --audit-sample none, no audit log (still fingerprints
#                and keeps statistics; only the statement records are off);
#                otlp: as on, plus --otlp-logs-endpoint to a local
#                OpenTelemetry Collector (internal/otelcol: otlp receiver,
#                file exporter) on the same machine      [on none off]
#                The summary compares on with none (the audit log file's
#                cost: issue 15's target, >= 0.95) or, without none, with
#                off; none with off (the analysis's cost); otlp with on.
#   CLIENTS      pgbench -c                                             [100]
#   JOBS         pgbench -j                                             [2]
#   POOL_SIZE    pgaudit --pool-size (transaction mode)                 [20]
#   SCALE        pgbench -i scale factor                                [10]
#   RUN_TIMEOUT  seconds a pgbench run may overrun -T before it is killed [60]
#   WARMUP       seconds of unmeasured pgbench per mode and protocol before
#                round 1 (warms Postgres's cache, the pools, pgaudit's caches) [5]
#   SETTLE       seconds to wait after a run before reading the proxy's CPU
#                time (the audit pipeline drains its queue asynchronously) [1]
#   PGBIN        PostgreSQL server binaries                             [/usr/lib/postgresql/15/bin]
#   PGAUDIT_BIN  use this pgaudit binary instead of building one        [build from repo]
#   OTELCOL_BIN  the test collector for mode otlp         [build internal/otelcol]
#   RESULTS_DIR  where the results go                                   [bench/results]
#   KEEP_TMP     1 = keep the temp dir (cluster, logs, audit log)       [0]
#
# Exit status: 0 all runs clean; 3 some pgbench run had errors (results still
# written); 1 setup failed (temp dir kept).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)

DURATION=${DURATION:-20}
ROUNDS=${ROUNDS:-2}
PROTOCOLS=${PROTOCOLS:-"prepared simple"}
MODES=${MODES:-"on none off"}
CLIENTS=${CLIENTS:-100}
JOBS=${JOBS:-2}
POOL_SIZE=${POOL_SIZE:-20}
SCALE=${SCALE:-10}
RUN_TIMEOUT=${RUN_TIMEOUT:-60}
SETTLE=${SETTLE:-1}
WARMUP=${WARMUP:-5}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PGAUDIT_BIN=${PGAUDIT_BIN:-}
OTELCOL_BIN=${OTELCOL_BIN:-}
RESULTS_DIR=${RESULTS_DIR:-$REPO_ROOT/bench/results}
KEEP_TMP=${KEEP_TMP:-0}

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $(id -u) == 0 ]] || die "run as root (Postgres is started as the postgres user via runuser)"
id postgres >/dev/null 2>&1 || die "no postgres user"
[[ -x /usr/bin/time ]] || die "/usr/bin/time not found (apt-get install time)"
[[ -x $PGBIN/initdb && -x $PGBIN/pg_ctl ]] || die "PostgreSQL server binaries not found in $PGBIN"
command -v pgbench >/dev/null || die "pgbench not on PATH"
command -v psql >/dev/null || die "psql not on PATH"
command -v curl >/dev/null || die "curl not on PATH (reads pgaudit's /metrics)"
for m in $MODES; do
  case $m in on | off | none | otlp) ;; *) die "unknown mode $m (on, off, none, otlp)" ;; esac
done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

# ---------------------------------------------------------------- cleanup
TMP=$(mktemp -d /tmp/pgaudit-audit-bench.XXXXXX)
chown postgres: "$TMP"
chmod 755 "$TMP"
PGDATA_DIR=$TMP/data
PG_STARTED=0
declare -A PID PORT ADMIN
OTELCOL_PID=

stop_pgaudit() { # mode
  local pid=${PID[$1]:-}
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  PID[$1]=
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  for m in "${!PID[@]}"; do stop_pgaudit "$m"; done
  if [[ -n $OTELCOL_PID ]]; then
    kill "$OTELCOL_PID" 2>/dev/null
    wait "$OTELCOL_PID" 2>/dev/null
  fi
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

# ---------------------------------------------------------------- pgaudit
PGAUDIT_REV=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$REPO_ROOT" status --porcelain 2>/dev/null | head -1) ]]; then
  PGAUDIT_REV="$PGAUDIT_REV-dirty"
fi
if [[ -n $PGAUDIT_BIN ]]; then
  [[ -x $PGAUDIT_BIN ]] || die "PGAUDIT_BIN=$PGAUDIT_BIN is not executable"
  PGAUDIT_REV="$PGAUDIT_REV (prebuilt $PGAUDIT_BIN)"
else
  log "building pgaudit ($PGAUDIT_REV)"
  (cd "$REPO_ROOT" && go build -ldflags "-X main.version=$PGAUDIT_REV" -o "$TMP/pgaudit" ./cmd/pgaudit) ||
    die "go build ./cmd/pgaudit failed (set PGAUDIT_BIN to a prebuilt binary)"
  PGAUDIT_BIN=$TMP/pgaudit
fi
# "off" needs --no-audit; older builds do not have it.
HAS_NO_AUDIT=0
if "$PGAUDIT_BIN" proxy --help 2>&1 | grep -q -- '--no-audit'; then HAS_NO_AUDIT=1; fi
OFF_NOTE="off = --no-audit (the proxy relays without emitting audit events: no fingerprints, statistics, findings or EXPLAIN)"
if [[ $HAS_NO_AUDIT == 0 && " $MODES " == *" off "* ]]; then
  OFF_NOTE="off = --audit-sample none without --audit-log: this pgaudit has no --no-audit flag, so the pipeline STILL FINGERPRINTS and keeps statistics in this mode; the ratio understates the audit cost"
fi

# ---------------------------------------------------------------- postgres
start_cluster 200 "pgaudit audit bench"

# ---------------------------------------------------------------- collector
# Mode otlp exports the audit records to a local OpenTelemetry Collector
# (otlp receiver, file exporter to the temp dir). It runs on the same
# cores as everything else, so its CPU is part of the measured cost.
OTLP_ENDPOINT=
if [[ " $MODES " == *" otlp "* ]]; then
  if [[ -z $OTELCOL_BIN ]]; then
    log "building the OpenTelemetry Collector (internal/otelcol; minutes on a cold Go cache)"
    (cd "$REPO_ROOT/internal/otelcol" && GOFLAGS="-mod=mod -buildvcs=false" GOWORK=off CGO_ENABLED=0 go build -trimpath -o "$TMP/otelcol" .) ||
      die "building internal/otelcol failed (set OTELCOL_BIN)"
    OTELCOL_BIN=$TMP/otelcol
  fi
  OTLP_PORT=$(free_port)
  cat >"$TMP/otelcol.yaml" <<YAML
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:$OTLP_PORT
exporters:
  file:
    path: $TMP/otlp-logs.jsonl
service:
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
  pipelines:
    logs:
      receivers: [otlp]
      exporters: [file]
YAML
  "$OTELCOL_BIN" --config="$TMP/otelcol.yaml" >>"$TMP/otelcol.log" 2>&1 &
  OTELCOL_PID=$!
  wait_port "$OTLP_PORT" 30 || { tail -20 "$TMP/otelcol.log" >&2; die "the collector did not start"; }
  OTLP_ENDPOINT=http://127.0.0.1:$OTLP_PORT
  log "collector: pid $OTELCOL_PID, $OTLP_ENDPOINT"
fi

# ---------------------------------------------------------------- proxies
AUDIT_LOG=$TMP/audit.jsonl
mode_flags() { # mode
  case $1 in
    on) echo "--audit-log $AUDIT_LOG --audit-sample all" ;;
    otlp) echo "--audit-log $TMP/audit-otlp.jsonl --audit-sample all --otlp-logs-endpoint $OTLP_ENDPOINT" ;;
    off) if [[ $HAS_NO_AUDIT == 1 ]]; then echo "--no-audit"; else echo "--audit-sample none"; fi ;;
    none) echo "--audit-sample none" ;;
  esac
}

# One proxy per mode, started once and kept for the whole run (so the
# audit pipeline's state builds up as in production); only the proxy under
# test gets traffic, the other idles.
start_pgaudit() { # mode
  local m=$1
  PORT[$m]=$(free_port)
  ADMIN[$m]=$(free_port)
  # shellcheck disable=SC2046
  "$PGAUDIT_BIN" proxy --listen "127.0.0.1:${PORT[$m]}" --admin-listen "127.0.0.1:${ADMIN[$m]}" \
    --upstream "postgres://postgres@127.0.0.1:$PGPORT/postgres?sslmode=disable" \
    --pool-mode transaction --pool-size "$POOL_SIZE" --log-level warn $(mode_flags "$m") \
    >>"$TMP/pgaudit-$m.log" 2>&1 &
  PID[$m]=$!
  wait_port "${PORT[$m]}" 20 || { tail -20 "$TMP/pgaudit-$m.log" >&2; die "pgaudit ($m) did not start"; }
  log "pgaudit $m: pid ${PID[$m]}, 127.0.0.1:${PORT[$m]}, admin ${ADMIN[$m]}: $(mode_flags "$m")"
}
for m in $MODES; do start_pgaudit "$m"; done

# cpu_ticks, wait_port and metric_at are in lib.sh.
metric() { metric_at "${ADMIN[$1]}" "$2"; } # mode name
# Busy CPU ticks of the whole machine (user, nice, system, irq, softirq, steal).
sys_busy() { awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }
# "pid ticks" lines for every child of the postmaster (backends, auxiliaries).
pg_ticks() {
  local pm files=() c
  pm=$(head -1 "$PGDATA_DIR/postmaster.pid")
  for c in $(ps --ppid "$pm" -o pid= 2>/dev/null); do [[ -r /proc/$c/stat ]] && files+=("/proc/$c/stat"); done
  ((${#files[@]})) || return 0
  # One awk for all of them; a backend may exit in between (awk skips it).
  awk '{s = $0; sub(/.*\) /, "", s); split(s, f, " "); print FILENAME, f[12] + f[13]}' "${files[@]}" 2>/dev/null || true
}
# Ticks the cluster used between two pg_ticks snapshots (files).
pg_delta() { awk 'NR == FNR {b[$1] = $2; next} {d = $2 - (($1 in b) ? b[$1] : 0); if (d > 0) s += d} END {print s + 0}' "$1" "$2"; }
audit_lines() { if [[ -f $AUDIT_LOG ]]; then wc -l <"$AUDIT_LOG"; else echo 0; fi; }

# ---------------------------------------------------------------- running
STAMP=$(date +%Y%m%d-%H%M%S)
mkdir -p "$RESULTS_DIR"
CSV=$RESULTS_DIR/audit-$STAMP.csv
RAW=$RESULTS_DIR/audit-$STAMP-raw.log
echo "round,protocol,mode,tps,transactions,failed,proxy_cpu_s,proxy_cpu_pct,cpu_ms_per_1k_stmts,audit_records,events_processed,events_dropped,load1_before,other_cpu_pct,status" >"$CSV"
ROWS=()
FAILURES=()
declare -A SUM_TPS SUM_TX SUM_TICKS N_RUNS

run_one() { # round proto mode
  local round=$1 proto=$2 mode=$3 pid=${PID[$3]}
  local out=$TMP/out-r$1-$2-$3.txt
  local args=(-S -n -c "$CLIENTS" -j "$JOBS" -T "$DURATION" -M "$proto" -h 127.0.0.1 -p "${PORT[$mode]}")
  kill -0 "$pid" 2>/dev/null || die "pgaudit ($mode) is gone: $(tail -5 "$TMP/pgaudit-$mode.log")"
  local load t0 t1 a0 a1 p0 p1 d0 d1 rc=0 w0 w1
  load=$(cut -d' ' -f1 /proc/loadavg)
  log "round $round $proto audit=$mode (load $load)"
  p0=$(metric "$mode" pgaudit_audit_events_processed_total)
  d0=$(metric "$mode" pgaudit_audit_events_dropped_total)
  a0=$(audit_lines)
  local idle_pids=() m2 i0=0 i1=0 s0 s1
  for m2 in "${!PID[@]}"; do [[ $m2 != "$mode" && -n ${PID[$m2]} ]] && idle_pids+=("${PID[$m2]}"); done
  for m2 in "${idle_pids[@]}"; do i0=$((i0 + $(cpu_ticks "$m2" || echo 0))); done
  pg_ticks >"$TMP/pg0"
  s0=$(sys_busy)
  t0=$(cpu_ticks "$pid")
  w0=$(date +%s.%N)
  timeout -k 10 $((DURATION + RUN_TIMEOUT)) /usr/bin/time -f '%U %S' -o "$TMP/pgbench-time" pgbench "${args[@]}" >"$out" 2>&1 || rc=$?
  w1=$(date +%s.%N)
  # The audit pipeline is asynchronous: let it finish the run's events
  # (records written, statistics updated) before reading the CPU time.
  sleep "$SETTLE"
  t1=$(cpu_ticks "$pid" || echo "$t0")
  s1=$(sys_busy)
  pg_ticks >"$TMP/pg1"
  for m2 in "${idle_pids[@]}"; do i1=$((i1 + $(cpu_ticks "$m2" || echo 0))); done
  a1=$(audit_lines)
  p1=$(metric "$mode" pgaudit_audit_events_processed_total)
  d1=$(metric "$mode" pgaudit_audit_events_dropped_total)
  { echo "=== round $round $proto audit=$mode (load before: $load): pgbench ${args[*]}"; cat "$out"; echo; } >>"$RAW"
  local tps tx failed
  tps=$(awk '/^tps = / {printf "%.0f", $3; exit}' "$out")
  tx=$(awk -F': ' '/^number of transactions actually processed/ {split($2, a, "/"); print a[1]; exit}' "$out")
  failed=$(awk -F'[: ]+' '/^number of failed transactions/ {print $5; exit}' "$out")
  tps=${tps:-0} tx=${tx:-0} failed=${failed:-?}
  local ticks=$((t1 - t0))
  # CPU the machine spent on anything but this benchmark (pgbench, the
  # cluster, the proxies) during the run, as a share of all cores: other
  # work competing with the run.
  local pgb_s pg_t other
  pgb_s=$(awk '{print $1 + $2; exit}' "$TMP/pgbench-time" 2>/dev/null || echo 0)
  pg_t=$(pg_delta "$TMP/pg0" "$TMP/pg1")
  other=$(awk -v sb=$((s1 - s0)) -v p="$ticks" -v i=$((i1 - i0)) -v pg="$pg_t" -v b="${pgb_s:-0}" -v hz="$CLK_TCK" -v n="$(nproc)" -v a="$w0" -v w="$w1" -v st="$SETTLE" \
    'BEGIN {o = (sb - p - i - pg) / hz - b; if (o < 0) o = 0; printf "%.0f", 100 * o / (n * (w - a + st))}')
  local cpu_s cpu_pct per1k
  cpu_s=$(awk -v t="$ticks" -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", t / hz}')
  cpu_pct=$(awk -v t="$ticks" -v hz="$CLK_TCK" -v a="$w0" -v b="$w1" -v s="$SETTLE" 'BEGIN {printf "%.0f", 100 * t / hz / (b - a + s)}')
  per1k=$(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="$tx" 'BEGIN {if (n > 0) printf "%.3f", t / hz * 1000 / (n / 1000); else print "n/a"}')
  local recs=- proc=- drop=-
  if [[ $mode == on ]]; then recs=$((a1 - a0)); fi
  if [[ -n $p0 && -n $p1 ]]; then proc=$((p1 - p0)); fi
  if [[ -n $d0 && -n $d1 ]]; then drop=$((d1 - d0)); fi
  local status=ok errs
  errs=$(grep -Ei 'error|fatal|abort|could not' "$out" | grep -v '^number of failed' | sed -E 's/client [0-9]+/client N/g' | sort | uniq -c | sort -rn | head -5 || true)
  if [[ $rc != 0 || ($failed != 0 && $failed != ?) || -n $errs || $tx == 0 ]]; then
    status="FAILED"
    FAILURES+=("round $round $proto audit=$mode: pgbench exit $rc, $tx transactions, failed $failed"$'\n'"${errs:-$(tail -5 "$out")}")
    cp "$out" "$RESULTS_DIR/audit-$STAMP-r$round-$proto-$mode.err.log"
  else
    local k=$proto/$mode
    SUM_TPS[$k]=$((${SUM_TPS[$k]:-0} + tps))
    SUM_TX[$k]=$((${SUM_TX[$k]:-0} + tx))
    SUM_TICKS[$k]=$((${SUM_TICKS[$k]:-0} + ticks))
    N_RUNS[$k]=$((${N_RUNS[$k]:-0} + 1))
  fi
  ROWS+=("$round|$proto|$mode|$tps|$tx|$failed|$cpu_s|$cpu_pct%|$per1k|$recs|$proc|$drop|$load|$other%|$status")
  echo "$round,$proto,$mode,$tps,$tx,$failed,$cpu_s,$cpu_pct,$per1k,$recs,$proc,$drop,$load,$other,$status" >>"$CSV"
  log "  tps $tps, $tx statements, proxy CPU ${cpu_s}s (${cpu_pct}% of a core), $per1k ms per 1k statements, audit records $recs, events processed $proc dropped $drop"
  if [[ $mode == otlp ]]; then
    log "  OTLP log records so far: exported $(metric otlp pgaudit_otlp_log_records_exported_total), failed $(metric otlp pgaudit_otlp_log_records_failed_total), dropped $(metric otlp pgaudit_otlp_log_records_dropped_total)"
  fi
}

CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
HEADER="machine: $(nproc) cores, ${CPU_MODEL:-unknown CPU}, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, $(uname -sr)
versions: PostgreSQL $PG_VERSION, $(pgbench --version), pgaudit $PGAUDIT_REV
settings: pgbench -S -n -c $CLIENTS -j $JOBS -T $DURATION, scale $SCALE, pgaudit transaction pool $POOL_SIZE, $ROUNDS rounds interleaved after ${WARMUP}s warm-up per mode and protocol, huge pages: $HUGE_PAGES_USED
modes: on = --audit-log FILE --audit-sample all (every statement fingerprinted, analysed, written); $OFF_NOTE"
if [[ " $MODES " == *" none "* ]]; then
  HEADER+="; none = --audit-sample none, no audit log (fingerprints and statistics, no records)"
fi
if [[ " $MODES " == *" otlp "* ]]; then
  HEADER+="; otlp = on plus --otlp-logs-endpoint to a collector (otlp receiver, file exporter) on the same machine"
fi
log "${HEADER//$'\n'/; }"

if ((WARMUP > 0)); then
  for m in $MODES; do
    for proto in $PROTOCOLS; do
      log "warm-up: $proto audit=$m, ${WARMUP}s"
      timeout -k 10 $((WARMUP + RUN_TIMEOUT)) pgbench -S -n -c "$CLIENTS" -j "$JOBS" -T "$WARMUP" -M "$proto" -h 127.0.0.1 -p "${PORT[$m]}" >>"$TMP/warmup.txt" 2>&1 ||
        log "  warm-up run failed: $(tail -3 "$TMP/warmup.txt")"
    done
  done
fi

for round in $(seq "$ROUNDS"); do
  for proto in $PROTOCOLS; do
    # Alternate which mode goes first, so drift hits both alike.
    ms=$MODES
    if ((round % 2 == 0)); then ms=$(tr ' ' '\n' <<<"$MODES" | tac | tr '\n' ' '); fi
    for m in $ms; do run_one "$round" "$proto" "$m"; done
  done
done

# ---------------------------------------------------------------- report
mean() { awk -v s="${1:-0}" -v n="${2:-0}" 'BEGIN {if (n > 0) printf "%.0f", s / n; else print "n/a"}'; }
{
  echo
  echo "$HEADER"
  echo
  for r in "round|protocol|audit|tps|statements|failed|proxy CPU s|proxy CPU|CPU ms/1k stmts|audit records|events processed|dropped|load before|other CPU|status" "${ROWS[@]}"; do
    echo "$r"
  done | column -t -s '|' 2>/dev/null || printf '%s\n' "${ROWS[@]}"
  echo
  echo "summary (clean runs only; CPU ms per 1k statements = proxy utime+stime / statements):"
  for r in "protocol|mode|runs|mean tps|CPU ms/1k stmts|tps ratio to base (on: target >= 0.95)|base|CPU ms/1k stmts (mode - base)"; do echo "$r"; done >"$TMP/summary.txt"
  for proto in $PROTOCOLS; do
    for m in $MODES; do
      k=$proto/$m
      t=$(mean "${SUM_TPS[$k]:-}" "${N_RUNS[$k]:-}")
      c=$(awk -v t="${SUM_TICKS[$k]:-0}" -v hz="$CLK_TCK" -v n="${SUM_TX[$k]:-0}" 'BEGIN {if (n > 0) printf "%.3f", t / hz * 1000 / (n / 1000); else print "n/a"}')
      r=- d=-
      # on is compared with none (what writing the audit log file costs,
      # issue 15's target) or, when none is not run, with off; none with
      # off (what the analysis costs); otlp with on (the export's own cost).
      base=
      if [[ $m == on && " $MODES " == *" none "* ]]; then
        base=none
      elif [[ $m == on && " $MODES " == *" off "* ]]; then
        base=off
      fi
      if [[ $m == none && " $MODES " == *" off "* ]]; then base=off; fi
      if [[ $m == otlp && " $MODES " == *" on "* ]]; then base=on; fi
      if [[ -n $base ]]; then
        toff=$(mean "${SUM_TPS[$proto/$base]:-}" "${N_RUNS[$proto/$base]:-}")
        coff=$(awk -v t="${SUM_TICKS[$proto/$base]:-0}" -v hz="$CLK_TCK" -v n="${SUM_TX[$proto/$base]:-0}" 'BEGIN {if (n > 0) printf "%.3f", t / hz * 1000 / (n / 1000); else print "n/a"}')
        r=$(awk -v m="$m" -v a="$t" -v b="$toff" 'BEGIN {if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.3f %s", a / b, (m == "none" ? "" : (a / b >= 0.95 ? "MET" : "MISSED")); else print "n/a"}')
        d=$(awk -v a="$c" -v b="$coff" 'BEGIN {if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/) printf "%.3f (%+.0f%%)", a - b, (b > 0 ? 100 * (a - b) / b : 0); else print "n/a"}')
      fi
      echo "$proto|$m|${N_RUNS[$k]:-0}|$t|$c|$r|${base:--}|$d" >>"$TMP/summary.txt"
    done
  done
  column -t -s '|' "$TMP/summary.txt" 2>/dev/null || cat "$TMP/summary.txt"
  echo
  if ((${#FAILURES[@]})); then
    echo "FAILURES (full pgbench output in $RESULTS_DIR/audit-$STAMP-*.err.log):"
    printf '  %s\n' "${FAILURES[@]}"
  else
    echo "no failed runs"
  fi
  echo "load before: the 1-minute load average before each run. It includes the benchmark itself (20 busy pool backends, pgbench, the proxy keep it around 7-12 once runs follow each other), so it rises over the first runs even on an idle machine."
  echo "other CPU: share of all $(nproc) cores used during the run by anything but this benchmark (machine busy time from /proc/stat minus pgbench, the cluster's processes and the proxies). About 2-4% is the machine's own background; well above that other work competed with the run: compare such rows with care."
  echo
  echo "csv: $CSV"
  echo "raw pgbench output: $RAW"
} | tee "$RESULTS_DIR/audit-$STAMP.txt"
for m in $MODES; do
  if [[ -s $TMP/pgaudit-$m.log ]]; then
    cp "$TMP/pgaudit-$m.log" "$RESULTS_DIR/audit-$STAMP-pgaudit-$m.log"
    log "pgaudit ($m) logged $(wc -l <"$TMP/pgaudit-$m.log") lines at warn and above (kept in $RESULTS_DIR/audit-$STAMP-pgaudit-$m.log):"
    sed -E 's/"time":"[^"]*",?//; s/127\.0\.0\.1:[0-9]+/127.0.0.1:PORT/g' "$TMP/pgaudit-$m.log" | sort | uniq -c | sort -rn | head -10 >&2
  fi
done
if [[ -f $AUDIT_LOG ]]; then
  log "audit log: $(wc -l <"$AUDIT_LOG") records, $(du -h "$AUDIT_LOG" | cut -f1); record kinds:"
  grep -o '"record":"[^"]*"' "$AUDIT_LOG" | sort | uniq -c | sort -rn | head -10 >&2 || true
fi
if ((${#FAILURES[@]})); then exit 3; fi
