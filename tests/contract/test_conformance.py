"""Every broker (``tests/brokers.py``, see ``conftest``) against the contract."""

from __future__ import annotations

import pytest

from conveyor._errors import ConveyorError, InvalidName, ValidationError
from conveyor._message import validate_job_id, validate_queue
from conveyor.testing.conformance import BrokerConformance, KeyValueConformance


class TestBroker(BrokerConformance):
    pass


class TestKeyValue(KeyValueConformance):
    pass


@pytest.mark.parametrize("name", ["", "two words", "a/b", "a:b", "é", "x" * 65, None, 7])
def test_bad_queue_name_is_invalid(name: object) -> None:
    with pytest.raises(InvalidName) as caught:
        validate_queue(name)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValidationError)
    assert isinstance(caught.value, ConveyorError)
    assert "queue name" in str(caught.value)


@pytest.mark.parametrize("name", ["default", "images.v2", "a-b_C9", "x" * 64])
def test_good_queue_name_is_returned(name: str) -> None:
    assert validate_queue(name) == name


@pytest.mark.parametrize("job_id", ["", "a b", "a/b", "x" * 129])
def test_bad_job_id_is_invalid(job_id: str) -> None:
    with pytest.raises(InvalidName):
        validate_job_id(job_id)
