"""CLI: `python -m recbole_prorec.data FORMAT SOURCE --out DATA_PATH [--name NAME] ...`."""

import argparse
import json
import logging
import sys
import time

from recbole_prorec.data.amazon import FORMATS, ConversionError
from recbole_prorec.data.convert import convert

EPILOG = """examples:
  python -m recbole_prorec.data p5 /data/amazon-beauty --name amazon-beauty --out dataset/
  python -m recbole_prorec.data 2014 raw/reviews_Beauty_5.json.gz --name amazon-beauty --out dataset/
  python -m recbole_prorec.data auto raw/amazon-2023-beauty/ --name amazon-beauty-2023 --out dataset/ --kcore 5

formats:
  p5    folder with user_sequence.txt ('<user> <item> ...' in time order; timestamp = position) and optional
        item metadata item_meta*.json / meta*.json ({item_id: {title, brand, categories}})
  2014  reviews_<Category>_5.json.gz + meta_<Category>.json.gz (meta lines are Python literals)
  2018  <Category>_5.json.gz + meta_<Category>.json.gz (JSON lines)
  2023  <Category>.jsonl.gz + meta_<Category>.jsonl.gz (keyed by parent_asin, timestamps in ms)
  auto  whichever of the above SOURCE holds
"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m recbole_prorec.data",
        description="Convert Amazon review data to RecBole atomic files <out>/<name>/<name>.inter and .item.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("format", choices=("auto", *FORMATS), help="input format (see below)")
    parser.add_argument("source", help="folder with the raw files, or the interactions file itself")
    parser.add_argument("--out", required=True, help="data_path: the atomic files go to <out>/<name>/")
    parser.add_argument("--name", help="dataset name (default: the source folder's name)")
    parser.add_argument("--meta", help="item metadata file (default: found by name next to the interactions)")
    parser.add_argument(
        "--kcore", type=int, help="keep users and items with >= K interactions, iterated (default: 5; p5: 0 = off)"
    )
    parser.add_argument(
        "--skip-malformed", action="store_true", help="skip and count malformed lines instead of failing"
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    try:
        stats = convert(
            args.source,
            args.out,
            args.name,
            fmt=args.format,
            meta=args.meta,
            kcore=args.kcore,
            skip_malformed=args.skip_malformed,
        )
    except (ConversionError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps({**stats.as_dict(), "wall_time_s": round(time.perf_counter() - start, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
