"""The example saga with its ledger step: SAGA_DEFINITIONS=saga.examples.order_payment_ledger.

New sagas run version 2 (record_on_ledger on the sagafacts chaincode); version 1
stays registered for sagas started before. Needs the SAGA_FABRIC_* settings.
"""

from saga.examples.order_payment import register_with_ledger as register

__all__ = ["register"]
