"""``conveyor migrate``: create or upgrade the broker's tables ahead of the workers."""

from __future__ import annotations

from typing import Any

import click

from ..brokers import check_url, redact_url
from ._load import app_options, open_app
from ._output import emit_json, json_option


@click.command()
@json_option
@app_options
def migrate(as_json: bool, app_spec: str | None, url: str | None) -> None:
    """Create or upgrade the broker's tables, then say from which schema version to which.

    \b
    PostgreSQL: the tables live in their own schema (?schema=, default conveyor); a
    worker or producer applies what is missing on first use too, so run this ahead when
    the application's database user may not create tables (a deploy step with an owner's
    URL). SQLite: the file's tables, likewise applied when it is opened. Memory and
    Redis keep no tables: there is nothing to do.
    """
    app = open_app(app_spec, url, create=True)
    check_url(app.url)
    broker = app.broker
    versions: tuple[int, int] | None = getattr(broker, "migrated", None)
    document: dict[str, Any] = {
        "broker": redact_url(app.url),
        "schema": getattr(broker, "schema", None),
        "from_version": versions[0] if versions else None,
        "to_version": versions[1] if versions else None,
        "changed": bool(versions and versions[0] != versions[1]),
    }
    app.close()
    if as_json:
        emit_json(document)
    elif versions is None:
        click.echo(f"{document['broker']}: nothing to migrate")
    else:
        schema = document["schema"]
        tables, are = (f"schema {schema}", "is") if schema else ("its tables", "are")
        if document["changed"]:
            click.echo(
                f"{document['broker']}: {tables} migrated from version {versions[0]} to "
                f"{versions[1]}"
            )
        else:
            click.echo(f"{document['broker']}: {tables} {are} up to date (version {versions[1]})")
