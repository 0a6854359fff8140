"""The compose deployment is a valid Compose file (checked without a container engine
by Debian's docker-compose), runs exactly the commands of compose/processes.toml,
and refuses to start without its secrets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from saga.adapters.rabbitmq.publishers import broker_urls
from saga.config import Settings
from saga.entrypoints.processes import PROCESS_FILE, load_processes
from saga_fabricnet import compose as fabricnet_compose
from saga_fabricnet.compose import FABRIC_VERSION
from saga_fabricnet.material import Layout, Org

COMPOSE_DIR = Path(__file__).resolve().parents[2] / "compose"
BASE = COMPOSE_DIR / "docker-compose.yml"
FABRIC = COMPOSE_DIR / "fabric.yml"
SECRETS = {
    "POSTGRES_PASSWORD": "p",
    "RABBITMQ_PASSWORD": "r",
    "SAGA_API_TOKEN": "t",
    "FLOWER_BASIC_AUTH": "operator:f",
}
FABRIC_ENV = {
    "FABRIC_PROFILE": "/srv/fabric/connection-org1.json",
    "FABRIC_MSP_DIR": "/srv/fabric/User1@org1/msp",
    "SAGA_FABRIC_CHANNEL": "payments",
}
# Services that do not run a process of the list: the backing services and a
# compose-only step (the devnet's profile for the other containers).
INFRA = {"postgres", "rabbitmq", "devnet-profile"}
SAGA_PROCESSES = ("api", "relay", "worker", "watcher", "chain-executor", "beat", "flower")


def _config(env: dict[str, str], *files: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is not installed; scripts/test.sh installs it (apt)"
    args = [binary]
    for f in files or (BASE,):
        args += ["-f", str(f)]
    return subprocess.run(
        [*args, "config"],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _services(env: dict[str, str], *files: Path) -> dict[str, Any]:
    result = _config(env, *files)
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
    return services


def test_every_process_of_the_list_is_a_service_with_its_command() -> None:
    services = _services(SECRETS)
    processes = {p.name: p for p in load_processes()}
    assert set(services) == set(processes) | INFRA, f"{PROCESS_FILE} and {BASE} disagree"
    for name, spec in processes.items():
        assert services[name]["command"] == list(spec.command), name
        # One image for every process of the orchestrator.
        assert services[name]["image"] == "saga-orchestrator:latest", name


def test_saga_processes_are_wired_to_the_services_and_the_devnet() -> None:
    services = _services(SECRETS)
    for name in (*SAGA_PROCESSES, "migrate"):
        env = services[name]["environment"]
        assert env["SAGA_DATABASE_URL"].startswith("postgresql://saga:p@postgres"), name
        assert env["SAGA_BROKER_URL"].startswith("amqp://saga:r@rabbitmq"), name
        assert env["SAGA_FABRIC_PROFILE"] == "/var/lib/saga/fabric/connection-org1.json"
        assert "User1@org1.example.com/msp" in env["SAGA_FABRIC_MSP_DIR"]
    for name in SAGA_PROCESSES:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["rabbitmq"]["condition"] == "service_healthy", name
        # Nothing here may depend on the devnet: compose/fabric.yml switches it off.
        assert not {"devnet", "chaincode", "devnet-profile"} & set(depends), name
    # Bearer auth on by default; the API listens on the container's interfaces.
    assert services["api"]["environment"]["SAGA_API_TOKEN"] == "t"
    assert services["api"]["environment"]["SAGA_API_HOST"] == "0.0.0.0"
    # Flower with basic auth from the environment, never on the command line.
    flower = services["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "operator:f"
    assert "args" in flower["environment"]["FLOWER_TASKS_COLUMNS"]
    assert not any("basic" in word for word in flower["command"])
    # Workers scale: nothing that two copies could not share.
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker
    # RabbitMQ has its own user, never guest, and the management plugin.
    rabbit = services["rabbitmq"]
    assert rabbit["environment"]["RABBITMQ_DEFAULT_USER"] == "saga"
    assert rabbit["image"].endswith("-management")
    # The devnet dials the chaincode service; its profile is rewritten for the others.
    seed = yaml.safe_load((COMPOSE_DIR / "devnet-seed.yaml").read_text())
    chaincode = services["chaincode"]["environment"]
    assert seed["chaincodes"]["sagafacts"]["address"] == "chaincode:9999"
    assert chaincode["CHAINCODE_SERVER_ADDRESS"].endswith(":9999")
    assert seed["chaincodes"]["sagafacts"]["package_id"] == chaincode["CHAINCODE_ID"]
    assert services["devnet-profile"]["command"][-1] == "devnet"
    assert services["devnet-profile"]["depends_on"]["devnet"]["condition"] == "service_healthy"


def test_fabric_override_mounts_a_real_network_read_only_and_drops_the_devnet() -> None:
    services = _services({**SECRETS, **FABRIC_ENV}, BASE, FABRIC)
    for name in ("chaincode", "devnet", "devnet-profile"):
        assert services[name].get("profiles") == ["devnet"], name
    for name in SAGA_PROCESSES:
        env = services[name]["environment"]
        assert env["SAGA_FABRIC_PROFILE"] == "/etc/saga/fabric/connection.json", name
        assert env["SAGA_FABRIC_MSP_DIR"] == "/etc/saga/fabric/msp", name
        assert env["SAGA_FABRIC_CHANNEL"] == "payments", name
        mounts = {v["target"]: v for v in services[name]["volumes"] if isinstance(v, dict)} or {
            str(v).split(":")[1]: {"read_only": str(v).endswith(":ro"), "source": v}
            for v in services[name]["volumes"]
        }
        for target, source in (
            ("/etc/saga/fabric/connection.json", FABRIC_ENV["FABRIC_PROFILE"]),
            ("/etc/saga/fabric/msp", FABRIC_ENV["FABRIC_MSP_DIR"]),
        ):
            assert target in mounts, (name, mounts)
            assert mounts[target]["read_only"], (name, target)
            assert source in str(mounts[target]["source"]), (name, target)


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_start_without_each_secret(missing: str) -> None:
    env = {k: v for k, v in SECRETS.items() if k != missing}
    result = _config(env)
    assert result.returncode != 0
    assert missing in result.stderr


@pytest.mark.parametrize("missing", sorted(FABRIC_ENV))
def test_fabric_override_refuses_without_its_profile_identity_and_channel(missing: str) -> None:
    env = {k: v for k, v in {**SECRETS, **FABRIC_ENV}.items() if k != missing}
    result = _config(env, BASE, FABRIC)
    assert result.returncode != 0
    assert missing in result.stderr


def test_every_secret_in_the_compose_files_comes_from_the_environment() -> None:
    assert not (COMPOSE_DIR / ".env").exists(), "an .env file holds secrets: never commit one"
    raw = yaml.safe_load(BASE.read_text())
    envs = [raw["x-saga-env"]] + [s.get("environment") or {} for s in raw["services"].values()]
    checked = 0
    for env in envs:
        for key, value in env.items():
            if any(word in key for word in ("PASS", "TOKEN", "AUTH", "_URL", "BROKER_API")):
                if "://" in str(value) and "@" not in str(value):
                    continue  # a URL without credentials
                assert "${" in str(value), (key, value)
                checked += 1
    assert checked >= 6


# -- a real Fabric network as the ledger (compose/fabric-network.yml) --------------

FABRIC_NETWORK = COMPOSE_DIR / "fabric-network.yml"
SETUP_JOBS = {"fabric-init": "init", "fabric-setup": "deploy"}


def _network_services(**env: str) -> dict[str, Any]:
    return _services({**SECRETS, **env}, BASE, FABRIC_NETWORK)


def _mounts(spec: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """target -> (source, "ro" or "rw"), from docker-compose 1's short strings or the
    long form newer versions print."""
    out = {}
    for volume in spec["volumes"]:
        if isinstance(volume, dict):
            mode = "ro" if volume.get("read_only") else "rw"
            out[volume["target"]] = (str(volume["source"]), mode)
        else:
            source, target, *rest = str(volume).split(":")
            out[target] = (source, rest[0] if rest else "rw")
    return out


def test_fabric_network_runs_the_official_images_pinned() -> None:
    services = _network_services()
    orderers = [s for s in services if s.startswith("orderer")]
    peers = [s for s in services if s.startswith("peer")]
    assert orderers == [f"orderer{n}.example.com" for n in range(3)]
    assert peers == ["peer0.org1.example.com", "peer0.org2.example.com"]
    assert [*orderers, *peers] == fabricnet_compose.services()
    for name in orderers:
        assert services[name]["image"] == f"hyperledger/fabric-orderer:{FABRIC_VERSION}"
        assert services[name]["command"] == ["orderer"]
    for name in peers:
        assert services[name]["image"] == f"hyperledger/fabric-peer:{FABRIC_VERSION}"
        assert services[name]["command"] == ["peer", "node", "start"]
    # The setup image's Fabric CLIs are of the same release as the nodes.
    dockerfile = (COMPOSE_DIR / "Dockerfile").read_text()
    assert f"ARG FABRIC_VERSION={FABRIC_VERSION}\n" in dockerfile
    assert "FROM hyperledger/fabric-tools:${FABRIC_VERSION} AS fabric-tools" in dockerfile
    assert "FROM app AS fabric-setup" in dockerfile
    # The orchestrator's image is still the Dockerfile's default (last) stage.
    assert dockerfile.rstrip().splitlines()[-1] == "FROM app"


def test_fabric_nodes_have_the_launchers_environment_with_service_names() -> None:
    services = _network_services()
    data_volumes = set()
    for name in fabricnet_compose.services():
        node = services[name]
        env = {k: str(v) for k, v in node["environment"].items()}
        # `python -m saga_fabricnet.compose env <service>` regenerates a block.
        assert env == fabricnet_compose.node_environment(name), name
        assert node["depends_on"]["fabric-init"]["condition"] == "service_completed_successfully"
        mounts = _mounts(node)
        assert mounts[str(fabricnet_compose.ROOT)] == ("fabricnet", "ro"), name
        data_volumes.add(mounts[fabricnet_compose.NODE_DATA][0])
        assert "ports" not in node, "nothing outside the compose network needs a node"
    assert len(data_volumes) == len(fabricnet_compose.services()), "a ledger volume each"
    # TLS everywhere, LevelDB, the gateway on.
    for name in fabricnet_compose.services():
        env = services[name]["environment"]
        if name.startswith("orderer"):
            assert env["ORDERER_GENERAL_TLS_ENABLED"] == "true"
            assert env["ORDERER_ADMIN_TLS_CLIENTAUTHREQUIRED"] == "true"
            assert env["ORDERER_GENERAL_BOOTSTRAPMETHOD"] == "none"
        else:
            assert env["CORE_PEER_TLS_ENABLED"] == "true"
            assert env["CORE_PEER_GATEWAY_ENABLED"] == "true"
            assert env["CORE_LEDGER_STATE_STATEDATABASE"] == "goleveldb"
            assert (
                env["CORE_PEER_GOSSIP_EXTERNALENDPOINT"]
                == f"{name}:{env['CORE_PEER_ADDRESS'].split(':')[1]}"
            )


def test_fabric_setup_jobs_run_saga_fabricnet_compose_commands_that_exist() -> None:
    services = _network_services(SAGA_FABRIC_CHANNEL="payments")
    for job, command in SETUP_JOBS.items():
        spec = services[job]
        assert spec["command"][:4] == ["python", "-m", "saga_fabricnet.compose", command], job
        assert spec["build"]["target"] == "fabric-setup", job
        assert "restart" not in spec, f"{job} is one-shot"
        assert _mounts(spec)[str(fabricnet_compose.ROOT)] == ("fabricnet", "rw"), job
        # The same entry point, here, without a container: the command parses.
        result = subprocess.run(
            [sys.executable, *spec["command"][1:], "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert command in result.stdout
    # One channel name for the network and its clients.
    init = services["fabric-init"]["command"]
    assert init[init.index("--channel") + 1] == "payments"
    assert services["api"]["environment"]["SAGA_FABRIC_CHANNEL"] == "payments"
    # Deployment waits for every node and the chaincode to be started.
    depends = services["fabric-setup"]["depends_on"]
    assert set(depends) == {*fabricnet_compose.services(), "chaincode"}


def test_chaincode_serves_the_real_network_under_the_computed_package_id() -> None:
    services = _network_services()
    chaincode = services["chaincode"]
    assert chaincode["command"] == ["python", "-m", "saga_fabricnet.compose", "chaincode"]
    assert chaincode["depends_on"]["fabric-init"]["condition"] == "service_completed_successfully"
    # The peers dial connection.json's address: this service's name and port.
    port = fabricnet_compose.ports().chaincode
    assert fabricnet_compose.CHAINCODE_HOST == "chaincode"
    assert chaincode["environment"]["CHAINCODE_SERVER_ADDRESS"] == f"0.0.0.0:{port}"
    help_text = subprocess.run(
        [sys.executable, "-m", "saga_fabricnet.compose", "chaincode", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert help_text.returncode == 0, help_text.stderr
    for name in ("devnet", "devnet-profile"):
        assert services[name].get("profiles") == ["devnet"], name


def test_product_services_use_the_network_once_fabric_setup_succeeded() -> None:
    services = _network_services()
    layout = Layout(fabricnet_compose.ROOT)
    org1 = Org(1)
    for name in SAGA_PROCESSES:
        spec = services[name]
        depends = spec["depends_on"]
        assert depends["fabric-setup"]["condition"] == "service_completed_successfully", name
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["rabbitmq"]["condition"] == "service_healthy", name
        env = spec["environment"]
        assert env["SAGA_FABRIC_PROFILE"] == str(layout.profile(org1)), name
        assert env["SAGA_FABRIC_MSP_DIR"] == str(layout.user_dir(org1) / "msp"), name
        assert _mounts(spec)[str(fabricnet_compose.ROOT)] == ("fabricnet", "ro"), name
    # What the base file sets for them is still there (merged, not replaced).
    assert services["api"]["environment"]["SAGA_API_HOST"] == "0.0.0.0"
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"] == "operator:f"


def test_fabric_network_override_still_needs_the_secrets() -> None:
    env = {k: v for k, v in SECRETS.items() if k != "POSTGRES_PASSWORD"}
    result = _config(env, BASE, FABRIC_NETWORK)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


# -- the highly available topology (compose/ha.yml) --------------------------------

HA = COMPOSE_DIR / "ha.yml"
HA_SECRETS = {
    **SECRETS,
    **FABRIC_ENV,
    "RABBITMQ_ERLANG_COOKIE": "c00k1e",
    "REPLICATION_PASSWORD": "rp",
}
HA_FILES = (BASE, FABRIC, HA)
RABBIT_NODES = ("rabbitmq", "rabbitmq-2", "rabbitmq-3")


def test_ha_runs_three_rabbitmq_nodes_with_one_cookie_in_one_cluster() -> None:
    services = _services(HA_SECRETS, *HA_FILES)
    conf = (COMPOSE_DIR / "ha" / "rabbitmq-cluster.conf").read_text()
    for name in RABBIT_NODES:
        node = services[name]
        assert node["hostname"] == name
        assert f"= rabbit@{name}\n" in conf, f"{name} is not a peer of the cluster"
        assert node["environment"]["SAGA_ERLANG_COOKIE"] == "c00k1e", name
        mounts = _mounts(node)
        assert mounts["/etc/rabbitmq/conf.d/20-saga-cluster.conf"][1] == "ro", name
        assert mounts["/etc/saga-ha/rabbitmq-node.sh"][1] == "ro", name
        assert node["entrypoint"] == ["/bin/sh", "/etc/saga-ha/rabbitmq-node.sh"], name
    data = {_mounts(services[n])["/var/lib/rabbitmq"][0] for n in RABBIT_NODES}
    assert len(data) == 3, "each node needs a data volume of its own"
    # The node script writes the cookie where the server and rabbitmqctl read it.
    script = (COMPOSE_DIR / "ha" / "rabbitmq-node.sh").read_text()
    assert "/var/lib/rabbitmq/.erlang.cookie" in script
    assert 'exec docker-entrypoint.sh "$@"' in script


def test_ha_runs_a_primary_and_a_pg_basebackup_standby_in_synchronous_replication() -> None:
    services = _services(HA_SECRETS, *HA_FILES)
    primary, standby = services["postgres"], services["postgres-standby"]
    settings = primary["command"][2::2]
    assert "synchronous_commit=on" in settings and "synchronous_standby_names=*" in settings
    assert "wal_level=replica" in settings
    init = _mounts(primary)["/docker-entrypoint-initdb.d/50-replication.sh"]
    assert init[1] == "ro"
    assert (
        "pg_create_physical_replication_slot('saga_standby')"
        in (COMPOSE_DIR / "ha" / "postgres-primary-init.sh").read_text()
    )
    assert standby["image"] == primary["image"]
    assert standby["depends_on"]["postgres"]["condition"] == "service_healthy"
    script = (COMPOSE_DIR / "ha" / "postgres-standby.sh").read_text()
    assert "pg_basebackup" in script and " -R " in script and "-S saga_standby" in script
    assert (
        _mounts(standby)["/var/lib/postgresql/data"][0]
        != _mounts(primary)["/var/lib/postgresql/data"][0]
    )
    # Restarted by compose after a failover, the old primary would take writes too.
    assert primary["restart"] == "no" and standby["restart"] == "no"


def test_ha_scripts_are_valid_shell() -> None:
    for script in sorted((COMPOSE_DIR / "ha").glob("*.sh")):
        result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, (script.name, result.stderr)


def test_every_ha_process_gets_every_member_and_the_settings_accept_them() -> None:
    services = _services(HA_SECRETS, *HA_FILES)
    for name in (*SAGA_PROCESSES, "migrate"):
        env = {k: str(v) for k, v in services[name]["environment"].items()}
        assert broker_urls(env["SAGA_BROKER_URL"]) == [
            f"amqp://saga:r@{node}:5672//" for node in RABBIT_NODES
        ], name
        assert env["SAGA_DATABASE_URL"] == (
            "postgresql://saga:p@/saga?host=postgres:5432&host=postgres-standby:5432"
            "&target_session_attrs=read-write"
        ), name
        settings = Settings.from_env(env)
        assert settings.queue_type == "quorum", name
        if name != "migrate":
            assert settings.fabric_peer_names() == [
                "peer0.org1.example.com",
                "peer1.org1.example.com",
            ], name
            depends = services[name]["depends_on"]
            for node in RABBIT_NODES:
                assert depends[node]["condition"] == "service_healthy", (name, node)
            # What the base file and fabric.yml set is still there (merged).
            assert env["SAGA_FABRIC_PROFILE"] == "/etc/saga/fabric/connection.json", name
    assert services["api"]["environment"]["SAGA_API_HOST"] == "0.0.0.0"


@pytest.mark.parametrize("missing", ["RABBITMQ_ERLANG_COOKIE", "REPLICATION_PASSWORD"])
def test_ha_refuses_to_start_without_its_secrets(missing: str) -> None:
    env = {k: v for k, v in HA_SECRETS.items() if k != missing}
    result = _config(env, *HA_FILES)
    assert result.returncode != 0
    assert missing in result.stderr


# -- the HA topology on the compose Fabric network (compose/fabric-network-ha.yml) -----

FABRIC_NETWORK_HA = COMPOSE_DIR / "fabric-network-ha.yml"
HA_NETWORK_SECRETS = {k: v for k, v in HA_SECRETS.items() if k not in FABRIC_ENV}
HA_NETWORK_FILES = (BASE, FABRIC_NETWORK, FABRIC_NETWORK_HA, HA)
PEER1 = "peer1.org1.example.com"


def test_ha_network_adds_peer1_org1_with_the_launchers_environment() -> None:
    services = _services(HA_NETWORK_SECRETS, *HA_NETWORK_FILES)
    ha_options = fabricnet_compose.options(org1_peers=2)
    assert fabricnet_compose.services(2) == [*fabricnet_compose.services(), PEER1]
    assert [s for s in services if s.startswith("peer")] == [
        "peer0.org1.example.com",
        "peer0.org2.example.com",
        PEER1,
    ]
    peer1 = services[PEER1]
    assert peer1["image"] == f"hyperledger/fabric-peer:{FABRIC_VERSION}"
    assert peer1["command"] == ["peer", "node", "start"]
    assert peer1["restart"] == "unless-stopped"
    assert peer1["depends_on"]["fabric-init"]["condition"] == "service_completed_successfully"
    data_volumes = set()
    for name in fabricnet_compose.services(2):
        env = {k: str(v) for k, v in services[name]["environment"].items()}
        # Merged with fabric-network.yml, each node's environment is the launcher's for
        # the two-peer Org1 (peer0.org1's gossip bootstrap is peer1.org1 and back).
        assert env == fabricnet_compose.node_environment(name, ha_options), name
        mounts = _mounts(services[name])
        assert mounts[str(fabricnet_compose.ROOT)] == ("fabricnet", "ro"), name
        data_volumes.add(mounts[fabricnet_compose.NODE_DATA][0])
    assert len(data_volumes) == len(fabricnet_compose.services(2)), "a ledger volume each"
    assert services[PEER1]["environment"]["CORE_PEER_ADDRESS"] == f"{PEER1}:10051"
    assert services["peer0.org1.example.com"]["environment"]["CORE_PEER_GOSSIP_BOOTSTRAP"] == (
        f"{PEER1}:10051"
    )
    assert services[PEER1]["environment"]["CORE_PEER_GOSSIP_BOOTSTRAP"] == (
        "peer0.org1.example.com:7051"
    )
    # Each port names one member: peer1's own, none shared with another node.
    p = fabricnet_compose.ports(2)
    peer1_ports = vars(p.peer(1, 1))
    assert all(fabricnet_compose.hosts()[port] == PEER1 for port in peer1_ports.values())


def test_ha_network_setup_makes_and_joins_peer1_and_the_processes_name_both_peers() -> None:
    services = _services(HA_NETWORK_SECRETS, *HA_NETWORK_FILES)
    init = services["fabric-init"]["command"]
    assert init[:4] == ["python", "-m", "saga_fabricnet.compose", "init"]
    assert init[init.index("--org1-peers") + 1] == "2"
    # The job's arguments parse: init accepts --org1-peers 2 (and nothing above the
    # compose files' peers).
    parsed = subprocess.run(
        [sys.executable, *init[1:], "--help"], capture_output=True, text=True, timeout=60
    )
    assert parsed.returncode == 0 and "--org1-peers" in parsed.stdout, parsed.stderr
    with pytest.raises(ValueError):
        fabricnet_compose.options(org1_peers=3)
    # fabric-setup (deploy) joins and installs on every peer of the state init wrote;
    # it waits for peer1 to be started as for the others.
    depends = services["fabric-setup"]["depends_on"]
    assert set(depends) == {*fabricnet_compose.services(2), "chaincode"}
    assert depends[PEER1]["condition"] == "service_started"
    for name in SAGA_PROCESSES:
        env = {k: str(v) for k, v in services[name]["environment"].items()}
        settings = Settings.from_env(env)
        # The gateway peers the processes are told about are the network's Org1 peers.
        assert settings.fabric_peer_names() == [
            org.peer_host(n) for org, n in fabricnet_compose.peer_refs(2) if org.index == 1
        ], name
        assert env["SAGA_FABRIC_PROFILE"] == str(Layout(fabricnet_compose.ROOT).profile(Org(1)))
        assert services[name]["depends_on"]["fabric-setup"]["condition"] == (
            "service_completed_successfully"
        )


def test_ha_network_file_leaves_the_default_network_one_peer_per_org() -> None:
    services = _network_services()
    assert PEER1 not in services
    init = services["fabric-init"]["command"]
    assert "--org1-peers" not in init
    assert services["peer0.org1.example.com"]["environment"]["CORE_PEER_GOSSIP_BOOTSTRAP"] == (
        "peer0.org1.example.com:7051"
    )
