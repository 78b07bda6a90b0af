#!/bin/sh
# Restore a dump written by backup.sh into a database that exists and is empty:
#   restore.sh /backups/node-20260101T030000Z.dump
# The connection (and the target database) comes from the libpq variables (PGHOST, PGUSER,
# PGDATABASE, PGPASSWORD); the objects become PGUSER's (the dump carries no owners), so
# restore as the owner the migrations run as, then re-run app-role.sql and
# grafana-reader.sql for the grants. docs/deploy.md "Backups and restore" has the whole path.
set -eu
dump="${1:?usage: restore.sh DUMP_FILE}"
# One transaction: a restore that fails half-way leaves the database as empty as it was.
pg_restore --no-owner --no-acl --exit-on-error --single-transaction --dbname="${PGDATABASE:?set PGDATABASE}" "$dump"
echo "restore: $dump restored into $PGDATABASE"
