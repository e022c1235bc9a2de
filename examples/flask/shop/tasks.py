"""The shop's tasks. They use the Flask app (its config, its database) as a view does:
`flask conveyor worker` runs each one inside the app context."""

from __future__ import annotations

from flask import current_app

from conveyor.contrib.flask import FlaskConveyor

from .db import get_db

conveyor = FlaskConveyor()  # a Conveyor; its URL comes from app.config in create_app


@conveyor.task(retries=3, backoff=0.5)
def send_receipt(order_id: int) -> str:
    db = get_db()
    order = db.execute("SELECT email, item FROM orders WHERE id = ?", (order_id,)).fetchone()
    if order is None:
        raise LookupError(f"no order {order_id}")
    shop = current_app.config["SHOP_NAME"]
    receipt = f"{shop}: one {order['item']} for {order['email']} (order {order_id})"
    db.execute("UPDATE orders SET receipt = ? WHERE id = ?", (receipt, order_id))
    db.commit()
    return receipt
