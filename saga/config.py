"""Settings, read from environment variables that all start with SAGA_.

Defaults run out of the box with no servers: an SQLite store and a broker kept in
an SQLite file through kombu's SQLAlchemy transport. Point SAGA_DATABASE_URL at
PostgreSQL and SAGA_BROKER_URL at RabbitMQ for production. Every field is listed
with its variable in the README's configuration table (`saga config` prints the
values in effect).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from saga.core.errors import SagaError

PREFIX = "SAGA_"
# Any setting can also come from a file: SAGA_API_TOKEN_FILE=/run/secrets/api-token.


class ConfigError(SagaError, ValueError):
    pass


def _is_pem(value: str) -> bool:
    return value.lstrip().startswith("-----BEGIN ")


def _read_pem(var: str, value: str) -> bytes:
    """A PEM setting's bytes: the value itself if it is PEM, else the file it names."""
    if _is_pem(value):
        # A *_FILE secret arrives stripped; PEM readers want the final newline back.
        return value.strip().encode() + b"\n"
    try:
        with open(value, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError(
            f"{var}={value!r} cannot be read: {exc.strerror}; give the path of a PEM file"
        ) from None
    if b"-----BEGIN " not in data:
        raise ConfigError(
            f"{var}={value!r} is not PEM (a DER file? convert it: openssl x509 / openssl pkey "
            "-outform PEM)"
        )
    return data


def _read_secret(var: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError as exc:
        raise ConfigError(f"{var}={path!r} cannot be read: {exc.strerror}") from None


def _boolean(var: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{var}={raw!r} is not a boolean; give true or false")


def _redact_url(value: str) -> str:
    if "://" not in value or "@" not in value:
        return value
    scheme, rest = value.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user, has_password, _ = creds.partition(":")
    # No password in the URL: nothing to hide, and *** would suggest one.
    return f"{scheme}://{user}{':***' if has_password else ''}@{host}"


@dataclass(frozen=True)
class Settings:
    # Where sagas, outbox and inbox live (SQLAlchemy URL; postgresql:// uses psycopg 3).
    # A primary and its standby, each process finding whichever takes writes:
    # postgresql://user@/db?host=h1:5432&host=h2:5432&target_session_attrs=read-write
    database_url: str = "sqlite:///saga.sqlite3"
    # The broker the relay publishes to and workers consume from. `embedded+` is
    # kombu's SQLAlchemy transport polling every 50 ms (saga.adapters.rabbitmq.embedded).
    # Nodes of a RabbitMQ cluster are listed `;`-separated
    # (amqp://saga:${RABBITMQ_PASSWORD}@rmq1//;...): every process moves to the next one
    # when its node dies.
    broker_url: str = "embedded+sqlite:///saga-broker.sqlite3"
    # Python modules whose `definition` (or `register(registry)`) declare the sagas.
    definitions: str = "saga.examples.order_payment"
    # Queue of step messages, and where poison messages go with their reason.
    step_queue: str = "saga.steps"
    dead_letter_queue: str = "saga.dead-letter"
    # quorum (replicated on every node of a cluster, with a delivery limit) or
    # classic (only for a broker that already holds classic queues of these names).
    queue_type: str = "quorum"
    # Relay: rows claimed per batch, and the pause when the outbox is empty.
    relay_batch_size: int = 500
    relay_poll_interval: float = 0.2
    # Workers: processes per worker command; messages prefetched per process.
    worker_concurrency: int = 2
    worker_prefetch: int = 1
    # Following local steps of a saga a worker runs in the same task, without a
    # broker round trip (0: every step goes through the queue), and how long their
    # outbox messages are held back meanwhile; the relay sends a held message after
    # that if the worker died first (see Orchestrator.handle).
    worker_inline_steps: int = 10
    worker_inline_reserve: float = 30.0
    # Inline local steps run fused into one transaction with the step before them
    # (false: one transaction per step). Steps declared external never fuse.
    worker_fuse_steps: bool = True
    # Queue the relay routes chain step messages to, for `saga chain-executor`
    # ("": chain steps stay on the step queue and every worker runs them, as before
    # the executor existed; `saga up` sets it). Local steps always use the step queue.
    chain_queue: str = ""
    # Chain steps one `saga chain-executor` process runs at once (a thread each: a
    # chain step spends its time waiting on Endorse and Submit, not on the CPU).
    chain_in_flight: int = 200
    # HTTP API.
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    api_token: str = ""
    max_payload_bytes: int = 64 * 1024
    max_payload_depth: int = 16
    # Operator console (`saga api` serves it under /ui). Who may log in besides the
    # holder of SAGA_API_TOKEN (an operator): "name:role:hash" entries separated by
    # commas, role `operator` or `read-only`, hash from `python -m
    # saga.entrypoints.http.ui.passwords` (scrypt). No token and no users: nobody.
    ui_users: str = ""
    # Key that signs the console's session cookies; every API instance behind one
    # address needs the same. Empty: a random key per process (sessions end when it
    # restarts, and another instance does not know them).
    ui_session_secret: str = ""
    # Seconds a console login lasts.
    ui_session_ttl: float = 8 * 3600.0
    # The session cookie is Secure (sent over HTTPS only). `false` only to try the
    # console over plain http on a host that is not localhost: browsers drop a
    # Secure cookie set over http there, and the login would not stick.
    ui_secure_cookie: bool = True
    # Database connection pool per process.
    db_pool_size: int = 5
    db_max_overflow: int = 5
    # Logs: "json" or "console"; level name.
    log_format: str = "json"
    log_level: str = "INFO"
    # Port for the Prometheus endpoint of relay, workers and watcher (0 = off);
    # each process on one host needs its own. The API serves GET /metrics instead.
    # `saga up` takes it as the first of consecutive ports, one per such process.
    metrics_port: int = 0
    # Address those endpoints listen on. They have no authentication: loopback
    # unless a scraper on another host must reach them (e.g. 0.0.0.0 in a container).
    metrics_address: str = "127.0.0.1"
    # Deadline of the broker question (DLQ depth) asked at each API scrape.
    metrics_timeout: float = 2.0
    # Stuck-saga sweeper (`saga beat` runs it every sweep_interval seconds; `saga
    # sweep` once). A running or compensating saga with no progress for its current
    # step's timeout plus sweep_grace is re-driven through the verify path, at most
    # once per sweep_redrive_interval; after sweep_max_redrives re-drives without
    # progress it is marked for an operator (status failed, reason "stuck: ...").
    sweep_interval: float = 60.0
    sweep_grace: float = 120.0
    sweep_redrive_interval: float = 300.0
    sweep_max_redrives: int = 3
    sweep_batch_size: int = 500
    # No saga is marked stuck while the step queue holds more than this many
    # messages (a backlog, not a stuck saga) or its depth cannot be read.
    sweep_max_backlog: int = 10_000
    # An unsettled ledger attempt of a terminal saga older than this is asked about
    # once more, then given up with a record (the watcher stops following it).
    sweep_abandon_after: float = 3600.0
    # Celery beat's schedule state file ("" = one in the temporary directory).
    beat_schedule_file: str = ""
    # Fabric ledger for chain steps. Unset profile = no ledger: a chain step is
    # then refused with a message naming these settings. The connection profile
    # (connection-org1.json, test-network shape) gives the Gateway peer and TLS CA.
    fabric_profile: str = ""
    # The client identity: MSP id (default: the profile's client organization's)
    # and an MSP directory holding signcerts/ and keystore/ (e.g. .../User1@org1/msp).
    fabric_msp_id: str = ""
    fabric_msp_dir: str = ""
    # Channel chain steps write to unless their ChainCall names one.
    fabric_channel: str = "mychannel"
    # Peer name in the profile to use as Gateway first (default: the org's first peer);
    # the org's other peers are used when it cannot be reached.
    fabric_peer: str = ""
    # Gateway peers of the client's org, by their names in the profile, comma-separated,
    # in order of preference (default: every peer the profile lists for the org,
    # SAGA_FABRIC_PEER first). A client whose peer cannot be reached moves to the next.
    fabric_peers: str = ""
    # Client TLS certificate and its private key (PEM, key unencrypted) for a peer that
    # requires mutual TLS (Fabric's clientAuthRequired), e.g. .../User1@org1/tls/client.crt
    # and client.key: both or neither. Each is a file path, or the PEM itself (which is
    # what SAGA_FABRIC_TLS_KEY_FILE=/run/secrets/... gives). Unset: no client certificate.
    fabric_tls_cert: str = ""
    fabric_tls_key: str = ""
    # Deadlines in seconds. Status: each commit-status question of a chain step's
    # verify pass; short on purpose, an unknown answer only resubmits the same envelope.
    fabric_endorse_timeout: float = 30.0
    fabric_submit_timeout: float = 30.0
    fabric_status_timeout: float = 2.0
    fabric_evaluate_timeout: float = 10.0
    # Seconds after a chain transaction is submitted before the step is verified
    # again by a delayed message, a backstop for a commit watcher that is down (the
    # watcher drives the step within a block; 0: only the watcher and the sweeper).
    chain_recheck_delay: float = 30.0
    # Seconds a chain step (or its compensation) waits for an unreachable ledger
    # (peer, chaincode or orderer away, no endorsement combination, a deadline),
    # timed from the outage's start, before its saga goes to an operator. The wait
    # spends none of the step's attempts and never starts a compensation.
    chain_outage_budget: float = 600.0
    # Longest pause between two looks at an unreachable ledger; the pause is half
    # the time waited so far, from 1 s up to this.
    chain_outage_max_delay: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = PREFIX + f.name.upper()
            if var in env:
                raw = env[var]
            elif var + "_FILE" in env:
                # Secrets mounted as files (compose/Kubernetes secrets) stay out of
                # the environment, where child processes and crash dumps would see them.
                raw = _read_secret(var + "_FILE", env[var + "_FILE"])
            else:
                continue
            try:
                if f.type in ("bool", bool):
                    values[f.name] = _boolean(var, raw)
                elif f.type in ("int", int):
                    values[f.name] = int(raw)
                elif f.type in ("float", float):
                    values[f.name] = float(raw)
                else:
                    values[f.name] = raw
            except ConfigError:
                raise
            except ValueError:
                raise ConfigError(f"{var}={raw!r} is not a valid {f.type}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if self.log_format not in ("json", "console"):
            raise ConfigError("SAGA_LOG_FORMAT must be 'json' or 'console'")
        if self.queue_type not in ("quorum", "classic"):
            raise ConfigError(
                f"SAGA_QUEUE_TYPE={self.queue_type!r}: give quorum (replicated, the default) or "
                "classic"
            )
        if self.relay_batch_size < 1:
            raise ConfigError("SAGA_RELAY_BATCH_SIZE must be at least 1")
        if self.worker_concurrency < 1 or self.worker_prefetch < 1:
            raise ConfigError("SAGA_WORKER_CONCURRENCY and SAGA_WORKER_PREFETCH must be >= 1")
        if self.chain_in_flight < 1:
            raise ConfigError(
                "SAGA_CHAIN_IN_FLIGHT must be at least 1 (chain steps a chain executor runs "
                "at once)"
            )
        if self.chain_queue and self.chain_queue in (self.step_queue, self.dead_letter_queue):
            raise ConfigError(
                f"SAGA_CHAIN_QUEUE={self.chain_queue!r} is the step or dead-letter queue: give "
                "chain steps a queue of their own (e.g. saga.chain-steps), or leave it empty"
            )
        if self.worker_inline_steps < 0 or self.worker_inline_reserve <= 0:
            raise ConfigError(
                "SAGA_WORKER_INLINE_STEPS must be >= 0 and SAGA_WORKER_INLINE_RESERVE > 0 seconds"
            )
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError("SAGA_METRICS_PORT must be a TCP port (0: no metrics endpoint)")
        if not self.metrics_address.strip():
            raise ConfigError(
                "SAGA_METRICS_ADDRESS is empty: give the address metric endpoints listen on "
                "(127.0.0.1, or 0.0.0.0 for every interface)"
            )
        for entry in filter(None, (e.strip() for e in self.ui_users.split(","))):
            name, role, password_hash = [*entry.split(":", 2), "", ""][:3]
            if not name or role not in ("operator", "read-only") or not password_hash:
                raise ConfigError(
                    f"SAGA_UI_USERS entry {name or entry[:20]!r} is not name:role:hash with role "
                    "operator or read-only; make the hash with `python -m "
                    "saga.entrypoints.http.ui.passwords`"
                )
        if self.ui_session_ttl <= 0:
            raise ConfigError("SAGA_UI_SESSION_TTL must be positive: seconds a login lasts")
        if self.max_payload_bytes < 1 or self.max_payload_depth < 1:
            raise ConfigError("payload limits must be positive")
        if self.fabric_peer and self.fabric_peers:
            raise ConfigError(
                "SAGA_FABRIC_PEER and SAGA_FABRIC_PEERS are both set: give the peers in order "
                "in SAGA_FABRIC_PEERS alone, or one preferred peer in SAGA_FABRIC_PEER"
            )
        if self.fabric_profile and not self.fabric_msp_dir:
            raise ConfigError(
                "SAGA_FABRIC_PROFILE is set but SAGA_FABRIC_MSP_DIR is not: point it at the "
                "client's MSP directory (signcerts/ and keystore/)"
            )
        if bool(self.fabric_tls_cert) != bool(self.fabric_tls_key):
            given, missing = (
                ("SAGA_FABRIC_TLS_CERT", "SAGA_FABRIC_TLS_KEY")
                if self.fabric_tls_cert
                else ("SAGA_FABRIC_TLS_KEY", "SAGA_FABRIC_TLS_CERT")
            )
            raise ConfigError(
                f"{given} is set but {missing} is not: SAGA_FABRIC_TLS_CERT and "
                "SAGA_FABRIC_TLS_KEY are the client TLS certificate and its private key for "
                "mutual TLS; set both, or neither"
            )
        if self.fabric_tls_cert and not self.fabric_profile:
            raise ConfigError(
                "SAGA_FABRIC_TLS_CERT / SAGA_FABRIC_TLS_KEY are set but SAGA_FABRIC_PROFILE is "
                "not: set it to the connection profile (connection-org1.json)"
            )
        if (self.fabric_msp_dir or self.fabric_msp_id) and not self.fabric_profile:
            raise ConfigError(
                "SAGA_FABRIC_MSP_DIR / SAGA_FABRIC_MSP_ID are set but SAGA_FABRIC_PROFILE is not: "
                "set it to the connection profile (connection-org1.json)"
            )
        timeouts = (
            self.fabric_endorse_timeout,
            self.fabric_submit_timeout,
            self.fabric_status_timeout,
            self.fabric_evaluate_timeout,
        )
        if self.sweep_interval <= 0 or self.sweep_max_redrives < 1 or self.sweep_batch_size < 1:
            raise ConfigError(
                "SAGA_SWEEP_INTERVAL must be positive, SAGA_SWEEP_MAX_REDRIVES and "
                "SAGA_SWEEP_BATCH_SIZE at least 1"
            )
        if min(timeouts) <= 0 or self.chain_recheck_delay < 0:
            raise ConfigError(
                "SAGA_FABRIC_*_TIMEOUT must be positive, SAGA_CHAIN_RECHECK_DELAY >= 0"
            )
        if self.chain_outage_budget <= 0 or self.chain_outage_max_delay < 1:
            raise ConfigError(
                "SAGA_CHAIN_OUTAGE_BUDGET must be positive (seconds a step waits for an "
                "unreachable ledger) and SAGA_CHAIN_OUTAGE_MAX_DELAY at least 1"
            )

    @property
    def ledger_configured(self) -> bool:
        return bool(self.fabric_profile)

    def fabric_peer_names(self) -> list[str]:
        """SAGA_FABRIC_PEERS as a list (empty: the profile's peers of the org)."""
        return [p.strip() for p in self.fabric_peers.split(",") if p.strip()]

    def fabric_client_tls(self) -> tuple[bytes, bytes] | None:
        """The client TLS certificate and key PEM (None: not set), read now.

        Read where the ledger client is built rather than in check(): every command
        checks its settings, and most never touch the ledger or its files.
        """
        if not self.fabric_tls_cert:
            return None
        return (
            _read_pem("SAGA_FABRIC_TLS_CERT", self.fabric_tls_cert),
            _read_pem("SAGA_FABRIC_TLS_KEY", self.fabric_tls_key),
        )

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with the psycopg 3 driver spelled out for SQLAlchemy."""
        url = self.database_url
        for plain in ("postgresql://", "postgres://"):
            if url.startswith(plain):
                return "postgresql+psycopg://" + url[len(plain) :]
        return url

    def redacted(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if (f.name in ("api_token", "ui_session_secret") and value) or (
                f.name == "fabric_tls_key" and _is_pem(value)
            ):
                value = "***"
            elif f.name == "ui_users" and value:
                # Names and roles only: a password hash is still something to guess against.
                value = ",".join(u.rsplit(":", 1)[0] + ":***" for u in value.split(",") if u)
            elif f.name == "fabric_tls_cert" and _is_pem(value):
                # Not a secret, but many lines: `saga config` prints one per setting.
                value = "(inline PEM)"
            elif isinstance(value, str) and "://" in value and "@" in value:
                # A broker URL may list several nodes, `;`-separated: each its own URL.
                value = ";".join(_redact_url(part) for part in value.split(";"))
            out[PREFIX + f.name.upper()] = value
        return out
