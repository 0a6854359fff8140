"""Every ```sh command of runbooks/ runs, as written, against a test deployment.

The deployment (tests/support/runbook_deployment.py, its situations in
runbook_situations.py, the blocks read and run by runbook_blocks.py): real PostgreSQL, per-module
RabbitMQ queues, a devnet with the sagafacts chaincode, and the `saga relay`,
`saga worker`, `saga api` and (when a runbook needs it) `saga watcher`
processes. Each runbook's situations (a saga whose message was lost, one marked
stuck by the sweeper, a chain step PREPARED by a worker that died, one
SUBMITTED in the database and VALID on the ledger while no watcher runs, dead
letters, a new client certificate) are made first with the product's own code;
then each block runs in bash with the SAGA_* environment and the variables the
situation sets ($SAGA_ID, $TXID, $MESSAGE_ID, $NEW_MSP_DIR, $SAGA_API_URL). A
command that exits other than 0 (or the N of a `# exits N ...` line above it)
fails the test with its runbook and line. Once a situation's blocks ran, its
saga must have reached the status the situation says (the fix really fixed it).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ledger import LedgerNet
from tests.support.processes import Processes
from tests.support.rabbitmq import delete_topology
from tests.support.runbook_blocks import RUNBOOKS, read_blocks, runbook_paths
from tests.support.runbook_deployment import Deployment
from tests.support.runbook_ha import HA_RUNBOOKS
from tests.support.runbook_situations import Situations, run_runbook

# The HA runbooks run against clusters of their own (tests/integration/test_runbooks_ha.py).
RUNBOOK_NAMES = [p.name for p in runbook_paths() if p.name not in HA_RUNBOOKS]


@pytest.fixture(scope="module")
def deployment(
    _pg_database: str,
    rabbitmq_url: str,
    sagafacts_net: LedgerNet,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    work = tmp_path_factory.mktemp("runbooks")
    d = Deployment.build(_pg_database, rabbitmq_url, sagafacts_net, work, Processes(work / "logs"))
    try:
        yield d
    finally:
        d.close()
        delete_topology(rabbitmq_url, d.settings)


def test_the_index_lists_every_runbook_and_every_block_is_runnable_or_marked() -> None:
    index = (RUNBOOKS / "README.md").read_text()
    known = set(_situation_names())
    for path in runbook_paths():
        assert f"]({path.name})" in index, f"runbooks/README.md does not link {path.name}"
        blocks = read_blocks(path)
        shell = [b for b in blocks if b.language == "sh"]
        assert shell, f"{path.name} has no ```sh block"
        for block in blocks:
            where = f"runbooks/{path.name}:{block.line}"
            assert block.language in ("sh", "console", "text"), (
                f"{where}: fence language {block.language!r}; use sh (run by the test) or "
                "console/text (the operator's environment only)"
            )
            assert block.situation in known, f"{where}: unknown situation {block.situation!r}"
            if block.language == "sh":
                assert block.commands, f"{where}: an empty sh block"
    linked = set(re.findall(r"\]\(([\w-]+\.md)\)", index))
    assert linked <= {p.name for p in runbook_paths()}, (
        f"the index links missing runbooks: {linked}"
    )


def _situation_names() -> list[str]:
    # The builders' names without a deployment: the keys Situations registers.
    support = Path(__file__).parents[1] / "support"
    names: list[str] = []
    for source in (support / "runbook_situations.py", support / "runbook_ha.py"):
        names += re.findall(r'^\s+"([\w-]+)": self\.[\w_]+,$', source.read_text(), re.M)
    return names


@pytest.mark.parametrize("runbook", RUNBOOK_NAMES)
def test_runbook_commands_run(runbook: str, deployment: Deployment) -> None:
    run_runbook(runbook, deployment, Situations(deployment))
