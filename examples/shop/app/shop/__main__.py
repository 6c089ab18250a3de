"""`python -m shop --port N`: read the release config from the working directory and serve
(from PostgreSQL when DATABASE_URL is set)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import tomllib
from pathlib import Path

from shop.app import Shop, load_release
from shop.server import log, serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shop", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--release", type=Path, default=Path("release.toml"), help="release config (TOML)")
    args = parser.parse_args(argv)
    try:
        release = load_release(args.release)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        log(f"cannot read release config {args.release}: {exc}")
        return 2
    delay = float(os.environ.get("SHOP_STARTUP_DELAY", "0") or 0)
    if delay > 0:  # lets tests catch a release while it is still starting
        log(f"waiting {delay:g}s before listening (SHOP_STARTUP_DELAY)")
        time.sleep(delay)
    try:
        shop = Shop(release, os.environ.get("SHIPYARD_INSTANCE_ID", "local"), os.environ.get("DATABASE_URL") or None)
    except ValueError as exc:
        log(f"cannot use DATABASE_URL or a column named in {args.release}: {exc}")
        return 2
    data_dir = os.environ.get("SHIPYARD_DATA_DIR")
    return asyncio.run(_serve_then_close(shop, args.host, args.port, Path(data_dir) if data_dir else None))


async def _serve_then_close(shop: Shop, host: str, port: int, data_dir: Path | None) -> int:
    try:
        return await serve(shop, host, port, data_dir)
    finally:
        shop.close()  # database connections belong to this event loop


if __name__ == "__main__":
    sys.exit(main())
