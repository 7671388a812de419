#!/usr/bin/env bash
# cpusplit.sh PID PORT [CLIENTS] [SECONDS] [PROTOCOL]: runs pgbench -S (-M
# PROTOCOL: simple, the default, extended or prepared) through the proxy
# listening on 127.0.0.1:PORT (process PID: pgaudit or PgBouncer) and prints
# the proxy's user and system CPU per transaction and its context switches
# per transaction, from /proc/PID/task/*/{stat,status} before and after.
# CPUSPLIT_ARGS adds pgbench options (e.g. CPUSPLIT_ARGS=-C: a new
# connection per transaction).
# bench/pgbench.sh reports user+system together; this splits them, which
# shows where a gap between two proxies lies (system time is the sockets,
# the same for both; user time is the proxy's own code and runtime).
set -euo pipefail
PID=$1 PORT=$2 C=${3:-100} T=${4:-10} M=${5:-simple}
snap() {
  local u=0 s=0 v=0 n=0 t f
  for t in /proc/"$PID"/task/*; do
    read -r -a f <"$t/stat"
    u=$((u + f[13])) s=$((s + f[14]))
    v=$((v + $(awk '/^voluntary_ctxt/{print $2}' "$t/status")))
    n=$((n + $(awk '/^nonvoluntary_ctxt/{print $2}' "$t/status")))
  done
  echo "$u $s $v $n"
}
read -r u0 s0 v0 n0 < <(snap)
out=$(pgbench ${CPUSPLIT_ARGS:-} -h 127.0.0.1 -p "$PORT" -U postgres -n -S -M "$M" -c "$C" -j 2 -T "$T" postgres 2>&1)
read -r u1 s1 v1 n1 < <(snap)
tx=$(echo "$out" | awk '/actually processed/{print $NF}' | cut -d/ -f1)
tps=$(echo "$out" | awk '/^tps/{print $3}')
awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v v=$((v1 - v0)) -v n=$((n1 - n0)) -v tx="$tx" -v hz="$(getconf CLK_TCK)" -v tps="$tps" \
  'BEGIN{printf "tps %.0f  user %.1f us/tx  sys %.1f us/tx  voluntary cs %.2f/tx  involuntary cs %.2f/tx\n", tps, u/hz*1e6/tx, s/hz*1e6/tx, v/tx, n/tx}'
