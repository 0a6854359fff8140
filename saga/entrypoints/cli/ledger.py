"""`saga ledger ping`: is the configured Fabric gateway there, and how fast does it answer?

`saga ledger ping` goes the way a chain step goes, through the same client the
workers use (built by the Container from the SAGA_FABRIC_* settings): the query
system chaincode's GetChainInfo on the configured channel (the gateway peer, and
the identity's right to read the channel), then, for each chaincode the saga
definitions' chain steps call, a read-only query of it and an endorsement of that
query that is never submitted (every organisation the endorsement policy needs).
Nothing is written. Whichever part does not answer is named.

`saga ledger tx TXID` looks one transaction up (saga.adapters.fabric.tx_lookup).
"""

from __future__ import annotations

import json
import time
from importlib import import_module
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from saga.config import Settings
from saga.entrypoints.cli._common import (
    REFUSED,
    USAGE,
    JsonOpt,
    container,
    fail,
    out,
    print_json,
    settings,
)

if TYPE_CHECKING:
    from saga.adapters.fabric import GatewayEndpoint, GatewayError, SigningIdentity
    from saga.bootstrap import Container

# No stubs ship with the protos (see saga.adapters.fabric.protos); loaded when a ping runs.
_LEDGER_PB2 = "fabric_protos.common.ledger_pb2"

app = typer.Typer(
    help="The Fabric ledger the chain steps write to (SAGA_FABRIC_* settings).",
    no_args_is_help=True,
)

ProfileOpt = Annotated[
    str | None,
    typer.Option(
        "--profile", help="Connection profile of the client org (overrides SAGA_FABRIC_PROFILE)."
    ),
]
MspDirOpt = Annotated[
    str | None,
    typer.Option(
        "--msp-dir",
        help="The client identity's MSP folder, signcerts/ and keystore/ "
        "(overrides SAGA_FABRIC_MSP_DIR).",
    ),
]
PeerOpt = Annotated[
    str | None,
    typer.Option("--peer", help="Peer name in the profile (overrides SAGA_FABRIC_PEER)."),
]
ChannelOpt = Annotated[
    str | None,
    typer.Option("--channel", help="Channel to read (overrides SAGA_FABRIC_CHANNEL)."),
]


_FILE_SETTINGS = (
    "SAGA_FABRIC_PROFILE",
    "SAGA_FABRIC_MSP_DIR",
    "SAGA_FABRIC_MSP_ID",
    "SAGA_FABRIC_PEER",
)
_CLIENT_TLS_SETTINGS = ("SAGA_FABRIC_TLS_CERT", "SAGA_FABRIC_TLS_KEY")
NO_CLIENT_CERT_HINT = (
    "the peer may require a client TLS certificate (mutual TLS); set SAGA_FABRIC_TLS_CERT "
    "and SAGA_FABRIC_TLS_KEY to the client's TLS certificate and key "
    "(e.g. .../users/User1@org1.example.com/tls/client.crt and client.key)"
)


def _client_tls_settings(s: Settings) -> tuple[str, ...]:
    # Named in a hint only when set: most peers do not ask for a client certificate.
    return _CLIENT_TLS_SETTINGS if s.fabric_tls_cert or s.fabric_tls_key else ()


def _settings_hint(s: Settings, *names: str) -> str:
    shown = s.redacted()
    return "check " + ", ".join(f"{n} (now {shown[n] or 'unset'!s})" for n in names)


def _ledger_container(s: Settings) -> Container:
    if not s.ledger_configured:
        fail(
            USAGE,
            "no ledger configured",
            "set SAGA_FABRIC_PROFILE (the connection profile, e.g. connection-org1.json) and "
            "SAGA_FABRIC_MSP_DIR (the client's MSP folder), or give --profile and --msp-dir",
        )
    c = container(s)
    try:
        c.fabric_access()
    except (OSError, ValueError) as exc:
        fail(
            USAGE,
            f"the Fabric settings do not load: {exc}",
            _settings_hint(s, *_FILE_SETTINGS, *_client_tls_settings(s)),
        )
    return c


