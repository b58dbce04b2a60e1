"""Converters from the Amazon review datasets (P5-style folders, McAuley's 2014, 2018 and 2023 releases) to RecBole
atomic files: `<out>/<name>/<name>.inter` (user_id, item_id, timestamp) and `<name>.item` (item_id, title, brand,
categories and, where present, description and price). CLI: `python -m recbole_prorec.data --help`.
"""

from recbole_prorec.data.amazon import FORMATS, ConversionError, RawSource, detect_format
from recbole_prorec.data.atomic import ConversionStats
from recbole_prorec.data.convert import convert, ensure_atomic_files

__all__ = [
    "FORMATS",
    "ConversionError",
    "ConversionStats",
    "RawSource",
    "convert",
    "detect_format",
    "ensure_atomic_files",
]
