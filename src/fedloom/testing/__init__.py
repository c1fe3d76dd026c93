"""Public test kit: conformance suites for fedloom's contracts, and a fake clock.

Nothing in fedloom imports this package; tests and third-party implementations do.
"""

from fedloom._exports import public_names as _public_names
from fedloom.testing._backend_conformance import BackendFactory as BackendFactory
from fedloom.testing._backend_conformance import check_backend as check_backend
from fedloom.testing._clock import FakeClock as FakeClock
from fedloom.testing._clock import VirtualTimeLoop as VirtualTimeLoop
from fedloom.testing._clock import run_in_virtual_time as run_in_virtual_time
from fedloom.testing._clock import virtual_loop as virtual_loop
from fedloom.testing._datasource_conformance import DatasourceCase as DatasourceCase
from fedloom.testing._datasource_conformance import check_datasource as check_datasource
from fedloom.testing._hub_conformance import HubFactory as HubFactory
from fedloom.testing._hub_conformance import check_hub as check_hub
from fedloom.testing._hubs import connect_federation as connect_federation
from fedloom.testing._ledger_conformance import FileLedger as FileLedger
from fedloom.testing._ledger_conformance import check_ledger as check_ledger
from fedloom.testing._mailbox_conformance import MailboxPairFactory as MailboxPairFactory
from fedloom.testing._mailbox_conformance import check_mailbox as check_mailbox
from fedloom.testing._store_conformance import check_experiment_store as check_experiment_store
from fedloom.testing._store_conformance import check_pod_store as check_pod_store

__all__ = _public_names(globals())
