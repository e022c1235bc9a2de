"""Conveyor: a Python task queue that never loses a job.

The public API is exactly what ``__all__`` lists; everything else is private.

Each name is imported on first use (``__getattr__`` below): ``from conveyor import
Conveyor`` loads what an app needs and no more, so a worker reaches its first job sooner
(docs/architecture.md, "Start-up").
"""

import importlib as _importlib

TYPE_CHECKING = False  # what typing.TYPE_CHECKING is, without importing typing
if TYPE_CHECKING:
    from ._app import Conveyor as Conveyor
    from ._context import CurrentJob as CurrentJob
    from ._context import current_job as current_job
    from ._errors import BrokerAuthError as BrokerAuthError
    from ._errors import BrokerError as BrokerError
    from ._errors import BrokerGone as BrokerGone
    from ._errors import BrokerUnavailable as BrokerUnavailable
    from ._errors import ConfigurationError as ConfigurationError
    from ._errors import ConveyorError as ConveyorError
    from ._errors import DependencyFailed as DependencyFailed
    from ._errors import DependencyNotFound as DependencyNotFound
    from ._errors import InvalidName as InvalidName
    from ._errors import InvalidOption as InvalidOption
    from ._errors import InvalidURL as InvalidURL
    from ._errors import JobCancelled as JobCancelled
    from ._errors import JobDead as JobDead
    from ._errors import JobNotEnded as JobNotEnded
    from ._errors import JobNotFound as JobNotFound
    from ._errors import LockError as LockError
    from ._errors import LockLost as LockLost
    from ._errors import LockTimeout as LockTimeout
    from ._errors import PayloadTooLarge as PayloadTooLarge
    from ._errors import ResultTooLarge as ResultTooLarge
    from ._errors import SerializationError as SerializationError
    from ._errors import SoftTimeLimit as SoftTimeLimit
    from ._errors import TaskFailed as TaskFailed
    from ._errors import TransactionConflict as TransactionConflict
    from ._errors import UntrustedTask as UntrustedTask
    from ._errors import ValidationError as ValidationError
    from ._events import Event as Event
    from ._job import Job as Job
    from ._logging import logging_filter as logging_filter
    from ._message import JobStatus as JobStatus
    from ._task import Signature as Signature
    from ._task import Task as Task
    from .middleware import Middleware as Middleware
    from .workflows import Workflow as Workflow
    from .workflows import chain as chain
    from .workflows import chord as chord
    from .workflows import group as group

del TYPE_CHECKING

__version__ = "0.1.0"

# name -> the private module that defines it
_WHERE = {
    "Conveyor": "._app",
    "CurrentJob": "._context",
    "current_job": "._context",
    "BrokerAuthError": "._errors",
    "BrokerError": "._errors",
    "BrokerGone": "._errors",
    "BrokerUnavailable": "._errors",
    "ConfigurationError": "._errors",
    "ConveyorError": "._errors",
    "DependencyFailed": "._errors",
    "DependencyNotFound": "._errors",
    "InvalidName": "._errors",
    "InvalidOption": "._errors",
    "InvalidURL": "._errors",
    "JobCancelled": "._errors",
    "JobDead": "._errors",
    "JobNotEnded": "._errors",
    "JobNotFound": "._errors",
    "LockError": "._errors",
    "LockLost": "._errors",
    "LockTimeout": "._errors",
    "PayloadTooLarge": "._errors",
    "ResultTooLarge": "._errors",
    "SerializationError": "._errors",
    "SoftTimeLimit": "._errors",
    "TaskFailed": "._errors",
    "TransactionConflict": "._errors",
    "UntrustedTask": "._errors",
    "ValidationError": "._errors",
    "Event": "._events",
    "Job": "._job",
    "logging_filter": "._logging",
    "JobStatus": "._message",
    "Signature": "._task",
    "Task": "._task",
    "Middleware": ".middleware",
    "Workflow": ".workflows",
    "chain": ".workflows",
    "chord": ".workflows",
    "group": ".workflows",
}

__all__ = [
    "BrokerAuthError",
    "BrokerError",
    "BrokerGone",
    "BrokerUnavailable",
    "ConfigurationError",
    "Conveyor",
    "ConveyorError",
    "CurrentJob",
    "DependencyFailed",
    "DependencyNotFound",
    "Event",
    "InvalidName",
    "InvalidOption",
    "InvalidURL",
    "Job",
    "JobCancelled",
    "JobDead",
    "JobNotEnded",
    "JobNotFound",
    "JobStatus",
    "LockError",
    "LockLost",
    "LockTimeout",
    "Middleware",
    "PayloadTooLarge",
    "ResultTooLarge",
    "SerializationError",
    "Signature",
    "SoftTimeLimit",
    "Task",
    "TaskFailed",
    "TransactionConflict",
    "UntrustedTask",
    "ValidationError",
    "Workflow",
    "__version__",
    "chain",
    "chord",
    "current_job",
    "group",
    "logging_filter",
]


def __getattr__(name: str) -> object:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'conveyor' has no attribute {name!r}")
    value = getattr(_importlib.import_module(where, __name__), name)
    globals()[name] = value  # the next look-up is a plain one
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
