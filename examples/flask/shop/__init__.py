"""A small shop on Flask: orders are taken by the web app, receipts written by a worker.

flask --app shop run                      # the web app
flask --app shop conveyor worker -c 4     # the worker: each task inside the app context
pytest                                    # the tests (no server, then a real worker)
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from . import db, views
from .tasks import conveyor


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(
        SHOP_NAME="Conveyor Coffee",
        DATABASE=os.path.join(app.instance_path, "shop.db"),
        CONVEYOR_URL=f"sqlite:///{app.instance_path}/conveyor.db",
    )
    app.config.from_prefixed_env()  # FLASK_CONVEYOR_URL=redis://... in production
    app.config.update(config or {})
    os.makedirs(app.instance_path, exist_ok=True)
    db.init_app(app)
    conveyor.init_app(app)  # app.config["CONVEYOR_URL"], and `flask conveyor worker`
    app.register_blueprint(views.bp)
    return app
