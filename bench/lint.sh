#!/usr/bin/env bash
# bench/lint.sh: `pgaudit lint` throughput and peak memory against pgBadger,
# on the same synthetic PostgreSQL 15 csvlog, in the same run.
#
# Usage (as root, for apt-get; see bench/README.md):
#   bench/lint.sh                    # 1 GiB csvlog (about 9 minutes on 2 cores, mostly pgBadger)
#   SIZE_MB=256 bench/lint.sh        # smaller file
#
# Environment (defaults in brackets):
#   SIZE_MB          size of the generated csvlog in MiB                 [1024]
#   SEED             generator seed (the file is a function of the knobs) [1]
#   GEN_SESSIONS     concurrent client sessions in the generated log      [80]
#   GEN_START        time of the first log line                           [2025-03-04T08:00:00Z]
#   VALIDATE_MB      size of the small file the formats are checked on    [4]
#   PGBADGER_JOBS    pgBadger -j values to run, 1 = its default           ["1 2"]
#   PGAUDIT_BIN      use this pgaudit binary instead of building one      [build from repo]
#   WORK_DIR         where the big file is written                        [a temp dir under /tmp]
#   RESULTS_DIR      where the results go                                 [bench/results]
#   KEEP_LOG         1 = keep the generated csvlog                        [0]
#   KEEP_TMP         1 = keep the temp dir (outputs, reports)             [0]
#
# Exit status: 0 every run finished (pgaudit lint exit 0 or 1: 1 only means
# findings); 3 a run failed (results still written); 1 setup or validation
# failed.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)

SIZE_MB=${SIZE_MB:-1024}
SEED=${SEED:-1}
GEN_SESSIONS=${GEN_SESSIONS:-80}
GEN_START=${GEN_START:-2025-03-04T08:00:00Z}
VALIDATE_MB=${VALIDATE_MB:-4}
PGBADGER_JOBS=${PGBADGER_JOBS:-"1 2"}
PGAUDIT_BIN=${PGAUDIT_BIN:-}
RESULTS_DIR=${RESULTS_DIR:-$REPO_ROOT/bench/results}
KEEP_LOG=${KEEP_LOG:-0}
KEEP_TMP=${KEEP_TMP:-0}

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v go >/dev/null || die "go not on PATH"
command -v python3 >/dev/null || die "python3 not on PATH (reads pgaudit lint's JSON)"

# ---------------------------------------------------------------- cleanup
TMP=$(mktemp -d /tmp/pgaudit-lint-bench.XXXXXX)
WORK_DIR=${WORK_DIR:-$TMP}
mkdir -p "$WORK_DIR"
BIG=$WORK_DIR/gen-${SIZE_MB}MB-seed$SEED.csv

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if [[ $KEEP_LOG != 1 ]]; then rm -f "$BIG"; fi
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

# ---------------------------------------------------------------- tools
apt_install() { # package...
  [[ $(id -u) == 0 ]] || die "$* missing and not root: install it ($*) or run as root"
  log "installing $*"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q "$@" >"$TMP/apt.log" 2>&1; then
    apt-get update -q >>"$TMP/apt.log" 2>&1 || true
    apt-get install -y -q "$@" >>"$TMP/apt.log" 2>&1 || { cat "$TMP/apt.log" >&2; die "could not install $*"; }
  fi
}
command -v pgbadger >/dev/null || apt_install pgbadger
[[ -x /usr/bin/time ]] || apt_install time
PGBADGER_VERSION=$(pgbadger --version 2>/dev/null | awk '{print $NF; exit}')

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

