"""What a Python start-up imports and what each import costs: ``python -X importtime`` run
several times, each module's cumulative time taken as the smallest seen (a loaded machine
only ever adds time), printed as the import tree down to a threshold. Not part of the run.

    .venv/bin/python bench/importtime.py                          # import conveyor
    .venv/bin/python bench/importtime.py -c "import conveyor.cli" --min-ms 2
    .venv/bin/python bench/importtime.py --worker                 # conveyor worker's imports
    .venv/bin/python bench/importtime.py --worker --python bench/.venv-peers/conveyor/bin/python
    .venv/bin/python bench/importtime.py --worker --src /tmp/old/src   # another checkout
    .venv/bin/python bench/importtime.py --worker --beyond "import redis, click, hiredis" \
        --python bench/.venv-peers/conveyor/bin/python   # what the worker adds to those

``--worker`` times what ``conveyor worker`` imports before its first fetch: the command
(its plain reader, and the modules it defers, when the checkout has them), the app module
of ``bench/conveyor_runner.py`` and the worker, and the app's broker is opened (it connects
on its first call): what it imports then (the client library) is counted too.
"""

from __future__ import annotations

import argparse
import compileall
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")
WORKER = (
    "import conveyor.cli\n"
    "try:\n"
    "    from conveyor.cli import _deferred, _fast\n"
    "except ImportError:\n"  # a checkout from before the plain reader: the click command
    "    import conveyor.cli.worker\n"
    "else:\n"
    "    _deferred.defer_all()\n"
    "import conveyor.worker, conveyor.brokers.redis, conveyor_runner\n"
    "conveyor_runner.app.open()"  # what the broker imports when it opens (no I/O yet)
)
Node = tuple[str, list["Node"]]


