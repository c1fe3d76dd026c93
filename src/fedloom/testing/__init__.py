"""Public test kit: conformance suites for fedloom's contracts.

Nothing in fedloom imports this package; tests and third-party implementations do.
"""

from fedloom.testing.mailbox_conformance import MailboxPairFactory, check_mailbox

__all__ = ["MailboxPairFactory", "check_mailbox"]