# gen FILE SIZE_MB: the generator's summary goes to FILE.summary.
gen() {
  (cd "$REPO_ROOT" && go run ./bench/gen -size-mb "$2" -seed "$SEED" -sessions "$GEN_SESSIONS" -start "$GEN_START" -o "$1") \
    2>"$1.summary" || { cat "$1.summary" >&2; die "bench/gen failed"; }
}
# summary_val FILE KEY
summary_val() { tr ' ' '\n' <"$1.summary" | awk -F= -v k="$2" '$1 == k {print $2; exit}'; }
# lint_json FILE FIELD: from pgaudit lint --output json: statements,
# malformed, findings (by rule) or summary (the summary object on one line).
lint_json() {
  python3 - "$1" "$2" <<'PY' 2>/dev/null || true
import collections, json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception:
    sys.exit(0)
s = d.get("summary", {})
f = sys.argv[2]
if f == "statements":
    print(s.get("statements", ""))
elif f == "malformed":
    print(s.get("lines_malformed", ""))
elif f == "findings":
    c = collections.Counter(x.get("rule", "?") for x in d.get("findings") or [])
    print(" ".join("%s=%d" % kv for kv in sorted(c.items())))
elif f == "summary":
    print(json.dumps(s, separators=(",", ":")))
PY
}
# pgBadger's last progress line: "..., queries: N, events: M".
pgbadger_queries() { tr '\r' '\n' <"$1" | grep -o 'queries: [0-9]*' | tail -1 | grep -o '[0-9]*' || true; }

# ---------------------------------------------------------------- validate
SMALL=$TMP/validate.csv
log "validating the generator's format on a ${VALIDATE_MB} MiB file"
gen "$SMALL" "$VALIDATE_MB"
exp_stmts=$(summary_val "$SMALL" expected_lint_statements)
exp_queries=$(summary_val "$SMALL" statements)
rc=0
"$PGAUDIT_BIN" lint --format csvlog --output json "$SMALL" >"$TMP/validate-lint.json" 2>"$TMP/validate-lint.err" || rc=$?
[[ $rc == 0 || $rc == 1 ]] || { cat "$TMP/validate-lint.err" >&2; die "pgaudit lint exited $rc on the validation file"; }
v_stmts=$(lint_json "$TMP/validate-lint.json" statements)
v_malformed=$(lint_json "$TMP/validate-lint.json" malformed)
v_findings=$(lint_json "$TMP/validate-lint.json" findings)
log "  pgaudit lint: $v_stmts statements (generator: $exp_stmts = executed statements + failed statements), $v_malformed malformed lines, findings: ${v_findings:-none}"
[[ ${v_stmts:-0} -gt 0 ]] || die "pgaudit lint read no statement from the generated csvlog"
[[ ${v_malformed:-1} == 0 ]] || die "pgaudit lint found malformed lines in the generated csvlog: $(head -c 2000 "$TMP/validate-lint.json")"
VALIDATION="validation (${VALIDATE_MB} MiB): pgaudit lint read $v_stmts statements of $exp_stmts generated, $v_malformed malformed, findings: ${v_findings:-none}"
if [[ $v_stmts != "$exp_stmts" ]]; then
  log "  WARNING: pgaudit lint read $v_stmts statements, the generator wrote $exp_stmts"
  VALIDATION+=" (MISMATCH)"
fi
pgbadger -f csv -o "$TMP/validate-pgbadger.txt" --extension text "$SMALL" >"$TMP/validate-pgbadger.out" 2>&1 ||
  { tail -20 "$TMP/validate-pgbadger.out" >&2; die "pgbadger failed on the validation file"; }
v_q=$(awk -F': ' '/^Number of queries:/ {gsub(/,/, "", $2); print $2; exit}' "$TMP/validate-pgbadger.txt")
v_uq=$(awk -F': ' '/^Number of unique normalized queries:/ {gsub(/,/, "", $2); print $2; exit}' "$TMP/validate-pgbadger.txt")
v_ev=$(awk -F': ' '/^Number of events:/ {gsub(/,/, "", $2); print $2; exit}' "$TMP/validate-pgbadger.txt")
log "  pgBadger: $v_q queries ($v_uq normalized shapes), $v_ev events (generator: $exp_queries successful statements)"
[[ ${v_q:-0} -gt 0 ]] || die "pgBadger reported no query from the generated csvlog"
VALIDATION+="; pgBadger reported $v_q queries of $exp_queries successful statements, $v_uq normalized shapes, $v_ev events"
if [[ $v_q != "$exp_queries" ]]; then VALIDATION+=" (MISMATCH)"; fi
rm -f "$SMALL"

