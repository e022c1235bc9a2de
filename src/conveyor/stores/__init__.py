"""Key-value storage: the port every broker implements (each adapter's ``store.py`` in its
package under ``brokers/``), and ``Store`` (``app.store``) on it."""

from ._port import KeyValue, Updater, check_key
from ._store import Store

__all__ = ["KeyValue", "Store", "Updater", "check_key"]
