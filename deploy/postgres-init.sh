#!/bin/sh
# Run once by the postgres image, on its first start with an empty data volume
# (/docker-entrypoint-initdb.d): theranode's role, not a superuser, and its
# database, owned by that role (docs/scale-out.md, "Security").
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    --set=password="$THERANODE_DB_PASSWORD" <<'SQL'
CREATE ROLE theranode LOGIN PASSWORD :'password';
CREATE DATABASE theranode OWNER theranode;
SQL
