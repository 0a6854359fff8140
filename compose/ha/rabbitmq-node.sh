#!/bin/sh
# Every node of the cluster (and rabbitmqctl inside its container) must hold the
# same Erlang cookie; it comes from the environment, never from the image or repo.
set -eu
cookie=/var/lib/rabbitmq/.erlang.cookie
printf '%s' "$SAGA_ERLANG_COOKIE" > "$cookie"
chown rabbitmq:rabbitmq "$cookie"
chmod 600 "$cookie"
unset SAGA_ERLANG_COOKIE
exec docker-entrypoint.sh "$@"
