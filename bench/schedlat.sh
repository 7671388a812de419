#!/usr/bin/env bash
# schedlat.sh ADMIN PORT [CLIENTS] [SECONDS] [PROTOCOL]: how long pgaudit's
# goroutines wait to run once they are runnable, per transaction.
#
# Runs pgbench -S (-M PROTOCOL: simple, the default, extended or prepared)
# with CLIENTS clients (100) for SECONDS (8) through the pgaudit listening
# on 127.0.0.1:PORT, and reads go_sched_latencies_seconds (the Go
# runtime's /sched/latencies:seconds histogram: time from runnable to
# running, sampled by the runtime at one goroutine transition in 8) from
# its admin listener ADMIN (host:port) before and after. It prints the
# mean wait per wake-up, the estimated wake-ups and total wait per
# transaction (the sample x 8 / transactions), and the share of wake-ups
# that waited over 0.92 ms and over 10.5 ms (bucket bounds of the metric).
# Reading the metric costs nothing measurable.
#
# SCHEDLAT_TRACE=1 then runs pgbench again and takes a 3 s Go execution
# trace (pgaudit must run with --pprof): `go tool trace -pprof=sched`
# keys each wake-up by where it came from: "netpoll" (a socket became
# ready: a client's request or a server's reply; no Go stack), the pool's
# hand-off of a released server to a waiting client (Pool.releaseAt), the
# audit pipeline's worker signal, GC, the rest. The tracer costs a lot of
# CPU while it runs (tps fell 20-40 % here), which lengthens every queue:
# read that breakdown for its shape, the metric run for the sizes.
#
# This is the queue in front of pgaudit's relay code. A transaction whose
# server reply waits in it holds its pool server meanwhile.
set -euo pipefail
ADMIN=$1 PORT=$2 C=${3:-100} T=${4:-8} M=${5:-simple}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
sched_metric() { # -> "count sum le920us le10ms" of go_sched_latencies_seconds
  curl -sf "http://$ADMIN/metrics" | awk '
    /^go_sched_latencies_seconds_bucket/ { split($0, a, "\""); le = a[2] + 0
      if (le > 0.0009 && le < 0.00092) b1 = $2; if (le > 0.0104 && le < 0.0105) b2 = $2 }
    /^go_sched_latencies_seconds_count/ { c = $2 }
    /^go_sched_latencies_seconds_sum/ { s = $2 }
    END { if (c == "") exit 1; printf "%s %s %s %s\n", c, s, (b1 == "" ? "-" : b1), (b2 == "" ? "-" : b2) }'
}
read -r c0 s0 a0 b0 < <(sched_metric) ||
  { echo "schedlat: no go_sched_latencies_seconds at http://$ADMIN/metrics" >&2; exit 1; }
pgbench -h 127.0.0.1 -p "$PORT" -U postgres -n -S -M "$M" -c "$C" -j 2 -T "$T" postgres >"$dir/pgbench.out" 2>&1 ||
  { cat "$dir/pgbench.out" >&2; exit 1; }
read -r c1 s1 a1 b1 < <(sched_metric)
tx=$(awk -F': ' '/^number of transactions actually processed/ {split($2, a, "/"); print a[1]; exit}' "$dir/pgbench.out")
tps=$(awk '/^tps = /{print $3; exit}' "$dir/pgbench.out")
# The share over a bound needs that bucket bound in the metric; "-" when
# client_golang's buckets no longer have it.
over() { if [[ $1 == - || $2 == - || $3 == - || $4 == - ]]; then echo -; else echo $(($1 - $2)); fi; }
awk -v c=$((c1 - c0)) -v s="$(awk -v a="$s1" -v b="$s0" 'BEGIN{print a - b}')" -v a="$(over "$a1" "$a0" "$b1" "$b0")" -v b="$(over "$b1" "$b0" "$a1" "$a0")" -v tx="$tx" -v tps="$tps" -v C="$C" -v M="$M" 'BEGIN {
  printf "%s clients, %s: tps %.0f, %d transactions\n", C, M, tps, tx
  if (c == 0 || tx == 0) { print "no wake-ups sampled"; exit }
  printf "runnable wait (go_sched_latencies_seconds, 1 in 8 sampled): mean %.1f us per wake-up, %.2f wake-ups and %.0f us per transaction",
    s / c * 1e6, c * 8 / tx, s * 8 / tx * 1e6
  if (a == "-") print "; no 0.92 ms / 10.5 ms bucket bounds in the metric"
  else printf "; %.1f %% of wake-ups waited over 0.92 ms, %.2f %% over 10.5 ms\n", 100 * (c - a) / c, 100 * (c - b) / c }'
[[ ${SCHEDLAT_TRACE:-0} == 1 ]] || exit 0
TT=3
pgbench -h 127.0.0.1 -p "$PORT" -U postgres -n -S -M "$M" -c "$C" -j 2 -T $((TT + 5)) postgres >"$dir/pgbench.out" 2>&1 &
pg=$!
sleep 2
curl -sf -o "$dir/trace.out" "http://$ADMIN/debug/pprof/trace?seconds=$TT" ||
  { kill "$pg" 2>/dev/null; echo "schedlat: no trace from http://$ADMIN/debug/pprof/trace (is pgaudit running with --pprof?)" >&2; exit 1; }
wait "$pg"
tps=$(awk '/^tps = /{print $3; exit}' "$dir/pgbench.out")
[[ -n $tps ]] || { cat "$dir/pgbench.out" >&2; exit 1; }
go tool trace -pprof=sched "$dir/trace.out" >"$dir/sched.pb" 2>/dev/null
echo "traced run (${TT}s trace, tracer on):"
# -raw lists each sample as "count delay_ns: location ids", then the
# locations; classify every sample by the functions on its stack.
go tool pprof -raw "$dir/sched.pb" 2>/dev/null | awk -v tps="$tps" -v T="$TT" '
  /^Samples:/ { s = 1; next }
  /^Locations/ { s = 0; l = 1; next }
  /^Mappings/ { l = 0 }
  s && /^ *[0-9]+ +[0-9]+:/ { n++; cnt[n] = $1; d[n] = $2 + 0; st[n] = ""; for (i = 3; i <= NF; i++) st[n] = st[n] " " $i; next }
  l && /^ *[0-9]+: / { id = $1; sub(":", "", id); fn[id] = $4; next }
  END {
    for (i = 1; i <= n; i++) {
      k = "other"
      if (st[i] == "") k = "netpoll (socket ready)"
      split(st[i], ids, " ")
      for (j in ids) {
        f = fn[ids[j]]
        if (f ~ /pooler\.\(\*Pool\)\.releaseAt/) k = "pool hand-off (releaseAt)"
        else if (f ~ /analyzer\.signal/) k = "audit worker signal"
        else if (f ~ /^runtime\.gc/ && k == "other") k = "GC"
      }
      tot += d[i]; kd[k] += d[i]; kc[k] += cnt[i]
    }
    tx = tps * T
    printf "tps %.0f, ~%.0f transactions in the %ss trace\n", tps, tx, T
    printf "runnable wait: %.2f s in total, %.0f us per transaction, %.1f goroutines waiting on average\n", tot / 1e9, tot / 1e3 / tx, tot / 1e9 / T
    printf "%-28s %10s %12s %12s %10s\n", "woken by", "wake-ups", "per tx", "mean us", "share"
    for (k in kd) printf "%-28s %10d %12.2f %12.1f %9.1f%%\n", k, kc[k], kc[k] / tx, kd[k] / 1e3 / kc[k], 100 * kd[k] / tot
  }'
