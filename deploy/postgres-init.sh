#!/bin/sh
# One database per service, each owned by its own role (database per service).
# Passwords come from the environment (deploy/.env), never from this file.
set -eu
for service in user product inventory order payment notification; do
  password_var="MART_$(echo "$service" | tr a-z A-Z)_DB_PASSWORD"
  eval "password=\${$password_var:?set $password_var in deploy/.env}"
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<SQL
CREATE ROLE mart_$service LOGIN PASSWORD '$password';
CREATE DATABASE mart_$service OWNER mart_$service;
SQL
done
