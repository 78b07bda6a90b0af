-- Grafana's read-only database role: per-tenant usage and throttle counts, nothing else (no
-- key hashes, no admin data, no client addresses). Idempotent; run after every migrate:
--   GRAFANA_DB_USER=grafana_reader GRAFANA_DB_PASSWORD=... psql "$DATABASE_URL" -f grafana-reader.sql
-- The name and password come from the environment (\getenv), never from the command line.
\set ON_ERROR_STOP on
\getenv role GRAFANA_DB_USER
\getenv password GRAFANA_DB_PASSWORD

SELECT format('CREATE ROLE %I LOGIN', :'role')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', :'role', :'password') \gexec
SELECT format('ALTER ROLE %I SET default_transaction_read_only = on', :'role') \gexec
SELECT format('ALTER ROLE %I SET statement_timeout = %L', :'role', '10s') \gexec

-- Column grants: the dashboards see these columns and no others.
SELECT format('GRANT SELECT (id, slug, name, active) ON tenants_tenant TO %I', :'role') \gexec
SELECT format(
  'GRANT SELECT (tenant_id, api_key_id, minute, requests, prompt_tokens, completion_tokens, '
  'errors) ON tenants_usageminute TO %I', :'role') \gexec
SELECT format(
  'GRANT SELECT (tenant_id, reason, minute, count) ON tenants_throttleevent TO %I', :'role') \gexec
