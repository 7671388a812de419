# Shared helpers of the bench/ scripts; source it after setting PGBIN, TMP,
# PGDATA_DIR and SCALE.

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
HUGE_PAGES=${HUGE_PAGES:-1}
HUGE_PAGES_USED=no
HUGE_PAGES_BEFORE=
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
  free=$(awk '/^HugePages_Free/ {print $2}' /proc/meminfo)
  HUGE_PAGES_BEFORE=$have
  echo $((have + need + 2)) >/proc/sys/vm/nr_hugepages 2>/dev/null || true
  free=$(awk '/^HugePages_Free/ {print $2}' /proc/meminfo)
  if [[ ${free:-0} -ge $need ]]; then
    echo "huge_pages = on" >>"$PGDATA_DIR/postgresql.conf"
    HUGE_PAGES_USED="yes ($need x 2 MB)"
    log "huge pages: reserved $need for shared memory"
  else
    echo "$have" >/proc/sys/vm/nr_hugepages 2>/dev/null || true
    HUGE_PAGES_BEFORE=
    HUGE_PAGES_USED="no (only ${free:-0} of $need could be reserved)"
    log "huge pages: only ${free:-0} of $need could be reserved; not used"
  fi
}
# release_huge_pages restores vm.nr_hugepages after the cluster stopped.
release_huge_pages() {
  if [[ -n $HUGE_PAGES_BEFORE ]]; then
    echo "$HUGE_PAGES_BEFORE" >/proc/sys/vm/nr_hugepages 2>/dev/null || true
    HUGE_PAGES_BEFORE=
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
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$TMP/postgres.log" -w -t 60 start >/dev/null ||
    { cat "$TMP/postgres.log" >&2; die "pg_ctl start failed"; }
  export PGUSER=postgres PGDATABASE=postgres PGHOST=127.0.0.1
  PG_VERSION=$(psql -p "$PGPORT" -Atc 'show server_version')
  log "pgbench -i -s $SCALE"
  pgbench -i -q -s "$SCALE" -p "$PGPORT" >"$TMP/pgbench-init.log" 2>&1 ||
    { cat "$TMP/pgbench-init.log" >&2; die "pgbench -i failed"; }
  psql -p "$PGPORT" -qc 'vacuum analyze' >/dev/null
}
