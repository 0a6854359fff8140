"""The operator console in headless Chromium against real PostgreSQL, RabbitMQ and a
devnet running the sagafacts chaincode: log in, find a failed saga by its key, see
its ledger transaction and the chaincode's record, resume it with the keyboard
only and watch it complete without a reload; replay a dead letter; every image has
a text alternative. Screenshots of each page go to docs/ui-*.png (README)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing

import httpx
import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from saga.config import Settings
from saga.core.chain import VALID
from saga.core.state import SagaStatus
from tests.support import shipment_saga as shipment
from tests.support.browser import Browser
from tests.support.console import (
    API_TOKEN,
    OPERATOR,
    ORDER,
    READER,
    ConsoleUnderTest,
    console_running,
    console_settings,
    csrf_of,
    log_in,
    logged_in,
    shipment_until,
    status_of,
)
from tests.support.dlq import dead_letter, step_message_body
from tests.support.ledger import LedgerNet
from tests.support.rabbitmq import queue_depth


@pytest.fixture
def console(
    pg_url: str, broker_settings: Settings, sagafacts_net: LedgerNet
) -> Iterator[ConsoleUnderTest]:
    sagafacts_net.devnet.reset_faults()
    shipment.CARRIER.clear()
    settings = console_settings(
        pg_url,
        broker_settings,
        str(sagafacts_net.profile(1)),
        str(sagafacts_net.msp_dir(1)),
        sagafacts_net.channel,
    )
    with console_running(settings) as running:
        yield running
        assert not running.driver.errors, running.driver.errors


def tab_to(browser: Browser, element_id: str, most: int = 80) -> None:
    """Press Tab until the element has the focus (keyboard only, no clicks)."""
    d = browser.driver
    for _ in range(most):
        if (
            d.execute_script("return document.activeElement && document.activeElement.id")
            == element_id
        ):
            return
        ActionChains(d).send_keys(Keys.TAB).perform()
    raise AssertionError(f"Tab never reached #{element_id}")


def no_missing_alternatives(browser: Browser) -> None:
    assert browser.missing_text_alternatives() == [], browser.driver.current_url


def test_find_a_failed_saga_read_its_ledger_record_resume_it_by_keyboard_and_watch_it_complete(
    console: ConsoleUnderTest, browser: Browser
) -> None:
    d = browser.driver
    saga_id = shipment_until(console, "order-4711")
    attempts = console.orchestrator.reader.ledger_attempts(saga_id)
    assert [a.code for a in attempts] == [VALID]
    txid = attempts[0].txid

    # Refused without a login: the console sends the browser to its login page.
    d.get(console.url + "/sagas")
    browser.wait("the login page", lambda: "/ui/login" in d.current_url)
    assert "Log in" in browser.text() and "o-4711" not in browser.text()
    no_missing_alternatives(browser)
    browser.screenshot("login")
    log_in(browser, console.url, OPERATOR)

    d.get(console.url + "/")
    failed_tile = d.find_element(By.ID, "tile-failed")
    assert failed_tile.text.split()[0] == "1"
    no_missing_alternatives(browser)
    chart = d.find_element(By.CSS_SELECTOR, "svg.chart")
    assert "last hour" in chart.find_element(By.TAG_NAME, "title").get_attribute("textContent")
    browser.screenshot("overview")

    # Find it by its key.
    failed_tile.click()
    key = browser.wait("the list", lambda: d.find_elements(By.ID, "f-key"))[0]
    key.send_keys("order-4711" + Keys.ENTER)
    browser.wait(
        "one match", lambda: "1 saga(s) match" in d.find_element(By.ID, "result-count").text
    )
    no_missing_alternatives(browser)
    browser.screenshot("sagas")
    d.find_element(By.CSS_SELECTOR, f'a[href$="/sagas/{saga_id}"]').click()

    # Its ledger transaction, and on demand what the chaincode holds for its key.
    browser.wait("the saga page", lambda: d.find_elements(By.ID, "saga-status"))
    assert d.find_element(By.ID, "saga-status").text == "failed"
    assert txid in browser.text()
    assert "carrier API refused" in browser.text()
    d.find_element(By.ID, "read-ledger-record_on_ledger").click()
    records = browser.wait(
        "the ledger's record", lambda: d.find_elements(By.ID, "records-record_on_ledger")
    )[0]
    assert f"{saga_id}/record_on_ledger/do" in records.text
    assert txid in records.text  # the record was written by this transaction
    assert "ledger says: VALID in block" in browser.text()
    no_missing_alternatives(browser)
    browser.screenshot("saga-ledger")

    # Resume with the keyboard only; the saga must not move until the page shows it.
    d.get(f"{console.url}/sagas/{saga_id}")
    browser.wait("the live saga page", lambda: d.find_elements(By.ID, "act-resume"))
    browser.screenshot("saga-failed")
    shipment.CARRIER.set()
    console.driver.running.clear()
    tab_to(browser, "act-resume")
    ActionChains(d).send_keys(Keys.ENTER).perform()
    browser.wait("the confirmation", lambda: "/confirm/resume" in d.current_url)
    assert "What will happen" in browser.text()
    browser.screenshot("confirm-resume")
    tab_to(browser, "why")
    ActionChains(d).send_keys("carrier API is back (INC-981)").perform()
    tab_to(browser, "confirm")
    ActionChains(d).send_keys(Keys.ENTER).perform()
    browser.wait("the saga page after resume", lambda: "done=resume" in d.current_url)
    assert d.find_element(By.ID, "saga-status").text == "running"
    d.execute_script("window.__notReloaded = 42")

    console.driver.running.set()
    browser.wait(
        "the page to show the saga completed, by itself",
        lambda: d.find_element(By.ID, "saga-status").text == "completed",
        timeout=30,
    )
    assert d.execute_script("return window.__notReloaded") == 42, "the page was reloaded"
    assert status_of(console.orchestrator, saga_id) is SagaStatus.COMPLETED
    history = d.find_element(By.CSS_SELECTOR, "table.history").text
    assert "resume requested olga (console) carrier API is back (INC-981)" in history
    no_missing_alternatives(browser)
    browser.screenshot("saga-completed")


def test_replay_a_dead_letter(console: ConsoleUnderTest, browser: Browser) -> None:
    d = browser.driver
    settings = console.container.settings
    console.driver.running.clear()  # the saga stays where it is; only the DLQ moves
    saga_id = console.orchestrator.enqueue(shipment.NAME, ORDER, idempotency_key="dlq-1").saga_id
    body, headers, message_id = step_message_body(saga_id, saga=shipment.NAME, step="pack")
    dead_letter(
        settings,
        body,
        headers,
        reason="no saga definition 'shipment' v1 on this worker",
        message_id=message_id,
    )
    assert queue_depth(settings.broker_url, settings.dead_letter_queue) == 1

    log_in(browser, console.url, OPERATOR, then="/dlq")
    browser.wait("the DLQ page", lambda: d.find_elements(By.ID, f"replay-{message_id}"))
    assert "no saga definition 'shipment' v1" in browser.text()
    no_missing_alternatives(browser)
    browser.screenshot("dlq")
    d.find_element(By.CSS_SELECTOR, f'a[href$="/dlq/messages/{message_id}"]').click()
    browser.wait("the message's page", lambda: "/dlq/messages/" in d.current_url)
    assert saga_id in browser.text() and "MalformedMessage" in browser.text()
    no_missing_alternatives(browser)
    browser.screenshot("dlq-message")
    d.back()
    browser.wait("the DLQ page", lambda: d.find_elements(By.ID, f"replay-{message_id}"))
    d.find_element(By.ID, f"replay-{message_id}").click()
    browser.wait("the confirmation", lambda: "/dlq/confirm/replay" in d.current_url)
    assert "What will happen" in browser.text()
    d.find_element(By.ID, "why").send_keys("definitions deployed")
    d.find_element(By.ID, "confirm").click()
    done = browser.wait("the result", lambda: d.find_elements(By.ID, "dlq-done"))[0]
    assert "1 message(s) replayed" in done.text
    assert d.find_elements(By.ID, "dlq-empty")

    assert queue_depth(settings.broker_url, settings.dead_letter_queue) == 0
    assert queue_depth(settings.broker_url, settings.step_queue) == 1
    _, history = console.orchestrator.get(saga_id)
    replayed = [h for h in history if h.kind == "dead letter replayed"]
    assert len(replayed) == 1 and replayed[0].actor == "olga (console)"
    assert replayed[0].detail["why"] == "definitions deployed"


def test_refused_without_login_without_a_valid_csrf_token_and_for_the_read_only_role(
    console: ConsoleUnderTest,
) -> None:
    saga_id = shipment_until(console, "order-csrf")
    before_record, before_history = console.orchestrator.get(saga_id)
    base = console.server.url
    resume = f"/ui/sagas/{saga_id}/resume"

    with httpx.Client(base_url=base, timeout=30) as anonymous:
        for path in (
            "/ui/",
            "/ui/sagas",
            f"/ui/sagas/{saga_id}",
            "/ui/dlq",
            resume.replace("/resume", "/confirm/resume"),
        ):
            page = anonymous.get(path)
            assert page.status_code == 303, (path, page.status_code)
            assert page.headers["location"].startswith("/ui/login?next="), path
            assert saga_id not in page.text
        # The API's bearer token is not a console session.
        bearer = anonymous.get("/ui/sagas", headers={"Authorization": f"Bearer {API_TOKEN}"})
        assert bearer.status_code == 303
        assert anonymous.post(resume, data={"why": "no session"}).status_code == 403

    with closing(logged_in(base, OPERATOR)) as olga, closing(logged_in(base, READER)) as rita:
        token = csrf_of(olga.get(f"/ui/sagas/{saga_id}").text)
        rita_page = rita.get(f"/ui/sagas/{saga_id}")
        assert rita_page.status_code == 200 and 'id="act-resume"' not in rita_page.text
        # Not to be framed by another site (an action button under an overlay).
        assert rita_page.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in rita_page.headers["content-security-policy"]
        rita_token = csrf_of(rita_page.text)
        refused = [
            olga.post(resume, data={"why": "no token"}),
            olga.post(resume, data={"why": "wrong token", "csrf_token": "0" * 64}),
            olga.post(resume, data={"why": "another session's", "csrf_token": rita_token}),
            rita.post(resume, data={"why": "read-only role", "csrf_token": rita_token}),
            olga.post("/ui/logout", data={}),
        ]
        assert [r.status_code for r in refused] == [403] * 5, [r.text[:200] for r in refused]
        tampered = olga.headers["Cookie"][:-3] + "AAA"
        assert olga.get("/ui/", headers={"Cookie": tampered}).status_code == 303

        after_record, after_history = console.orchestrator.get(saga_id)
        assert after_record.state == before_record.state
        assert after_history == before_history

        # The same request with its session's token is taken: the refusals were the token's.
        done = olga.post(resume, data={"why": "carrier back", "csrf_token": token})
        assert done.status_code == 303, done.text
        _, history = console.orchestrator.get(saga_id)
        assert [h.actor for h in history if h.kind == "resume requested"] == ["olga (console)"]
