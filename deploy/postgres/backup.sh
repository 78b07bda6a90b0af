#!/bin/sh
# Scheduled logical backups: pg_dump in PostgreSQL's custom format (compressed, restored with
# pg_restore, table by table if need be) into BACKUP_DIR, one file per run, every
# BACKUP_INTERVAL_SECONDS; dumps older than BACKUP_RETENTION_DAYS are deleted after a dump
# succeeds (a failing dump never deletes the last good ones). The connection comes from the
# libpq variables (PGHOST, PGUSER, PGDATABASE, PGPASSWORD). BACKUP_ONCE=1: one dump, then exit.
# Restore: deploy/postgres/restore.sh, docs/deploy.md "Backups and restore".
set -eu

dir="${BACKUP_DIR:-/backups}"
interval="${BACKUP_INTERVAL_SECONDS:-86400}"
retention="${BACKUP_RETENTION_DAYS:-14}"

dump_once() {
  name="${PGDATABASE:-postgres}-$(date -u +%Y%m%dT%H%M%SZ).dump"
  # Written under a temporary name and renamed when complete: a half-written file never
  # looks like a backup, and never counts toward retention.
  # Explicit returns: `set -e` does not apply inside a function called from `if`.
  if ! pg_dump --format=custom --no-owner --file="$dir/.$name.partial"; then
    rm -f "$dir/.$name.partial"
    return 1
  fi
  mv "$dir/.$name.partial" "$dir/$name" || return 1
  echo "backup: wrote $dir/$name ($(wc -c < "$dir/$name") bytes)"
  find "$dir" -maxdepth 1 -name '*.dump' -type f -mtime "+$((retention - 1))" -print -delete \
    | sed 's/^/backup: deleted (retention) /'
}

mkdir -p "$dir"
while :; do
  if ! dump_once; then
    echo "backup: pg_dump failed; older dumps kept" >&2
    [ "${BACKUP_ONCE:-0}" = 1 ] && exit 1
  fi
  [ "${BACKUP_ONCE:-0}" = 1 ] && exit 0
  sleep "$interval"
done
