"""Install each peer into its own virtual environment under ``bench/.venv-peers/<peer>``.

    python bench/peers/install.py [--root bench/.venv-peers] [--only celery,rq]

``requirements.txt`` has one section per peer (``# == name ==``), every line an exact pin.
The peers cannot share one environment: their redis-py ranges do not overlap (arq 0.28 needs
redis<6, SAQ's redis extra <8, taskiq-redis >=8). A peer that fails to install is written to
``status.json`` with pip's last lines and shown as such in the benchmark table; the others
are installed regardless. A section whose pins have not changed is not reinstalled.

Conveyor gets an environment of its own too, ``conveyor``: its runtime dependencies as
locked (``requirements/runtime.txt``), the ``postgres`` and ``rabbitmq`` extras' packages
as locked in ``requirements/dev.txt`` (psycopg, its binary and its pool, for the PostgreSQL
workloads; aio-pika and what it needs, for the RabbitMQ ones) and this checkout installed
editable, which is what a user's ``pip install 'conveyor[postgres,rabbitmq]'`` has. The
project's ``.venv`` also holds the dev tools and every integration, and some of them cost a
start-up: redis-py imports OpenTelemetry when it is installed (~30 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
RUNTIME = os.path.join(ROOT, "requirements", "runtime.txt")
DEV = os.path.join(ROOT, "requirements", "dev.txt")
# The postgres extra (pyproject.toml) and what psycopg needs on Python < 3.13.
POSTGRES_EXTRA = ("psycopg", "psycopg-binary", "psycopg-pool", "typing-extensions")
# The rabbitmq extra: aio-pika, on aiormq and pamqp, and yarl's own dependencies.
RABBITMQ_EXTRA = ("aio-pika", "aiormq", "pamqp", "yarl", "multidict", "propcache", "idna")


def sections(path: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    with open(path) as f:
        for raw in f:
            line = raw.strip()
            if line.startswith("# ==") and line.endswith("=="):
                current = found.setdefault(line.strip("# =").strip(), [])
            elif line and not line.startswith("#") and current is not None:
                current.append(line)
    return found


def install(root: str, peer: str, pins: list[str]) -> str:
    return _install(os.path.join(root, peer), "\n".join(pins) + "\n", [pins])


def locked_entries(path: str, names: tuple[str, ...]) -> str:
    """The entries (pin and hashes) of ``names`` in a lock file written by ``uv pip
    compile``: each starts unindented with the name, its hashes indented below."""
    keep = False
    out = []
    with open(path) as f:
        for line in f:
            if line[:1] not in (" ", "\t", ""):
                name = line.split("==")[0].strip().lower()
                keep = not line.startswith("#") and name in names
            if keep:
                out.append(line)
    return "".join(out)


def install_conveyor(root: str) -> str:
    """Conveyor's runtime dependencies and the postgres and rabbitmq extras, as locked, and
    this checkout (editable)."""
    with open(RUNTIME) as f:
        locked = f.read()
    wanted = POSTGRES_EXTRA + RABBITMQ_EXTRA
    extra = locked_entries(DEV, wanted)
    if missing := [n for n in wanted if f"\n{n}==" not in f"\n{extra}".lower()]:
        return f"install failed: {', '.join(missing)} not locked in requirements/dev.txt"
    extra_path = os.path.join(root, "conveyor-extras.txt")
    with open(extra_path, "w") as f:
        f.write(extra)
    steps = [
        ["--require-hashes", "--no-deps", "-r", RUNTIME],
        ["--require-hashes", "--no-deps", "-r", extra_path],
        ["--no-deps", "--no-build-isolation", "-e", ROOT],
    ]
    return _install(os.path.join(root, "conveyor"), f"{ROOT}\n{locked}{extra}", steps)


def _install(venv: str, wanted: str, installs: list[list[str]]) -> str:
    """A fresh ``venv`` with each of ``installs`` (pip's arguments) done in turn, unless the
    one there was made for the same ``wanted``."""
    stamp = os.path.join(venv, ".pins")
    if os.path.exists(stamp):
        with open(stamp) as f:
            if f.read() == wanted:
                return "ok"
    shutil.rmtree(venv, ignore_errors=True)
    python = os.path.join(venv, "bin", "python")
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    steps = [[sys.executable, "-m", "venv", venv], *[pip + args for args in installs]]
    for argv in steps:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            errors = [ln[:160] for ln in lines if not ln.startswith("WARNING")] or lines
            return "install failed: " + " | ".join(errors[-2:])
    with open(stamp, "w") as f:
        f.write(wanted)
    return "ok"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=os.path.join(os.path.dirname(HERE), ".venv-peers"))
    p.add_argument("--requirements", default=os.path.join(HERE, "requirements.txt"))
    p.add_argument("--only", default="", help="comma-separated peers (default: all)")
    args = p.parse_args()
    os.makedirs(args.root, exist_ok=True)
    status_path = os.path.join(args.root, "status.json")
    status: dict[str, str] = {}
    if os.path.exists(status_path):
        with open(status_path) as f:
            status = json.load(f)
    only = {x for x in args.only.split(",") if x}
    todo: dict[str, list[str] | None] = {"conveyor": None, **sections(args.requirements)}
    for peer, pins in todo.items():
        if only and peer not in only:
            continue
        status[peer] = (
            install_conveyor(args.root) if pins is None else install(args.root, peer, pins)
        )
        print(f"{peer:<10} {status[peer]}", flush=True)
        with open(status_path, "w") as f:
            json.dump(status, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
