"""The in-memory broker: the reference semantics of the port, for one process and for tests.

Everything sits behind one ``threading.Condition``: simple enough to be obviously right, which
is what a reference adapter is for. Time comes from the injected ``Clock``, so tests drive
delays, leases and TTLs without sleeping.
"""

from .broker import MemoryBroker

__all__ = ["MemoryBroker"]
