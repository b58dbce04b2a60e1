"""Types of a run's options, read from the YAML defaults, and the check of command-line overrides against them.

Why: RecBole takes any value for any key, so `--epochs=abc` used to reach its Trainer and end in a `TypeError`
traceback after the dataset was loaded. Each default in RecBole's YAML files and ours documents its type in a
comment (`epochs: 300  # (int) ...`, `bf16: auto  # (bool or 'auto') ...`); a key without one takes the type of
its default. An override of a documented key is checked before the run and a mismatch is a one-line
`OptionError` that names the key, the expected type and the file that documents it.
"""

import dataclasses
import os
import pathlib
import re
import tempfile

import recbole
import yaml

from recbole_prorec.registry import get_model, model_config_files

RECBOLE_PROPERTIES = pathlib.Path(recbole.__file__).resolve().parent / "properties"

# Options whose 0 or negative value RecBole accepts and then misuses (0 epochs: a test of the untrained model).
_AT_LEAST_ONE = {
    "epochs": "0 epochs would test an untrained model; to test a saved one: python -m recbole_prorec.evaluate "
    "--checkpoint FILE",
    "train_batch_size": "a batch holds at least one sample",
    "eval_batch_size": "a batch holds at least one user",
}
# Options holding the overrides of the stage-1 model of a two-stage one: checked against that model's options.
_NESTED_MODEL_OPTIONS = {"tokenizer_config": "stage_one_model"}

_BASIC = {"int", "float", "str", "bool", "list", "dict"}
_KEY_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:")
_TYPE_COMMENT = re.compile(r"#\s*\(([^)]*)\)")


class OptionError(ValueError):
    """An override that does not fit its option; the message names the key and what was expected."""


@dataclasses.dataclass
class OptionType:
    """What values an option takes: basic kinds (`int`, `list`, ...), literal strings (`'auto'`), None or not."""

    kinds: set
    literals: set = dataclasses.field(default_factory=set)
    element: str = None  # the kind of a list's items (`(list of int)`)
    nullable: bool = False
    source: str = ""

    def describe(self):
        names = sorted(self.kinds - {"list"}) + (
            [f"list of {self.element}" if self.element else "list"] if "list" in self.kinds else []
        )
        names += [repr(literal) for literal in sorted(self.literals)] + (["null (~)"] if self.nullable else [])
        return " or ".join(names)


def parse_type(text):
    """`OptionType` of a YAML comment's `(int)`, `(list or int or None)`, `(bool or 'auto')`, `(list of int)`;
    None for prose the check cannot use (the key is then not checked)."""
    kinds, literals, element, nullable = set(), set(), None, False
    for token in re.split(r"\s+or\s+|,\s*", text.strip().lower()):
        token = token.strip().replace("string", "str")
        if token in ("none", "optional"):
            nullable = True
        elif token in _BASIC:
            kinds.add(token)
        elif token.startswith("list of ") and token[len("list of ") :] in _BASIC:
            kinds.add("list")
            element = token[len("list of ") :]
        elif re.fullmatch(r"'[^']*'|\"[^\"]*\"", token):
            literals.add(token[1:-1])
        else:
            return None
    return OptionType(kinds, literals, element, nullable) if kinds or literals else None


def _kind_of(value):
    """Basic kind of a default value; None for a null default (it says nothing about the type)."""
    for kind, types in (("bool", bool), ("int", int), ("float", float), ("str", str), ("list", list), ("dict", dict)):
        if isinstance(value, types):
            return kind
    return None


def option_files(model_class, dataset):
    """YAML files that set a run's defaults, in the order they apply: RecBole's, then ours (which win)."""
    lineage = [cls.__name__ for cls in reversed(model_class.__mro__)]
    recbole_files = [RECBOLE_PROPERTIES / "overall.yaml", RECBOLE_PROPERTIES / "dataset" / "sample.yaml"]
    recbole_files += [RECBOLE_PROPERTIES / "model" / f"{name}.yaml" for name in lineage]
    return [path for path in recbole_files if path.is_file()] + [
        pathlib.Path(path) for path in model_config_files(model_class, dataset)
    ]


