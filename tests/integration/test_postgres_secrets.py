"""No message built from a libpq error shows the password, however libpq quotes it: the
password's exact text (as the URL writes it, and percent-decoded) is masked. libpq reads
the URL before it connects, so no server is needed."""

from __future__ import annotations

import pytest

from conveyor import Conveyor
from conveyor._errors import InvalidURL

# Each breaks libpq's reading of the URL (a space, a bad escape), which quotes the token.
PASSWORDS = [
    "Hunter 2secret",  # a space
    'Hun"ter 2secret',  # a quote, which used to end the masked token early
    "Hunter 2sec%ZZret",  # a bad percent-escape
    "Hünter 2sëcret",  # beyond ASCII
    "H%C3%BCnter 2secret",  # percent-encoded UTF-8
    "Hunter  2\tsecret",  # blanks a message folds
]


@pytest.mark.parametrize("where", ["authority", "option"])
@pytest.mark.parametrize("password", PASSWORDS)
def test_a_password_libpq_quotes_in_its_message_is_not_shown(password: str, where: str) -> None:
    if where == "authority":
        url = f"postgresql://postgres:{password}@127.0.0.1:5432/db"
    else:
        url = f"postgresql://postgres@127.0.0.1:5432/db?password={password}"
    app = Conveyor(url)
    with pytest.raises(InvalidURL) as caught:
        app.open()
    said = str(caught.value)
    assert "ter 2" not in said and "ter  2" not in said, said
    assert "secret" not in said and "sec%ZZ" not in said, said
    assert "***" in said and "%20" in said  # what to do is still said


@pytest.mark.parametrize("password", ["shop", "1", "po", "postgres1"])
def test_a_password_inside_another_name_is_left_there(password: str) -> None:
    # Masked wherever it stood, it garbled the message (database "***_orders", server
    # "***27.0.0.***") and where the mask fell told the password.
    from conveyor.brokers.postgres._db import libpq_text

    said = libpq_text(
        Exception(
            'connection to server at "127.0.0.1", port 5432 failed: FATAL: database '
            '"shop_orders" does not exist (user postgres1x)'
        ),
        (password,),
    )
    assert "***" not in said
    assert '"127.0.0.1", port 5432' in said and '"shop_orders"' in said