# ---------------------------------------------------------------- generate
log "generating ${SIZE_MB} MiB csvlog: go run ./bench/gen -size-mb $SIZE_MB -seed $SEED -sessions $GEN_SESSIONS -start $GEN_START"
t0=$SECONDS
gen "$BIG" "$SIZE_MB"
BYTES=$(stat -c %s "$BIG")
MB=$(awk -v b="$BYTES" 'BEGIN {printf "%.1f", b / 1048576}')
GEN_SUMMARY=$(grep "^gen: bytes=" "$BIG.summary" | sed "s/^gen: //")
log "  $MB MiB in $((SECONDS - t0)) s: $GEN_SUMMARY"
# Every tool reads the file from the page cache (RAM permitting): read it once first.
cat "$BIG" >/dev/null

# ---------------------------------------------------------------- runs
STAMP=$(date +%Y%m%d-%H%M%S)
mkdir -p "$RESULTS_DIR"
CSV=$RESULTS_DIR/lint-$STAMP.csv
echo "tool,command,exit,wall_s,user_s,sys_s,cpu_pct,mb_per_s,peak_rss_mb,statements_or_queries,load1,status" >"$CSV"
ROWS=()
FAILED=0
declare -A WALL RSS MBS

# run NAME EXPECTED_EXITS CMD...: /usr/bin/time -v around CMD.
run() {
  local name=$1 ok=$2
  shift 2
  local tf=$TMP/time-$name.txt out=$TMP/out-$name.txt err=$TMP/err-$name.txt
  local load rc=0
  load=$(cut -d' ' -f1 /proc/loadavg)
  log "$name (load $load): $*"
  /usr/bin/time -v -o "$tf" "$@" >"$out" 2>"$err" || rc=$?
  local wall user sys cpu rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s}' "$tf")
  user=$(awk -F': ' '/User time/ {print $2}' "$tf")
  sys=$(awk -F': ' '/System time/ {print $2}' "$tf")
  cpu=$(awk -F': ' '/Percent of CPU/ {print $2}' "$tf")
  rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2 / 1024}' "$tf")
  local mbs count status=ok
  mbs=$(awk -v b="$BYTES" -v w="$wall" 'BEGIN {if (w > 0) printf "%.1f", b / 1048576 / w; else print "n/a"}')
  case $name in
    pgaudit*) count=$(lint_json "$out" statements) ;;
    *) count=$(pgbadger_queries "$err") ;;
  esac
  if [[ " $ok " != *" $rc "* ]]; then
    status="FAILED (exit $rc)"
    FAILED=1
    cp "$err" "$RESULTS_DIR/lint-$STAMP-$name.err.log"
  fi
  WALL[$name]=$wall RSS[$name]=$rss MBS[$name]=$mbs
  ROWS+=("$name|$rc|$wall|$user|$sys|$cpu|$mbs|$rss|${count:-?}|$load|$status")
  echo "$name,\"$*\",$rc,$wall,$user,$sys,$cpu,$mbs,$rss,${count:-},$load,\"$status\"" >>"$CSV"
  log "  exit $rc, ${wall}s wall, $mbs MiB/s, peak RSS $rss MiB, ${count:-?} statements/queries"
}

run pgaudit "0 1" "$PGAUDIT_BIN" lint --format csvlog --output json "$BIG"
for j in $PGBADGER_JOBS; do
  if [[ $j == 1 ]]; then
    run pgbadger "0" pgbadger -f csv -o "$TMP/out.html" "$BIG"
  else
    run "pgbadger-j$j" "0" pgbadger -j "$j" -f csv -o "$TMP/out-j$j.html" "$BIG"
  fi
