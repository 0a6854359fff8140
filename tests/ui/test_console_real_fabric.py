"""The console on a real Fabric 2.5 network (the launcher's, tools/saga_fabricnet): a
saga's chain step committed there, and the saga page reads the record the sagafacts
chaincode holds for the step's idempotency key, and the transaction's validation
code, through the gateway, when the operator asks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium.webdriver.common.by import By

from saga.config import Settings
from saga.core.chain import VALID
from saga.core.state import SagaStatus
from tests.support import shipment_saga as shipment
from tests.support.browser import Browser
from tests.support.console import (
    OPERATOR,
    ConsoleUnderTest,
    console_running,
    console_settings,
    log_in,
    shipment_until,
)
from tests.support.fabricnet import RealLedgerNet


@pytest.fixture
def console(
    pg_url: str, broker_settings: Settings, real_sagafacts_net: RealLedgerNet
) -> Iterator[ConsoleUnderTest]:
    shipment.CARRIER.set()
    settings = console_settings(
        pg_url,
        broker_settings,
        str(real_sagafacts_net.profile(1)),
        str(real_sagafacts_net.msp_dir(1)),
        real_sagafacts_net.channel,
    )
    try:
        with console_running(settings) as running:
            yield running
            assert not running.driver.errors, running.driver.errors
    finally:
        shipment.CARRIER.clear()


def test_saga_page_reads_the_chain_steps_record_on_a_real_fabric_network(
    console: ConsoleUnderTest, browser: Browser, real_sagafacts_net: RealLedgerNet
) -> None:
    d = browser.driver
    saga_id = shipment_until(console, "real-fabric-1", SagaStatus.COMPLETED)
    [attempt] = console.orchestrator.reader.ledger_attempts(saga_id)
    assert attempt.code == VALID

    log_in(browser, console.url, OPERATOR, then=f"/sagas/{saga_id}")
    d.find_element(By.ID, "read-ledger-record_on_ledger").click()
    records = browser.wait(
        "the ledger's record", lambda: d.find_elements(By.ID, "records-record_on_ledger")
    )[0]
    assert f'"key": "{saga_id}/record_on_ledger/do"' in records.text
    assert f'"txid": "{attempt.txid}"' in records.text
    assert f"ledger says: VALID in block {attempt.block}" in browser.text()
    assert real_sagafacts_net.version.startswith("2.5"), real_sagafacts_net.version
