# A throwaway PostgreSQL for the cluster scripts (sourced, not run): the distribution's
# binaries (`pg_config --bindir`, or the newest /usr/lib/postgresql/*/bin), initdb'd in a
# folder of the caller's, on a Unix socket in that folder only, fsync = on and
# synchronous_commit = on; run as the postgres user when we are root (PostgreSQL refuses root).
#
#   source benches/cluster/pg.sh
#   url=$(pg_start "$dir")     # prints the URL of database `bench`
#   pg_stop "$dir"             # stops the server and removes the folder

pg_bindir() {
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir; return
  fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | while read -r d; do
    [ -x "$d/initdb" ] && echo "$d"
  done | tail -n 1
}
bindir=$(pg_bindir)
[ -n "$bindir" ] || { echo "no PostgreSQL server binaries: apt-get install postgresql" >&2; exit 1; }
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

pg_start() { # DIR: makes a cluster in DIR/data with its socket in DIR
  local dir=$1
  [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$dir"
  as_pg "$bindir/initdb" -D "$dir/data" -U gw --auth=trust --no-sync -E UTF8 --locale=C >/dev/null
  cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$dir'
unix_socket_permissions = 0700
port = 5432
fsync = on
synchronous_commit = on
shared_buffers = 256MB
max_connections = 100
CONF
  as_pg "$bindir/pg_ctl" start -w -D "$dir/data" -l "$dir/server.log" >/dev/null
  as_pg "$bindir/psql" -h "$dir" -U gw -d postgres -qc "CREATE DATABASE bench" >/dev/null
  echo "postgresql:///bench?host=$dir&port=5432&user=gw"
}
pg_stop() { as_pg "$bindir/pg_ctl" stop -m immediate -w -D "$1/data" >/dev/null 2>&1 || true; rm -rf "$1"; }

