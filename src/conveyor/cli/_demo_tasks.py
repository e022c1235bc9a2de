"""The tasks ``conveyor demo`` runs: a stand-in for real work (thumbnails of images)."""

from __future__ import annotations

import hashlib

from .._app import Conveyor

app = Conveyor()  # CONVEYOR_URL, set by `conveyor demo` for its worker


@app.task(queue="demo", retries=2, backoff=0.05)
def thumbnail(image_id: int, width: int) -> dict[str, object]:
    """Pretend to resize an image: a little CPU, a deterministic answer."""
    digest = hashlib.blake2b(f"image-{image_id}".encode(), digest_size=8)
    for _ in range(20):
        digest = hashlib.blake2b(digest.digest(), digest_size=8)
    height = width * 3 // 4
    return {"image": image_id, "size": f"{width}x{height}", "etag": digest.hexdigest()}