def option_types(model, dataset):
    """`{key: OptionType}` for the top-level options of the files `option_files` lists; keys left out are unchecked.

    A later file's documented type replaces an earlier one's; a key never documented takes the kind of its first
    non-null default (an integer default also takes floats: `weight: 0` is often a float option); a null default
    anywhere (`~`) also allows null; a comment the check cannot read (prose) leaves the key unchecked.
    """
    model_class = get_model(model)
    types = {}  # key -> OptionType, or None for a key seen but not checkable
    for path in option_files(model_class, dataset):
        text = path.read_text(encoding="utf-8")
        try:
            defaults = yaml.safe_load(text)
        except yaml.YAMLError:
            defaults = None
        defaults = defaults if isinstance(defaults, dict) else {}
        for line in text.splitlines():
            match = _KEY_LINE.match(line)
            if not match:
                continue
            key, default = match.group(1), defaults.get(match.group(1))
            comment = _TYPE_COMMENT.search(line[match.end() :])
            known = types.get(key)
            if comment:
                documented = parse_type(comment.group(1))
                if documented is not None:
                    documented.nullable |= default is None or bool(known and known.nullable)
                    documented.source = str(path)
                types[key] = documented if documented is not None else known
            elif known is None and key not in types:
                kind = _kind_of(default)
                types[key] = (
                    OptionType({kind, "float"} if kind == "int" else {kind}, source=str(path)) if kind else None
                )
            elif known is not None and default is None:
                known.nullable = True
    return {key: value for key, value in types.items() if value is not None}


def _fits(kind, value):
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    return isinstance(value, {"list": list, "dict": dict}[kind])


def check_value(key, value, option):
    """`value` as the run should get it (a number given for a `str` option becomes its text, e.g. `gpu_id`), or
    an `OptionError` naming the key, the expected type and the file that documents it."""
    if value is None and option.nullable:
        return value
    if isinstance(value, str) and value in option.literals:
        return value
    if "str" in option.kinds and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    for kind in sorted(option.kinds):
        if _fits(kind, value) and not (
            kind == "list" and option.element and not all(_fits(option.element, item) for item in value)
        ):
            return value
    where = f" ({_short(option.source)})" if option.source else ""
    raise OptionError(f"--{key}={_shown(value)}: expected {option.describe()}{where}")


def _shown(value):
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...").strip()


def _short(path):
    path = pathlib.Path(path)
    for root, label in ((RECBOLE_PROPERTIES, "RecBole's properties/"), (pathlib.Path.cwd(), "")):
        try:
            return label + str(path.relative_to(root))
        except ValueError:
            pass
    parts = path.parts
    return "/".join(parts[parts.index("properties") :]) if "properties" in parts else str(path)


def check_overrides(model, dataset, overrides, prefix=""):
    """`overrides` checked against `model`'s option types on `dataset` (and `tokenizer_config` against its stage-1
    model's, its keys named `tokenizer_config.key`); returns them as the run should get them. Keys no YAML file
    documents pass unchecked, as RecBole accepts them."""
    check_dataset_name(dataset)
    model_class = get_model(model)
    types = option_types(model_class, dataset)
    checked = {}
    for key, value in overrides.items():
        if key in types:
            value = check_value(prefix + key, value, types[key])
        nested_model = getattr(model_class, _NESTED_MODEL_OPTIONS.get(key, ""), None)
        if nested_model and isinstance(value, dict):
            value = check_overrides(nested_model, dataset, value, prefix=f"{prefix}{key}.")
        if key in _AT_LEAST_ONE and isinstance(value, int) and value < 1:
            raise OptionError(f"--{prefix}{key}={value}: must be at least 1 ({_AT_LEAST_ONE[key]})")
        checked[key] = value
    return checked


def check_dataset_name(dataset):
    """A dataset is named by its folder under `data_path`: a path there would be joined to data_path."""
    text = str(dataset)
    if not text or text in (".", "..") or "/" in text or os.sep in text or (os.altsep and os.altsep in text):
        hint = ""
        if "/" in text.strip("/"):
            folder, name = text.rstrip("/").rsplit("/", 1)
            hint = f"; for the atomic files in {text}/ write --data_path={folder} --dataset={name}"
        raise OptionError(
            f"--dataset={text}: expected the name of a folder of atomic files under data_path, not a path{hint}"
        )


def check_writable(path, option="--json"):
    """Fail before a run, not after it, when `path` cannot be written: the folder must exist and take a file."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise OptionError(f"{option}={path}: a folder; expected a file path")
    folder = path.parent
    if not folder.is_dir():
        raise OptionError(f"{option}={path}: no folder {folder}/ to write it in")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".probe"):
            pass
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is read-only")
    except OSError as error:
        raise OptionError(f"{option}={path}: cannot write there ({error.strerror or error})") from None
