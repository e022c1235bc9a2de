"""One adapter module per peer library; see ``driver.py`` for the contract."""
