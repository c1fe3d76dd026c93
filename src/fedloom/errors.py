"""The fedloom errors and their catalogue.

The catalogue gives every error's code, public text, exit code and abort reason.

Every failure fedloom raises on purpose is a :class:`FedloomError`. Each subclass names one
kind of failure; callers catch the most specific one they can handle. Import every error
from here (``fedloom.errors``): :data:`__all__` lists them all.

**The catalogue.** Each class in fedloom declares, in its body:

- ``code``: a stable number, unique in the tree (:func:`error_class` finds the class). The
  thousands name the family of failure, not the parent class: 1xxx configuration and
  registries, 2xxx data, 3xxx transport, hub and wire format, 4xxx protocol and task,
  5xxx privacy, access and authentication, 6xxx runtime (simulation, scheduling,
  storage), 9000 the base class. A code is never changed or reused: peers and scripts
  rely on it (``tests/unit/test_error_catalogue.py`` keeps the table).
- ``exit_code``: the :class:`ExitCode` of the ``fedloom`` command this error ends.
- ``abort_reason``: the :class:`AbortReason` a pod sends when this error ends a task.
- ``public_message``: a fixed text naming the failure, with nothing of local state in it.
- ``retryable``: whether trying again can succeed (the hub client reconnects for these).

A class without its own ``code`` (a plugin's subclass) is catalogued as its parent.

**What crosses the network** is :meth:`FedloomError.public_text`, never ``str(error)``:
the ``public=`` text the raiser gave, else the message itself where the class sets
``detail_is_public`` (its messages are made only of fedloom's words and of what the other
party sent or asked for: names in its task, fields of its message), else the class's fixed
``public_message``. A message that may name local paths, data values, row counts, keys or
store contents never sets ``detail_is_public``; a raiser that knows a safe version passes
it as ``public=``.
"""

from __future__ import annotations

from fedloom._error_codes import AbortReason as AbortReason
from fedloom._error_codes import ExitCode as ExitCode
from fedloom._error_reports import ErrorReport as ErrorReport
from fedloom._error_reports import PodFailure as PodFailure
from fedloom._error_reports import PodResponseError as PodResponseError
from fedloom._error_reports import abort_reason_for as abort_reason_for
from fedloom._error_reports import exit_code_for as exit_code_for
from fedloom._error_reports import is_device_out_of_memory as is_device_out_of_memory
from fedloom._error_reports import is_out_of_memory as is_out_of_memory
from fedloom._error_tree import ConfigError as ConfigError
from fedloom._error_tree import DataError as DataError
from fedloom._error_tree import DatasetNotFoundError as DatasetNotFoundError
from fedloom._error_tree import DuplicateNameError as DuplicateNameError
from fedloom._error_tree import EmptyDatasetError as EmptyDatasetError
from fedloom._error_tree import FedloomError as FedloomError
from fedloom._error_tree import HubUnavailableError as HubUnavailableError
from fedloom._error_tree import InsecureKeyFileError as InsecureKeyFileError
from fedloom._error_tree import KeyFileError as KeyFileError
from fedloom._error_tree import MailboxClosedError as MailboxClosedError
from fedloom._error_tree import MessageTooLargeError as MessageTooLargeError
from fedloom._error_tree import MissingColumnError as MissingColumnError
from fedloom._error_tree import NoNewDataError as NoNewDataError
from fedloom._error_tree import ReceiveTimeoutError as ReceiveTimeoutError
from fedloom._error_tree import RegistryError as RegistryError
from fedloom._error_tree import ResourceSpecError as ResourceSpecError
from fedloom._error_tree import SchemaMismatchError as SchemaMismatchError
from fedloom._error_tree import TooManyFailuresError as TooManyFailuresError
from fedloom._error_tree import TransportError as TransportError
from fedloom._error_tree import UnknownNameError as UnknownNameError
from fedloom._error_tree import UnknownRecipientError as UnknownRecipientError
from fedloom._error_tree import WireError as WireError
from fedloom._error_tree_tasks import AccessDeniedError as AccessDeniedError
from fedloom._error_tree_tasks import AggregationError as AggregationError
from fedloom._error_tree_tasks import AuthenticationError as AuthenticationError
from fedloom._error_tree_tasks import BadSignatureError as BadSignatureError
from fedloom._error_tree_tasks import DecryptionError as DecryptionError
from fedloom._error_tree_tasks import InsufficientResourcesError as InsufficientResourcesError
from fedloom._error_tree_tasks import LimitsExceededError as LimitsExceededError
from fedloom._error_tree_tasks import ModellerTimeoutError as ModellerTimeoutError
from fedloom._error_tree_tasks import NotFoundError as NotFoundError
from fedloom._error_tree_tasks import PrivacyThresholdError as PrivacyThresholdError
from fedloom._error_tree_tasks import ProtocolError as ProtocolError
from fedloom._error_tree_tasks import ReplayedMessageError as ReplayedMessageError
from fedloom._error_tree_tasks import RouteRefusedError as RouteRefusedError
from fedloom._error_tree_tasks import SchemaVersionError as SchemaVersionError
from fedloom._error_tree_tasks import SimulationError as SimulationError
from fedloom._error_tree_tasks import StaleMessageError as StaleMessageError
from fedloom._error_tree_tasks import StoreError as StoreError
from fedloom._error_tree_tasks import TaskAbortedError as TaskAbortedError
from fedloom._error_tree_tasks import TaskCancelledError as TaskCancelledError
from fedloom._error_tree_tasks import UnknownIdentityError as UnknownIdentityError
from fedloom._error_tree_tasks import UpdateRejectedError as UpdateRejectedError
from fedloom._error_tree_tasks import UpdateRejectionReason as UpdateRejectionReason
from fedloom._error_tree_tasks import WorkerFailedError as WorkerFailedError
from fedloom._error_tree_tasks import WorkerLostError as WorkerLostError
from fedloom._error_tree_tasks import catalogue as catalogue
from fedloom._error_tree_tasks import error_class as error_class
from fedloom._error_tree_tasks import error_from_public as error_from_public
from fedloom._exports import public_names as _public_names

__all__ = _public_names(globals())

# Tracebacks, reprs and pickles name the public path (fedloom.errors.ConfigError), not the
# private module a class is written in (trio's fixup_module_metadata does the same).
for _name in __all__:
    _value = globals()[_name]
    if isinstance(_value, type) and _value.__module__.startswith("fedloom._error"):
        _value.__module__ = __name__
