"""The web app: take an order, hand its receipt to the worker, show both."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, request

from conveyor import InvalidName, JobNotFound, JobStatus

from .db import get_db
from .tasks import conveyor, send_receipt

bp = Blueprint("shop", __name__)


@bp.post("/orders")
def take_order() -> tuple[dict[str, Any], int]:
    order = request.get_json()
    db = get_db()
    (order_id,) = db.execute(
        "INSERT INTO orders (email, item) VALUES (?, ?) RETURNING id",
        (order["email"], order["item"]),
    ).fetchone()
    db.commit()  # before enqueueing: the worker must find the order
    job = send_receipt.delay(order_id)
    return {"order": order_id, "job": job.id}, 202


@bp.get("/orders/<int:order_id>")
def show_order(order_id: int) -> dict[str, Any]:
    row = get_db().execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
    if row is None:
        abort(404)
    return dict(row)


@bp.get("/jobs/<job_id>")
def show_job(job_id: str) -> dict[str, Any]:
    try:
        job = conveyor.job(job_id)
    except (JobNotFound, InvalidName):
        abort(404)
    status = job.status
    if status is JobStatus.SUCCEEDED:
        return {"status": status.value, "result": job.result()}
    if status.terminal:
        return {"status": status.value, "error": str(job.exception())}
    return {"status": status.value}
