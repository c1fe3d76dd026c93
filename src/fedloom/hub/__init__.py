"""The hub daemon and what it takes to run one (the public ``fedloom.hub`` API).

The hub is the message service between modellers and pods: a gRPC server
(:class:`HubServer`, :func:`serve_hub`) over a durable SQLite mailbox store
(:class:`HubStore`), with its own certificate authority (:func:`init_hub_tls`). The
clients' side of the same service (:class:`GrpcMailbox`, :class:`HubAddress`) and the
in-memory hub that runs a federation in one process (:class:`MemoryHub`, the same
:class:`Hub` contract and routing rules) are here too, with the :class:`Identity` every
party connects as.
"""

from fedloom._exports import public_names as _public_names
from fedloom.crypto import Identity as Identity
from fedloom.crypto import load_identity as load_identity
from fedloom.hub._server import HubServer as HubServer
from fedloom.hub._server import serve_hub as serve_hub
from fedloom.hub._server_settings import HubServerStatistics as HubServerStatistics
from fedloom.hub._server_settings import HubSettings as HubSettings
from fedloom.hub._store import HubStore as HubStore
from fedloom.hub._store import HubStoreStatistics as HubStoreStatistics
from fedloom.hub._store import RegisteredIdentity as RegisteredIdentity
from fedloom.hub._tls import HubTlsFiles as HubTlsFiles
from fedloom.hub._tls import init_hub_tls as init_hub_tls
from fedloom.hub._tls import issue_client_certificate as issue_client_certificate
from fedloom.hub._tls import load_hub_tls as load_hub_tls
from fedloom.transport import Hub as Hub
from fedloom.transport import HubAddress as HubAddress
from fedloom.transport import HubStatistics as HubStatistics
from fedloom.transport import Mailbox as Mailbox
from fedloom.transport import MailboxStatistics as MailboxStatistics
from fedloom.transport import MemoryHub as MemoryHub
from fedloom.transport import TlsClientConfig as TlsClientConfig
from fedloom.transport._grpc_mailbox import GrpcMailbox as GrpcMailbox

__all__ = _public_names(globals())
