#!/bin/bash
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v ingestion_pw="$INGESTION_DB_PASSWORD" -v orchestrator_pw="$ORCHESTRATOR_DB_PASSWORD" <<'SQL'
CREATE ROLE ingestion LOGIN PASSWORD :'ingestion_pw';
CREATE DATABASE ingestion OWNER ingestion;
CREATE ROLE orchestrator LOGIN PASSWORD :'orchestrator_pw';
CREATE DATABASE orchestrator OWNER orchestrator;
SQL
