"""`python -m recbole_prorec.serve {precache,refresh,lookup,serve}`; see the package docstring."""

import argparse
import json
import logging
import sqlite3
import sys

from recbole_prorec.serve.precache import SPLITS, PrecacheError, precache, refresh
from recbole_prorec.serve.store import StoreError, open_store


def bounded_int(minimum):
    """An argparse type: an int >= `minimum`, so a bad number is a one-line usage error, not a traceback later."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    return parse


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def port(text):
    value = bounded_int(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in 0..65535, got {text!r}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m recbole_prorec.serve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    pre = commands.add_parser("precache", help="compute every user's top-K from a checkpoint into a new store")
    pre.add_argument("--checkpoint", required=True, help="RecBole checkpoint (.pth), ours or a built-in model")
    pre.add_argument("--store", required=True, help="SQLite file to create or atomically replace")
    pre.add_argument("--k", type=bounded_int(1), default=50)
    pre.add_argument(
        "--split", choices=SPLITS, default="all", help="all: after the last interaction; test: the evaluation's view"
    )
    pre.add_argument("--batch_size", type=bounded_int(1), default=1024)
    pre.add_argument(
        "--workers", type=bounded_int(0), default=0, help="shard users over this many Ray workers (0: no Ray)"
    )
    pre.add_argument(
        "--address", help="shard users over an existing Ray cluster (auto or HOST:PORT), by default one per CPU"
    )
    ref = commands.add_parser("refresh", help="append new interactions and recompute only those users")
    ref.add_argument("--checkpoint", required=True)
    ref.add_argument("--store", required=True)
    ref.add_argument("--interactions", required=True, help="atomic .inter file of new interactions")
    ref.add_argument("--batch_size", type=bounded_int(1), default=1024)
    look = commands.add_parser("lookup", help="print a user's top-K as JSON")
    look.add_argument("--store", required=True)
    look.add_argument("user")
    look.add_argument("--k", type=bounded_int(1))
    http = commands.add_parser("serve", help="answer GET /recommendations/<user>?k=<k> over HTTP")
    http.add_argument("--store", required=True)
    http.add_argument("--host", default="127.0.0.1")
    http.add_argument("--port", type=port, default=8000)
    http.add_argument("--timeout", type=positive_float, default=10.0, help="seconds a connection may stay silent")
    http.add_argument("--threads", type=bounded_int(1), default=8, help="requests answered at once")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "precache":
            print(
                json.dumps(
                    precache(
                        args.checkpoint, args.store, args.k, args.split, args.batch_size, args.workers, args.address
                    ),
                    indent=1,
                )
            )
        elif args.command == "refresh":
            print(json.dumps(refresh(args.checkpoint, args.store, args.interactions, args.batch_size)))
        elif args.command == "lookup":
            with open_store(args.store) as store:
                print(json.dumps(store.top_k(args.user, args.k)._asdict()))
        else:
            from recbole_prorec.serve.http import make_server

            server = make_server(args.store, args.host, args.port, args.timeout, args.threads)
            print(f"serving {args.store} on http://{args.host}:{server.server_address[1]}/recommendations/<user>")
            server.serve_forever()
    except (PrecacheError, StoreError, sqlite3.Error, OSError) as error:  # OSError: a folder it cannot write, a port
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
