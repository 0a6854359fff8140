#!/bin/sh
# The standby: on its first start a pg_basebackup copy of the primary (-R writes
# standby.signal and primary_conninfo), then the official entrypoint, which
# starts the copy as it is (a data folder with PG_VERSION is never initialised).
# To rebuild it (after a failover, as a standby of the new primary), empty its
# volume and set PRIMARY_HOST to the new primary's service.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_isready -h "$PRIMARY_HOST" -p 5432 -U saga; do sleep 1; done
  mkdir -p "$PGDATA"
  chown postgres:postgres "$PGDATA"
  chmod 700 "$PGDATA"
  PGPASSWORD="$REPLICATION_PASSWORD" gosu postgres pg_basebackup \
    -h "$PRIMARY_HOST" -p 5432 -U replicator -D "$PGDATA" -R -S saga_standby -X stream -c fast
fi
exec docker-entrypoint.sh "$@"
