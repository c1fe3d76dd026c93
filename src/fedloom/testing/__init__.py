"""Public test kit: conformance suites for fedloom's contracts, and a fake clock.

Nothing in fedloom imports this package; tests and third-party implementations do.
"""

from fedloom.testing._backend_conformance import BackendFactory, check_backend
from fedloom.testing._clock import FakeClock, VirtualTimeLoop, run_in_virtual_time, virtual_loop
from fedloom.testing._datasource_conformance import DatasourceCase, check_datasource
from fedloom.testing._hub_conformance import HubFactory, check_hub
from fedloom.testing._hubs import connect_federation
from fedloom.testing._ledger_conformance import FileLedger, check_ledger
from fedloom.testing._mailbox_conformance import MailboxPairFactory, check_mailbox
from fedloom.testing._store_conformance import check_experiment_store, check_pod_store

__all__ = [
    "BackendFactory",
    "DatasourceCase",
    "FileLedger",
    "FakeClock",
    "HubFactory",
    "VirtualTimeLoop",
    "MailboxPairFactory",
    "check_backend",
    "check_datasource",
    "check_experiment_store",
    "check_hub",
    "check_ledger",
    "check_mailbox",
    "check_pod_store",
    "connect_federation",
    "run_in_virtual_time",
    "virtual_loop",
]
