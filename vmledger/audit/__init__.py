"""The audit core: tamper evidence, verification, history, as-of state, causal chains.

* :mod:`vmledger.audit.chain` -- the HMAC chain and request index, written by the
  application recorders in the same transaction as the events;
* :mod:`vmledger.audit.verify` -- :func:`verify` walks the log and the chain;
* :mod:`vmledger.audit.ledger` -- :class:`Ledger`: paged history, state as of a time or
  version, the causal chain of a request, and a plain-English explanation of a server.
"""

from vmledger.audit.chain import KEY_ENV, KEY_FILE_ENV, AuditKey
from vmledger.audit.ledger import HistoryPage, Ledger, LedgerEntry
from vmledger.audit.verify import Break, VerifyReport, verify

__all__ = ["KEY_ENV", "KEY_FILE_ENV", "AuditKey", "Break", "HistoryPage", "Ledger", "LedgerEntry",
           "VerifyReport", "verify"]
