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
