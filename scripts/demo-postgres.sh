#!/usr/bin/env bash
# Starts (or reuses) a demo PostgreSQL on 127.0.0.1:${EBB_DEMO_PG_PORT:-54329} under
# .ebb/pg, seeded with an `ebb_admin` role for the postgres connector and a few
# tables to grant. Prints the admin DSN on stdout. As root, the server runs as the
# `postgres` user (PostgreSQL refuses root).
set -euo pipefail
cd "$(dirname "$0")/.."
port=${EBB_DEMO_PG_PORT:-54329}
dir=$(pwd)/.ebb/pg
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
admin_pw=${EBB_DEMO_ADMIN_PASSWORD:-ebb-demo-admin}

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

if [ ! -f "$dir/data/PG_VERSION" ]; then
  rm -rf "$dir" && mkdir -p "$dir"
  head -c 24 /dev/urandom | base64 > "$dir/superuser.pw"
  [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$dir"
  chmod 700 "$dir"
  as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    --pwfile="$dir/superuser.pw" >/dev/null
  fresh=1
fi
if ! as_pg "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
  as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
fi
if [ "${fresh:-0}" = 1 ]; then
  as_pg "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres -d postgres <<SQL >/dev/null
create role ebb_admin login createrole password '$admin_pw';
grant pg_signal_backend to ebb_admin;
create table public.invoices (id int primary key, amount_cents int not null);
insert into public.invoices values (1, 1200), (2, 4500);
create table public.customers (id int primary key, name text not null);
insert into public.customers values (1, 'Ada'), (2, 'Grace');
grant all on all tables in schema public to ebb_admin with grant option;
SQL
fi
echo "host=127.0.0.1 port=$port dbname=postgres user=ebb_admin password=$admin_pw"