def _peer_name(s: Settings, endpoint: GatewayEndpoint) -> str:
    """The profile's name for the peer the client dials (the address if none matches)."""
    if s.fabric_peer:
        return s.fabric_peer
    from saga.adapters.fabric import load_connection_profile

    profile = load_connection_profile(s.fabric_profile)
    for name, candidate in profile.peers.items():
        if candidate == endpoint.without_client_tls():
            return name
    return endpoint.address


@app.command("ping")
def ping(
    count: Annotated[
        int, typer.Option("--count", "-c", min=1, help="Ask this many times, one after another.")
    ] = 1,
    timeout: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help="Seconds to wait for each answer (default: SAGA_FABRIC_EVALUATE_TIMEOUT).",
            show_default=False,
        ),
    ] = None,
    profile: ProfileOpt = None,
    msp_dir: MspDirOpt = None,
    peer: PeerOpt = None,
    channel: ChannelOpt = None,
    chaincode: Annotated[
        str | None,
        typer.Option(
            "--chaincode",
            help="Ask this chaincode instead of those the saga definitions' chain steps call "
            "(SAGA_DEFINITIONS); sagafacts convention: a GetRecord query of a probe key.",
            show_default=False,
        ),
    ] = None,
    gateway_only: Annotated[
        bool,
        typer.Option("--gateway-only", help="Ask only the gateway peer, no chaincode."),
    ] = False,
    orderers: Annotated[
        bool,
        typer.Option(
            "--orderers",
            help="Also ask each orderer of the channel's config for the newest block "
            "(Deliver, read-only; a real Fabric network, not the devnet).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Ask the configured Fabric gateway peer for the channel's height; print who answered.

    One qscc GetChainInfo query (read-only, nothing endorsed or written) per
    --count, through the client the workers use, as the configured identity.
    Prints the peer, its address, the channel's height and each round trip; the
    first one includes opening the connection (TLS handshake).

    With SAGA_FABRIC_TLS_CERT and SAGA_FABRIC_TLS_KEY set it connects with mutual
    TLS; a peer that requires it and got no client certificate is named as such.

    Then, as a chain step would, for each chaincode the saga definitions' chain
    steps call (or the one --chaincode names): one read-only query of it on the
    gateway peer, and an endorsement of that query, never submitted, which the
    gateway collects from every organisation the chaincode's endorsement policy
    needs. So a chaincode that is not running, not committed on the channel, or
    registered with another package id than the peer installed, and a peer of
    another organisation that is down, are each told apart from a gateway peer that
    is away. With --orderers, each orderer the channel's config names is asked for
    the channel's newest block (its Deliver service, as the configured identity):
    one that does not answer is named, and fewer than a majority answering means
    the ordering service cannot order (exit 1). The devnet orders in process and
    serves no Deliver, so --orderers is for a real network.

    Exit codes: 0 every part answered; 1 the gateway peer, a chaincode, an
    endorsing organisation or (with --orderers) a majority of the orderers did not
    answer or refused; 2 bad options, no ledger configured, its files or the saga
    definitions do not load.
    """
    from saga.adapters.fabric import GatewayError

    s = settings(
        fabric_profile=profile, fabric_msp_dir=msp_dir, fabric_peer=peer, fabric_channel=channel
    )
    if gateway_only and chaincode:
        fail(USAGE, "--gateway-only asks no chaincode: give --chaincode NAME or --gateway-only")
    c = _ledger_container(s)
    if gateway_only:
        targets: list[tuple[str, str]] = []
    elif chaincode:
        targets = [(s.fabric_channel, chaincode)]
    else:
        targets = _chain_targets(c, s)
    endpoint, identity = c.fabric_access()
    name = _peer_name(s, endpoint)
    deadline = s.fabric_evaluate_timeout if timeout is None else timeout
    ledger_pb2: Any = import_module(_LEDGER_PB2)
    round_trips: list[float] = []
    info: Any = None
    where = f"{name} at {endpoint.address}"
    with c.query_client(endpoint) as client:
        for _ in range(count):
            started = time.perf_counter()
            try:
                raw = client.evaluate(
                    s.fabric_channel, "qscc", "GetChainInfo", [s.fabric_channel], timeout=deadline
                )
            except GatewayError as exc:
                _explain(exc, s, endpoint, where, deadline)
            round_trips.append((time.perf_counter() - started) * 1000)
            try:
                info = ledger_pb2.BlockchainInfo.FromString(raw)
            except Exception as exc:  # protobuf DecodeError: something else answered
                fail(
                    REFUSED,
                    f"{where} answered, but not with the channel's chain info ({exc})",
                    _settings_hint(s, "SAGA_FABRIC_PROFILE", "SAGA_FABRIC_PEER"),
                )
        checked = [_check_chaincode(client, ch, cc, where, deadline) for ch, cc in targets]
        ordering = (
            _check_orderers(client, s.fabric_channel, identity, endpoint, deadline, where)
            if orderers
            else None
        )
    chaincode_ms = checked[0]["round_trip_ms"] if checked else None
    result = {
        "peer": name,
        "address": endpoint.address,
        "tls": endpoint.tls_root_certs is not None,
        "mutual_tls": endpoint.client_cert is not None,
        "msp_id": identity.msp_id,
        "channel": s.fabric_channel,
        "query": "qscc GetChainInfo",
        "height": int(info.height),
        "current_block_hash": bytes(info.currentBlockHash).hex(),
        "round_trip_ms": [round(ms, 3) for ms in round_trips],
        "chaincode": checked[0]["name"] if checked else None,
        "chaincode_round_trip_ms": chaincode_ms,
        "chaincodes": checked,
        "orderers": ordering,
    }
    if as_json:
        print_json(result)
        return
    transport = "mutual TLS" if result["mutual_tls"] else "TLS" if result["tls"] else "plaintext"
    out.print(
        f"{name} at {endpoint.address} ({transport}) answered for channel {s.fabric_channel} "
        f"as {identity.msp_id}: height {result['height']}",
        highlight=False,
        soft_wrap=True,
    )
    for n, ms in enumerate(round_trips, 1):
        first = " (includes connecting)" if n == 1 else ""
        out.print(f"  query {n}: round trip {ms:.1f} ms{first}", highlight=False)
    if len(round_trips) > 1:
        out.print(
            f"  min/avg/max {min(round_trips):.1f}/{sum(round_trips) / len(round_trips):.1f}/"
            f"{max(round_trips):.1f} ms",
            highlight=False,
        )
    if ordering is not None:
        up = [o for o in ordering if not o["error"]]
        out.print(
            f"  {len(up)} of {len(ordering)} orderers answered: "
            + ", ".join(f"{o['address']} block {o['newest_block']}" for o in up),
            highlight=False,
            soft_wrap=True,
        )
        for o in ordering:
            if o["error"]:
                out.print(
                    f"  orderer {o['address']} ({o['msp_id']}) did not answer: {o['error']}",
                    highlight=False,
                    soft_wrap=True,
                )
    for cc in checked:
        out.print(
            f"  chaincode {cc['name']} answered in {cc['round_trip_ms']:.1f} ms; its probe was "
            f"endorsed by {', '.join(cc['endorsed_by'])} in {cc['endorse_ms']:.1f} ms "
            "(never submitted)",
            highlight=False,
            soft_wrap=True,
        )


def _check_orderers(
    client: Any,
    channel: str,
    identity: SigningIdentity,
    endpoint: GatewayEndpoint,
    deadline: float,
    where: str,
) -> list[dict[str, Any]]:
    """Each orderer of the channel's config asked for the newest block; exit 1 without a
    majority (Raft and BFT order only with one)."""
    from saga.adapters.fabric import GatewayError
    from saga.adapters.fabric.orderers import ask_orderer, channel_orderers

    try:
        found = channel_orderers(client, channel)
    except GatewayError as exc:
        fail(REFUSED, f"{where} did not give the channel's config: {_what_was_said(exc)}")
    if not found:
        fail(REFUSED, f"the config of channel {channel} names no orderer endpoint")
    answers = [
        ask_orderer(o, identity, channel, client_tls=endpoint, timeout=deadline) for o in found
    ]
    rows = [
        {
            "address": a.orderer.address,
            "msp_id": a.orderer.msp_id,
            "newest_block": a.newest_block,
            "round_trip_ms": round(a.round_trip_ms, 3),
            "error": a.error,
        }
        for a in answers
    ]
    up = sum(1 for a in answers if a.newest_block is not None)
    down = "; ".join(
        f"{a.orderer.address} ({a.orderer.msp_id}): {a.error}" for a in answers if a.error
    )
    if up <= len(answers) // 2:
        fail(
            REFUSED,
            f"the ordering service cannot order: {up} of {len(answers)} orderers answered "
            f"(a majority is needed): {down}",
            "start the orderers that did not answer (their logs say why they stopped); chain "
            "steps wait for them (SAGA_CHAIN_OUTAGE_BUDGET) rather than fail",
        )
    return rows


def _chain_targets(c: Container, s: Settings) -> list[tuple[str, str]]:
    """(channel, chaincode) of every chain step the saga definitions hold, in order."""
    from saga.config import ConfigError

    try:
        registry = c.registry
    except (ConfigError, ImportError) as exc:
        fail(
            USAGE,
            f"the saga definitions do not load, so their chaincodes are unknown: {exc}",
            _settings_hint(s, "SAGA_DEFINITIONS")
            + "; or name the chaincode with --chaincode, or give --gateway-only",
        )
    found: dict[tuple[str, str], None] = {}
    for definition in registry:
        for step in definition.steps:
            if step.chain is not None:
                found[(step.chain.channel or s.fabric_channel, step.chain.chaincode)] = None
    return list(found)


def _check_chaincode(
    client: Any, channel: str, chaincode: str, where: str, deadline: float
) -> dict[str, Any]:
    """A read-only query of the chaincode, then an endorsement of it that is never submitted."""
    from saga.adapters.fabric import GatewayError

    started = time.perf_counter()
    try:
        client.evaluate(channel, chaincode, "GetRecord", [_PROBE_KEY], timeout=deadline)
    except GatewayError as exc:
        _explain_chaincode(exc, chaincode, where, deadline)
    evaluated = time.perf_counter()
    try:
        # The gateway collects this from every organisation the policy needs; the
        # transaction is dropped here, so nothing reaches an orderer or the ledger.
        prepared = client.prepare(channel, chaincode, "GetRecord", [_PROBE_KEY], timeout=deadline)
    except GatewayError as exc:
        _explain_endorsement(exc, chaincode, where)
    done = time.perf_counter()
    return {
        "name": chaincode,
        "channel": channel,
        "round_trip_ms": round((evaluated - started) * 1000, 3),
        "endorse_ms": round((done - evaluated) * 1000, 3),
        "endorsed_by": _endorsers(prepared.envelope),
    }


def _endorsers(envelope: bytes) -> list[str]:
    """The MSP ids that endorsed a prepared transaction."""
    from saga.adapters.fabric.protos import common_pb2, identities_pb2, transaction_pb2

    payload = common_pb2.Payload.FromString(common_pb2.Envelope.FromString(envelope).payload)
    msp_ids: set[str] = set()
    for action in transaction_pb2.Transaction.FromString(payload.data).actions:
        cap = transaction_pb2.ChaincodeActionPayload.FromString(action.payload)
        for endorsement in cap.action.endorsements:
            msp_ids.add(identities_pb2.SerializedIdentity.FromString(endorsement.endorser).mspid)
    return sorted(msp_ids)


# Read-only: GetRecord of a key no saga step ever derives (saga keys are saga:step:purpose).
_PROBE_KEY = "saga-ledger-ping-probe"


def _what_was_said(exc: GatewayError) -> str:
    """The gateway's message and each peer's or orderer's detail, on one line."""
    said = exc.status_message or str(exc)
    for d in exc.details:
        said += f"; {d.address} ({d.msp_id}): {d.message}"
    return said


def _explain_chaincode(exc: GatewayError, chaincode: str, where: str, deadline: float) -> NoReturn:
    """Why the chaincode did not answer, from what the peer said; exit 1."""
    import grpc

    from saga.core.ledger_faults import FaultKind

    said = _what_was_said(exc)
    lowered = said.lower()
    if exc.code is grpc.StatusCode.DEADLINE_EXCEEDED or "timeout expired" in lowered:
        fail(
            REFUSED,
            f"{where} got no answer from chaincode {chaincode} within {deadline:g}s: {said}",
            "if the chaincode runs as a service (CCaaS), check that it was started with "
            "CHAINCODE_ID equal to the package id installed on the peer (peer lifecycle "
            "chaincode queryinstalled): a peer refuses a chaincode registering with another id "
            "and logs 'will not accept external chaincode connection'; clients only see this "
            "deadline. Otherwise the chaincode is overloaded: give a longer --timeout",
        )
    if "could not launch chaincode" in lowered or "connection refused" in lowered:
        fail(
            REFUSED,
            f"chaincode {chaincode} is not running or not reachable from {where}: {said}",
            "start the chaincode server, at the address in its package's connection.json; "
            "chain steps wait for it (SAGA_CHAIN_OUTAGE_BUDGET) rather than fail",
        )
    if exc.fault.kind is FaultKind.MISCONFIGURED:
        fail(REFUSED, f"chaincode {chaincode} cannot be queried: {said}", exc.fault.meaning)
    fail(
        REFUSED,
        f"chaincode {chaincode} refused the probe query on {where}: {said}",
        f"{exc.fault.meaning}; the peer itself answered the channel query",
    )


def _explain_endorsement(exc: GatewayError, chaincode: str, where: str) -> NoReturn:
    """Why the probe's endorsement failed, naming the part that is down; exit 1."""
    from saga.core.ledger_parts import Part, part_down

    said = _what_was_said(exc)
    code = exc.code.name if exc.code is not None else None
    down = part_down(code, exc.status_message or str(exc), exc.details, chaincode=chaincode)
    if down is not None and down.part is Part.ENDORSING_PEER:
        fail(
            REFUSED,
            f"endorsement of chaincode {chaincode} failed: {down.says} "
            f"({where} answered the query itself): {said}",
            "start that organisation's peer, or check that the gateway peer reaches it and "
            "knows it through gossip (anchor peers, CORE_PEER_GOSSIP_EXTERNALENDPOINT); chain "
            "steps wait for it (SAGA_CHAIN_OUTAGE_BUDGET) rather than fail",
        )
    what = f": {down.says}" if down is not None else ""
    fail(
        REFUSED,
        f"endorsement of chaincode {chaincode} through {where} failed{what}: {said}",
        exc.fault.meaning,
    )


def _explain(
    exc: GatewayError, s: Settings, endpoint: GatewayEndpoint, where: str, deadline: float
) -> NoReturn:
    """Turn a failed query into a message that names what to check, and exit 1."""
    import grpc

    from saga.adapters.fabric.connection import may_want_client_certificate

    code = exc.code
    said = _what_was_said(exc)
    peer_settings = ("SAGA_FABRIC_PROFILE", "SAGA_FABRIC_PEER")
    # A Fabric 2.5 peer answers a query on a channel it has not joined with UNAVAILABLE,
    # like an unreachable one: "failed to get config for channel : could not get last
    # config for channel X".
    if code is grpc.StatusCode.UNAVAILABLE and "config for channel" in said:
        fail(
            REFUSED,
            f"{where} refused the query on channel {s.fabric_channel}: it has no such "
            f"channel (UNAVAILABLE: {said})",
            "the peer answered, so the address is right; the channel name is wrong or this "
            "peer has not joined it; " + _settings_hint(s, "SAGA_FABRIC_CHANNEL"),
        )
    if code is grpc.StatusCode.UNAVAILABLE:
        check = (
            "check that the peer runs and is reachable from here, and that the profile's peer "
            "url and tlsCACerts are right; "
        )
        if may_want_client_certificate(endpoint, said):
            check = f"{NO_CLIENT_CERT_HINT}; otherwise {check}"
        elif endpoint.client_cert is not None:
            check += "that the peer trusts the client TLS certificate's CA and it has not expired; "
        fail(
            REFUSED,
            f"no answer from {where}: UNAVAILABLE: {said}",
            check + _settings_hint(s, *peer_settings, *_client_tls_settings(s)),
        )
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        fail(
            REFUSED,
            f"no answer from {where} within {deadline:g}s",
            "the peer is slow or unreachable; give a longer --timeout, or "
            + _settings_hint(s, *peer_settings, "SAGA_FABRIC_EVALUATE_TIMEOUT"),
        )
    name = f"{code.name}: " if code is not None else ""
    fail(
        REFUSED,
        f"{where} refused the query on channel {s.fabric_channel}: {name}{said}",
        "the peer answered, so the address is right; "
        + _settings_hint(s, "SAGA_FABRIC_CHANNEL", "SAGA_FABRIC_MSP_DIR", "SAGA_FABRIC_MSP_ID"),
    )


NOT_FOUND = 3


@app.command("tx")
def tx(
    txid: Annotated[str, typer.Argument(help="Transaction id (64 hex digits; `saga show ID`).")],
    timeout: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help="Seconds to wait for each answer (default: SAGA_FABRIC_EVALUATE_TIMEOUT).",
            show_default=False,
        ),
    ] = None,
    profile: ProfileOpt = None,
    msp_dir: MspDirOpt = None,
    peer: PeerOpt = None,
    channel: ChannelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Look a transaction up on the ledger: validation code, block, and its key's record.

    Asks the gateway peer (qscc GetTransactionByID and GetBlockByTxID), reads the
    saga records the transaction writes from its read/write set, and asks the
    chaincode (GetRecord) what it holds under each of those idempotency keys now:
    a record written by another txid means another transaction of the step took
    effect. Read-only.

    Exit codes: 0 the ledger has the transaction (whatever its validation code);
    3 the ledger has no transaction with this id (never ordered, or not committed
    yet); 1 the peer or the chaincode did not answer; 2 not a txid, or no ledger
    configured.
    """
    from saga.adapters.fabric import GatewayError
    from saga.adapters.fabric.tx_lookup import TransactionNotFound, check_txid, lookup_transaction

    try:
        wanted = check_txid(txid)
    except ValueError as exc:
        fail(USAGE, str(exc))
    s = settings(
        fabric_profile=profile, fabric_msp_dir=msp_dir, fabric_peer=peer, fabric_channel=channel
    )
    c = _ledger_container(s)
    deadline = s.fabric_evaluate_timeout if timeout is None else timeout
    endpoint, _ = c.fabric_access()
    where = f"{_peer_name(s, endpoint)} at {endpoint.address}"
    with c.query_client(endpoint) as client:
        try:
            found = lookup_transaction(client, s.fabric_channel, wanted, timeout=deadline)
        except TransactionNotFound:
            fail(
                NOT_FOUND,
                f"transaction {wanted} is not on channel {s.fabric_channel} ({where} has no "
                "transaction with this id)",
                "it was never ordered, or is not committed yet: a submitted transaction is "
                "committed within seconds while the orderers run; a step that recorded it "
                "resubmits the same envelope when resumed (`saga resume ID`), never a new one",
            )
        except GatewayError as exc:
            from saga.core.ledger_parts import part_down

            code = exc.code.name if exc.code is not None else None
            down = part_down(code, exc.status_message or str(exc), exc.details)
            what = down.says if down is not None else exc.fault.meaning
            fail(
                REFUSED,
                f"the ledger did not answer about transaction {wanted}: {what}: "
                f"{_what_was_said(exc)}",
                "`saga ledger ping` names the part that is down",
            )
    if as_json:
        print_json(found.as_dict())
        return
    state = (
        "VALID" if found.valid else f"{found.validation_code_name} (invalid: it changed nothing)"
    )
    when = f", {found.timestamp.isoformat(timespec='seconds')}" if found.timestamp else ""
    out.print(
        f"transaction {found.txid} is {state} in block {found.block} on channel "
        f"{found.channel} (chaincode {found.chaincode}{when})",
        highlight=False,
        soft_wrap=True,
    )
    if not found.records:
        out.print("  it writes no saga record", highlight=False)
    for r in found.records:
        if r.record is None:
            said = "no record (nothing took effect under this key)"
        elif r.written_by == found.txid:
            said = "written by this transaction"
        else:
            said = f"written by transaction {r.written_by}"
        out.print(f"  record {r.key}: {said}", highlight=False, soft_wrap=True)
        if r.record is not None:
            out.print(
                f"    {json.dumps(r.record, sort_keys=True)}", highlight=False, soft_wrap=True
            )
