-- The app's database role: reads and writes the rows of the schema the migrations made, and
-- nothing else. Not a superuser, owns no table, cannot create, alter or drop one: migrations
-- run as the owner (compose's `migrate` job connects as POSTGRES_USER), the replicas as this
-- role through PgBouncer. Idempotent; run as the owner after every migrate:
--   APP_DB_USER=node_app APP_DB_PASSWORD=... psql "$OWNER_DATABASE_URL" -f app-role.sql
-- The name and password come from the environment (\getenv), never from the command line.
\set ON_ERROR_STOP on
\getenv role APP_DB_USER
\getenv password APP_DB_PASSWORD

SELECT format('CREATE ROLE %I LOGIN', :'role')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format(
  'ALTER ROLE %I WITH LOGIN PASSWORD %L NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION '
  'NOBYPASSRLS', :'role', :'password') \gexec
-- UTC on the server side too: Django then never sends SET TIME ZONE, a session setting that
-- PgBouncer's transaction pooling would leave behind on a shared server connection.
SELECT format('ALTER ROLE %I SET timezone = %L', :'role', 'UTC') \gexec
-- A runaway query or a forgotten transaction must not hold a pooled server connection.
SELECT format('ALTER ROLE %I SET statement_timeout = %L', :'role', '30s') \gexec
SELECT format('ALTER ROLE %I SET idle_in_transaction_session_timeout = %L', :'role', '60s')
\gexec

SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'role') \gexec
-- USAGE, not CREATE: the role can reach the tables but add nothing to the schema.
SELECT format('REVOKE CREATE ON SCHEMA public FROM %I', :'role') \gexec
SELECT format('GRANT USAGE ON SCHEMA public TO %I', :'role') \gexec
SELECT format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO %I',
  :'role') \gexec
SELECT format('GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO %I', :'role')
\gexec
-- Tables and sequences the owner creates later (the next migrate) get the same grants.
SELECT format(
  'ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA public '
  'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %I', current_user, :'role') \gexec
SELECT format(
  'ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA public '
  'GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO %I', current_user, :'role') \gexec