def profile(python: str, code: str, env: dict[str, str]) -> list[tuple[int, str, int, int]]:
    """One ``-X importtime`` run: (depth, module, self µs, cumulative µs), each module after
    the imports it made (the order ``-X importtime`` prints)."""
    proc = subprocess.run(
        [python, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=HERE,
    )
    rows = []
    for line in proc.stderr.splitlines():
        m = LINE.match(line)
        if m:
            depth = len(m.group(3)) // 2
            rows.append((depth, m.group(4), int(m.group(1)), int(m.group(2))))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-c", "--code", default="import conveyor")
    p.add_argument("--worker", action="store_true", help="what `conveyor worker` imports")
    p.add_argument(
        "--python", default=sys.executable,
        help="the interpreter (bench/.venv-peers/conveyor/bin/python: the runtime "
        "dependencies only, as a user has them)",
    )  # fmt: skip
    p.add_argument(
        "--src", default=None, metavar="DIR",
        help="import conveyor from DIR (another checkout's src/, e.g. to compare)",
    )  # fmt: skip
    p.add_argument("--runs", type=int, default=9)
    p.add_argument("--min-ms", type=float, default=1.0, help="hide imports cheaper than this")
    p.add_argument("--depth", type=int, default=3, help="deepest level shown")
    p.add_argument(
        "--by-package", action="store_true",
        help="instead of the tree: each package's modules and their own time, summed",
    )  # fmt: skip
    p.add_argument(
        "--by-importer", action="store_true",
        help="with --by-package: a standard library module counted with the package whose "
        "import first needed it (redis-py's asyncio, Conveyor's logging)",
    )  # fmt: skip
    p.add_argument(
        "--beyond", metavar="CODE",
        help="instead of the tree: the modules imported beyond what CODE imports, by own time",
    )  # fmt: skip
    args = p.parse_args()
    code = WORKER if args.worker else args.code
    # As an installed package and run.py's runs have them: with PYTHONDONTWRITEBYTECODE
    # set, a module without its .pyc is compiled at every start, and timed as its own.
    for path in (args.src or os.path.join(os.path.dirname(HERE), "src"), HERE):
        compileall.compile_dir(path, quiet=1, maxlevels=1 if path == HERE else 10)
    env = dict(os.environ, BENCH_REDIS_URL="redis://127.0.0.1:1/0")
    env["PYTHONPATH"] = os.pathsep.join(
        [*([os.path.abspath(args.src)] if args.src else []), HERE, env.get("PYTHONPATH", "")]
    )
    best: dict[str, int] = {}
    own: dict[str, int] = {}  # each module's own time (without its imports)
    first: list[tuple[int, str, int, int]] = []
    walls = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        rows = profile(os.path.abspath(args.python), code, env)
        walls.append(time.perf_counter() - t0)
        first = first or rows
        for _, name, self_us, cumulative in rows:
            best[name] = min(best.get(name, cumulative), cumulative)
            own[name] = min(own.get(name, self_us), self_us)
    roots = tree(first)
    total = sum(best[name] for name, _ in roots)
    print(f"{code}\n{args.runs} runs; the smallest cumulative time of each import, in ms")
    print(f"all imports: {total / 1000:.1f} ms; the whole process: {min(walls) * 1000:.0f} ms "
          "at best (interpreter start-up and exit included)")  # fmt: skip

    def show(nodes: list[Node], depth: int) -> None:
        for name, children in nodes:
            ms = best[name] / 1000
            if depth <= args.depth and ms >= args.min_ms:
                print(f"{ms:8.1f}  {'  ' * depth}{name}")
                show(children, depth + 1)

    if args.beyond:
        base: dict[str, int] = {}
        for _ in range(args.runs):
            for _, name, self_us, _ in profile(os.path.abspath(args.python), args.beyond, env):
                base[name] = min(base.get(name, self_us), self_us)
        beyond(own, base, args.min_ms)
    elif args.by_package:
        by_package(own, importers(roots) if args.by_importer else {})
    else:
        show(roots, 0)
    return 0


def package_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "conveyor":
        return "standard library" if parts[0] in sys.stdlib_module_names else parts[0]
    if len(parts) > 1 and parts[1] in ("cli", "worker", "brokers", "contrib", "stores"):
        return ".".join(parts[:2])
    return "conveyor (core)"


def importers(roots: list[Node]) -> dict[str, str]:
    """Each standard library module's package (``package_of``) taken from the nearest
    module above it in the import tree that is not in the standard library."""
    found: dict[str, str] = {}

    def walk(nodes: list[Node], above: str) -> None:
        for name, children in nodes:
            package = package_of(name)
            if package == "standard library":
                found[name] = f"standard library, for {above}"
                walk(children, above)
            else:
                walk(children, package)

    walk(roots, "the interpreter")
    return found


def by_package(own: dict[str, int], importer: dict[str, str]) -> None:
    sums: dict[str, list[int]] = {}
    for name, us in own.items():
        found = sums.setdefault(importer.get(name) or package_of(name), [0, 0])
        found[0] += 1
        found[1] += us
    print(f"{'own ms':>8}  {'modules':>7}  package")
    for package, (count, us) in sorted(sums.items(), key=lambda x: -x[1][1]):
        print(f"{us / 1000:8.1f}  {count:7d}  {package}")


def beyond(own: dict[str, int], base: dict[str, int], min_ms: float) -> None:
    extra = {name: us for name, us in own.items() if name not in base}
    print(f"the baseline's imports: {sum(base.values()) / 1000:.1f} ms of own time; "
          f"beyond them {len(extra)} modules, {sum(extra.values()) / 1000:.1f} ms")  # fmt: skip
    for name, us in sorted(extra.items(), key=lambda x: -x[1]):
        if us / 1000 >= min_ms:
            print(f"{us / 1000:8.2f}  {name}")


def tree(rows: list[tuple[int, str, int, int]]) -> list[Node]:
    """The import tree, each module before the imports it made."""
    pending: dict[int, list[Node]] = {}
    for depth, name, _, _ in rows:
        node = (name, pending.pop(depth + 1, []))
        pending.setdefault(depth, []).append(node)
    return pending.get(0, [])


if __name__ == "__main__":
    sys.exit(main())
