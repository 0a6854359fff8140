"""Fault tests: real PostgreSQL, RabbitMQ, `saga worker` and `saga relay` processes.

Every test injects a fault and then checks the DATABASE: each saga terminal with
its expected outcome, each business action exactly once in
order_payment_events (no uniqueness constraint there, so a doubled effect is a
second row), compensations in reverse order. Run with `pytest -m fault tests/fault`.

test_worker_kill       worker SIGKILLed after the step's commit / inside the step
                       transaction (process group or pool child; action or
                       compensation); two workers on one host, restart at once
test_relay_kill        relay SIGKILLed between publish and mark; two relays and
                       relays killed at random while sagas flow
test_compensation      reverse order, compensation failing for good -> failed with
                       reason, forward retry after the pivot, worker killed midway
test_service_restart   RabbitMQ / PostgreSQL stopped and started while 200 sagas
                       run (the servers are shared: always started again); the
                       same with connections cut by a TCP proxy

fault_sagas.py holds the test-only sagas (kill hooks, failing compensations);
checks.py the database checks; services.py the server stop/start helpers.
"""
