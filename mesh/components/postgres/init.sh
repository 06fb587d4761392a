#!/bin/sh
# Run once by the postgres image on an empty data directory: a role (its password from the
# postgres-roles Secret) and a database it owns, per service.
set -eu
for role in "${ROLES_DIR:-/var/run/postgres-roles}"/*; do
  name="$(basename "$role")"
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v name="$name" -v password="$(cat "$role")" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'password';
CREATE DATABASE :"name" OWNER :"name";
SQL
done
