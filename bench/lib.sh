# shellcheck shell=bash
# shellcheck disable=SC2034 # sets variables for the scripts that source it
# Shared helpers of the bench/ scripts; source it after setting PGBIN, TMP,
# PGDATA_DIR, SCALE and REPO_ROOT.

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# free_port prints a TCP port on 127.0.0.1 that nothing listens on, below
# the kernel's ephemeral range: a port in that range may be the local end of
# some client connection, and then binding it fails with "Address already in
# use" although nothing listens (this broke runs).
free_port() {
  local p lo=20000 hi
  hi=$(awk '{print $1 - 1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32767)
  [[ $hi -gt $((lo + 1000)) ]] || lo=$((hi - 5000))
  for _ in $(seq 200); do
    p=$((lo + RANDOM % (hi - lo)))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"; return 0
    fi
  done
  die "no free port found"
}

# HUGE_PAGES=1 (the default) backs the cluster's shared memory with huge
# pages when the kernel lets us reserve them. Without them every backend
# page-faults on each 4 kB page of shared buffers it touches for the first
# time: a fresh backend then costs Postgres about 3x the CPU per pgbench -S
# transaction (300 vs 95 us here) for its first 15-20 s, which skews any
# comparison between targets whose backends are of different ages (a
# proxy's pool after a restart against another's warm one, or direct
# connections, which are all fresh). Huge pages are what production
# clusters use for shared_buffers anyway. HUGE_PAGES_USED says what
# happened; release_huge_pages gives the reservation back.
#
# Other bench runs on the same machine reserve and release pages too, so
# both steps add to or subtract from vm.nr_hugepages as it is then, never
# write back a value read earlier: restoring the count from before our run
# took away pages that a run started in between had reserved, and its
# postmaster then failed with "could not map anonymous shared memory".
HUGE_PAGES=${HUGE_PAGES:-1}
HUGE_PAGES_USED=no
HUGE_PAGES_ADDED=0
reserve_huge_pages() {
  [[ $HUGE_PAGES == 1 ]] || { HUGE_PAGES_USED="no (HUGE_PAGES=0)"; return 0; }
  local need have free
  need=$(runuser -u postgres -- "$PGBIN/postgres" -D "$PGDATA_DIR" -C shared_memory_size_in_huge_pages 2>/dev/null || true)
  if ! [[ $need =~ ^[0-9]+$ ]] || [[ $need -le 0 ]] || [[ ! -w /proc/sys/vm/nr_hugepages ]]; then
    HUGE_PAGES_USED="no (cannot size or reserve them here)"
    log "huge pages: not available; backends warm up slowly (see WARMUP)"
    return 0
  fi
  have=$(cat /proc/sys/vm/nr_hugepages)
  echo $((have + need + 2)) >/proc/sys/vm/nr_hugepages 2>/dev/null || true
  HUGE_PAGES_ADDED=$(($(cat /proc/sys/vm/nr_hugepages) - have))
  ((HUGE_PAGES_ADDED > 0)) || HUGE_PAGES_ADDED=0
  # Free counts pages another cluster has mapped but not touched yet
  # (HugePages_Rsvd): they are not ours to use.
  free=$(awk '/^HugePages_Free/ {f = $2} /^HugePages_Rsvd/ {r = $2} END {print f - r}' /proc/meminfo)
  if [[ ${free:-0} -ge $need ]]; then
    echo "huge_pages = on" >>"$PGDATA_DIR/postgresql.conf"
    HUGE_PAGES_USED="yes ($need x 2 MB)"
    log "huge pages: reserved $need for shared memory"
  else
    release_huge_pages
    HUGE_PAGES_USED="no (only ${free:-0} of $need could be reserved)"
    log "huge pages: only ${free:-0} of $need could be reserved; not used"
  fi
}
# release_huge_pages takes the pages reserve_huge_pages added off
# vm.nr_hugepages again (after the cluster stopped).
release_huge_pages() {
  if ((HUGE_PAGES_ADDED > 0)); then
    local cur
    cur=$(cat /proc/sys/vm/nr_hugepages)
    cur=$((cur - HUGE_PAGES_ADDED))
    ((cur > 0)) || cur=0
    echo "$cur" >/proc/sys/vm/nr_hugepages 2>/dev/null || true
    HUGE_PAGES_ADDED=0
  fi
}

# start_cluster MAX_CONNECTIONS LABEL: initdb and start a throwaway cluster
# as the postgres user on a free port, load pgbench at scale $SCALE. Sets
# PGPORT, PG_STARTED (for the caller's cleanup) and PG_VERSION.
start_cluster() {
  local max_conn=$1 label=$2
  PGPORT=$(free_port)
  log "initdb + start PostgreSQL on 127.0.0.1:$PGPORT"
  runuser -u postgres -- "$PGBIN/initdb" -D "$PGDATA_DIR" -U postgres --auth=trust -E UTF8 --no-sync >"$TMP/initdb.log" 2>&1 ||
    { cat "$TMP/initdb.log" >&2; die "initdb failed"; }
  cat >>"$PGDATA_DIR/postgresql.conf" <<CONF

# $label
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$TMP'
max_connections = $max_conn
shared_buffers = 128MB
fsync = off
synchronous_commit = off
full_page_writes = off
logging_collector = off
CONF
  reserve_huge_pages
  PG_STARTED=1
  if ! runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$TMP/postgres.log" -w -t 60 start >/dev/null; then
    # Another run on the machine may have taken the huge pages between the
    # check and the start: start without them rather than not at all.
    if [[ $HUGE_PAGES_USED == yes* ]] && grep -q 'could not map anonymous shared memory' "$TMP/postgres.log"; then
      release_huge_pages
      echo "huge_pages = off" >>"$PGDATA_DIR/postgresql.conf"
      HUGE_PAGES_USED="no (reserved, but taken by something else before Postgres started)"
      log "huge pages: gone before Postgres started (another run?); starting without them"
      runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$TMP/postgres.log" -w -t 60 start >/dev/null ||
        { cat "$TMP/postgres.log" >&2; die "pg_ctl start failed"; }
    else
      cat "$TMP/postgres.log" >&2
      die "pg_ctl start failed"
    fi
  fi
  export PGUSER=postgres PGDATABASE=postgres PGHOST=127.0.0.1
  PG_VERSION=$(psql -p "$PGPORT" -Atc 'show server_version')
  log "pgbench -i -s $SCALE"
  pgbench -i -q -s "$SCALE" -p "$PGPORT" >"$TMP/pgbench-init.log" 2>&1 ||
    { cat "$TMP/pgbench-init.log" >&2; die "pgbench -i failed"; }
  psql -p "$PGPORT" -qc 'vacuum analyze' >/dev/null
}

# wait_port PORT SECONDS: wait until something accepts on 127.0.0.1:PORT.
wait_port() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

# cpu_ticks PID: utime + stime of the process (all threads), in clock ticks
# (getconf CLK_TCK per second).
cpu_ticks() {
  # Field 2 (comm) may hold spaces: cut at the last ')'.
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  s=${s##*) }
  awk '{print $12 + $13}' <<<"$s"
}
CLK_TCK=$(getconf CLK_TCK)

# rss_kib PID: the process's resident set (VmRSS), in KiB.
rss_kib() { awk '/^VmRSS:/ {print $2; exit}' "/proc/$1/status" 2>/dev/null; }

# metric_at PORT NAME: the sum of a Prometheus counter (all label sets) from
# pgaudit's admin listener on 127.0.0.1:PORT, or empty when unreachable or
# absent.
metric_at() {
  curl -s -m 5 "http://127.0.0.1:$1/metrics" 2>/dev/null |
    awk -v n="$2" '$1 == n || index($1, n "{") == 1 {s += $2; f = 1} END {if (f) printf "%.0f", s}'
}

# ---------------------------------------------------------------- PgBouncer
# select_pgbouncer picks the PgBouncer to compare with, from $PGBOUNCER:
#   1.25 (default), or any version prefix: build it from the released source
#        pgbouncer-VERSION*.tar.gz once into a cache directory and use that.
#        The tarball is looked for in $PGBOUNCER_SRC (the tarball itself or a
#        directory holding it), else in ../shared/peers next to this checkout
#        and next to the main checkout of a git worktree. Not found (and
#        PGBOUNCER_SRC unset): Debian's pgbouncer, with a log line saying so.
#   debian: Debian's package (1.18 on Debian 12), installed with apt if
#        missing.
#   a path: that binary.
# The binary is copied into $TMP, because the postgres user that runs it
# cannot read root's home where the cache lives. Sets PGBOUNCER_BIN,
# PGBOUNCER_VERSION and PGBOUNCER_ORIGIN (for the report header).
PGBOUNCER=${PGBOUNCER:-1.25}
PGBOUNCER_SRC=${PGBOUNCER_SRC:-}
PGBOUNCER_CACHE_ROOT=${PGBOUNCER_CACHE_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/pgaudit-peers}
select_pgbouncer() {
  local bin tarball
  case $PGBOUNCER in
    debian)
      install_debian_pgbouncer
      bin=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
      PGBOUNCER_ORIGIN="Debian package" ;;
    */*)
      [[ -x $PGBOUNCER ]] || die "PGBOUNCER=$PGBOUNCER is not an executable"
      bin=$PGBOUNCER
      PGBOUNCER_ORIGIN="binary $PGBOUNCER" ;;
    [0-9]*)
      tarball=$(find_pgbouncer_src "$PGBOUNCER")
      if [[ -z $tarball ]]; then
        [[ -z $PGBOUNCER_SRC ]] || die "PGBOUNCER_SRC=$PGBOUNCER_SRC holds no pgbouncer-$PGBOUNCER*.tar.gz"
        log "PgBouncer $PGBOUNCER: no source tarball pgbouncer-$PGBOUNCER*.tar.gz in $(pgbouncer_src_dirs | paste -sd' ' -) (set PGBOUNCER_SRC to it or its directory)"
        log "FALLING BACK to Debian's pgbouncer (as with PGBOUNCER=debian): not the current release, no prepared statements in transaction pools before 1.21"
        install_debian_pgbouncer
        bin=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
        PGBOUNCER_ORIGIN="Debian package; FALLBACK, PgBouncer $PGBOUNCER source not found"
      else
        bin=$(build_pgbouncer "$tarball")
        PGBOUNCER_ORIGIN="built from $tarball"
      fi ;;
    *) die "PGBOUNCER=$PGBOUNCER: expected a version (1.25), debian or a path to a binary" ;;
  esac
  PGBOUNCER_VERSION=$(pgbouncer_version "$bin")
  [[ -n $PGBOUNCER_VERSION ]] || die "$bin --version printed nothing"
  cp "$bin" "$TMP/pgbouncer"
  chmod 755 "$TMP/pgbouncer"
  PGBOUNCER_BIN=$TMP/pgbouncer
  log "PgBouncer $PGBOUNCER_VERSION ($PGBOUNCER_ORIGIN)"
}

# pgbouncer_version BIN: the version the binary reports (1.25.2).
pgbouncer_version() { "$1" --version 2>/dev/null | awk 'NR == 1 {print $NF}'; }

# pgbouncer_src_dirs: where the PgBouncer source tarball may be, one per line.
pgbouncer_src_dirs() {
  local common
  echo "${REPO_ROOT:?}/../shared/peers"
  # In a git worktree, also next to the main checkout.
  common=$(git -C "$REPO_ROOT" rev-parse --path-format=absolute --git-common-dir 2>/dev/null || true)
  if [[ -n $common && $common == */.git ]]; then echo "${common%/.git}/../shared/peers"; fi
}