done

# What pgaudit lint found and said on the big file.
LINT_SUMMARY=$(lint_json "$TMP/out-pgaudit.txt" summary)
LINT_FINDINGS=$(lint_json "$TMP/out-pgaudit.txt" findings)
LINT_STDERR=$(sed -E 's/"time":"[^"]*",?//; s/"fingerprint":"[^"]*",?//; s/"query":"([^"\\]|\\.)*",?//; s/"position":[0-9]+,?//' "$TMP/err-pgaudit.txt" | sort | uniq -c | sort -rn | head -8)
PGB_WARN=$(tr '\r' '\n' <"$TMP/err-pgbadger-j2.txt" 2>/dev/null | grep -E 'WARNING|ERROR|FATAL' | sort | uniq -c | head -5 || true)

# ---------------------------------------------------------------- report
CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else print "n/a" }'; }
R1=$(ratio "${MBS[pgaudit]}" "${MBS[pgbadger]:-}")
{
  echo
  echo "machine: $(nproc) cores, ${CPU_MODEL:-unknown CPU}, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, $(uname -sr)"
  echo "versions: pgaudit $PGAUDIT_REV, pgBadger $PGBADGER_VERSION, $(go version | awk '{print $3}')"
  echo "input: $BYTES bytes ($MB MiB) PostgreSQL 15 csvlog, warm page cache"
  echo "generated by: go run ./bench/gen -size-mb $SIZE_MB -seed $SEED -sessions $GEN_SESSIONS -start $GEN_START"
  echo "generator summary: $GEN_SUMMARY"
  echo "$VALIDATION"
  echo
  for r in "tool|exit|wall s|user s|sys s|cpu|MiB/s|peak RSS MiB|statements/queries|load|status" "${ROWS[@]}"; do echo "$r"; done |
    column -t -s '|' 2>/dev/null || printf '%s\n' "${ROWS[@]}"
  echo
  echo "pgaudit/pgBadger throughput: ${R1}x (target >= 5x)   pgaudit lint: ${MBS[pgaudit]} MiB/s (target >= 50 MiB/s)"
  for j in $PGBADGER_JOBS; do
    [[ $j == 1 ]] && continue
    echo "pgaudit/pgBadger -j $j throughput: $(ratio "${MBS[pgaudit]}" "${MBS[pgbadger-j$j]:-}")x"
  done
  echo "peak memory: pgaudit ${RSS[pgaudit]} MiB, pgBadger ${RSS[pgbadger]:-n/a} MiB"
  t1=$(awk -v r="$R1" 'BEGIN {print (r != "n/a" && r >= 5) ? "MET" : "MISSED"}')
  t2=$(awk -v m="${MBS[pgaudit]}" 'BEGIN {print (m >= 50) ? "MET" : "MISSED"}')
  echo "targets: >= 5x pgBadger: $t1; >= 50 MiB/s: $t2"
  echo "pgaudit lint exit code 1 means findings at or above --fail-on (warning), not a failure."
  echo "pgaudit lint summary: ${LINT_SUMMARY:-n/a}"
  echo "pgaudit lint findings by rule: ${LINT_FINDINGS:-none}"
  if [[ -n $LINT_STDERR ]]; then
    echo "pgaudit lint stderr (count, query/time/fingerprint stripped):"
    echo "$LINT_STDERR" | sed 's/^/  /'
  fi
  if [[ -n $PGB_WARN ]]; then
    echo "pgBadger -j 2 said:"
    echo "$PGB_WARN" | sed 's/^/  /'
  fi
  echo
  echo "csv: $CSV"
} | tee "$RESULTS_DIR/lint-$STAMP.txt"
if [[ $KEEP_LOG != 1 ]]; then
  rm -f "$BIG"
  log "deleted $BIG (rebuild it with the command above)"
fi
if [[ $FAILED == 1 ]]; then exit 3; fi