# find_pgbouncer_src VERSION: the newest pgbouncer-VERSION*.tar.gz, or nothing.
find_pgbouncer_src() {
  local v=$1 dirs=() d
  if [[ -n $PGBOUNCER_SRC ]]; then
    if [[ -f $PGBOUNCER_SRC ]]; then echo "$PGBOUNCER_SRC"; return; fi
    dirs=("$PGBOUNCER_SRC")
  else
    mapfile -t dirs < <(pgbouncer_src_dirs)
  fi
  for d in "${dirs[@]}"; do
    [[ -d $d ]] || continue
    d=$(cd "$d" && pwd)
    # shellcheck disable=SC2012 # names are pgbouncer-X.Y.Z.tar.gz
    ls "$d"/pgbouncer-"$v"*.tar.gz 2>/dev/null | sort -V | tail -1
    return
  done
}

# build_pgbouncer TARBALL: prints the path of the binary built from it,
# building it first unless the cache already has it. The cache
# ($PGBOUNCER_CACHE_ROOT/pgbouncer-VERSION, as /work/shared/peers/
# build-pgbouncer.sh uses) is shared between runs and checkouts; a lock file
# keeps two runs from building at once. Configured --without-cares; the man
# pages are touched because they need pandoc, which Debian 12's image lacks.
build_pgbouncer() {
  local tarball=$1 v prefix bin src fd t0
  v=$(basename "$tarball" .tar.gz)
  v=${v#pgbouncer-}
  prefix=$PGBOUNCER_CACHE_ROOT/pgbouncer-$v
  bin=$prefix/bin/pgbouncer
  mkdir -p "$PGBOUNCER_CACHE_ROOT"
  exec {fd}>"$prefix.lock"
  flock "$fd"
  if [[ -x $bin && $(pgbouncer_version "$bin") == "$v" ]]; then
    log "PgBouncer $v: cached build $bin"
  else
    local missing=() p
    for p in libevent-dev libssl-dev pkg-config autoconf automake libtool make gcc; do
      dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if ((${#missing[@]})); then
      log "PgBouncer $v: apt-get install ${missing[*]}"
      { DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" ||
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"; }; } \
        >"$TMP/pgbouncer-apt.log" 2>&1 || { tail -20 "$TMP/pgbouncer-apt.log" >&2; die "could not install PgBouncer's build dependencies"; }
    fi
    log "PgBouncer $v: building from $tarball into $prefix (once; a minute or more on 2 cores)"
    t0=$SECONDS
    src=$(mktemp -d "$TMP/pgbouncer-src.XXXXXX")
    tar -xzf "$tarball" -C "$src"
    (
      cd "$src/pgbouncer-$v"
      ./autogen.sh
      ./configure --prefix="$prefix" --without-cares
      touch doc/pgbouncer.1 doc/pgbouncer.5
      make -j"$(nproc)" pgbouncer
    ) >"$TMP/pgbouncer-build.log" 2>&1 ||
      { tail -30 "$TMP/pgbouncer-build.log" >&2; die "building PgBouncer $v failed (log above; PGBOUNCER=debian uses Debian's package instead)"; }
    mkdir -p "$prefix/bin"
    cp "$src/pgbouncer-$v/pgbouncer" "$bin.new"
    mv "$bin.new" "$bin"
    rm -rf "$src"
    [[ $(pgbouncer_version "$bin") == "$v" ]] || die "the PgBouncer built from $tarball does not say it is $v"
    log "PgBouncer $v: built in $((SECONDS - t0)) s"
  fi
  exec {fd}>&-
  echo "$bin"
}

# install_debian_pgbouncer: Debian's pgbouncer package, installed if missing,
# with the system service the package starts stopped and disabled.
install_debian_pgbouncer() {
  if command -v pgbouncer >/dev/null || [[ -x /usr/sbin/pgbouncer ]]; then return; fi
  log "installing Debian's pgbouncer"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q pgbouncer >"$TMP/apt.log" 2>&1; then
    apt-get update -q >>"$TMP/apt.log" 2>&1 || true
    apt-get install -y -q pgbouncer >>"$TMP/apt.log" 2>&1 || { cat "$TMP/apt.log" >&2; die "could not install pgbouncer"; }
  fi
  # The package starts a system pgbouncer on 6432: stop and disable it.
  if command -v systemctl >/dev/null && systemctl stop pgbouncer >/dev/null 2>&1; then
    systemctl disable pgbouncer >/dev/null 2>&1 || true
  else
    service pgbouncer stop >/dev/null 2>&1 || true
  fi
  local pf
  for pf in /run/postgresql/pgbouncer.pid /var/run/postgresql/pgbouncer.pid; do
    if [[ -s $pf ]]; then kill -INT "$(cat "$pf")" 2>/dev/null || true; fi
  done
}
