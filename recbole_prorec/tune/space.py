"""Search-space files: YAML values that are constants or Ray Tune distributions, checked against the run's options.

Kept apart from Ray's plumbing so a bad file fails with its path and key before any Ray process starts.
"""

import difflib
import pathlib
import re

import yaml

from recbole_prorec.utils import PROPERTIES_DIR

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")


class SearchSpaceError(ValueError):
    """A search-space file that cannot be used; the message names the file and the key."""


class _YamlLoader(yaml.SafeLoader):
    """safe_load that reads `1e-4` as a float (YAML 1.1 reads it as a string), as RecBole's config loader does."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _distribution(path, key, name, args):
    """The Ray Tune domain for `{name: args}`, after checking the arguments."""
    from ray import tune

    where = f"{path}: key '{key}'"
    if name == "choice":
        if not isinstance(args, list) or not args:
            raise SearchSpaceError(f"{where}: choice expects a non-empty list of values, got {args!r}")
        return tune.choice(args)
    if not isinstance(args, list) or len(args) != 2:
        raise SearchSpaceError(f"{where}: {name} expects [low, high], got {args!r}")
    low, high = args
    number_types = (int,) if name == "randint" else (int, float)
    if any(isinstance(bound, bool) or not isinstance(bound, number_types) for bound in args):
        kind = "integers" if name == "randint" else "numbers"
        raise SearchSpaceError(f"{where}: {name} bounds must be {kind}, got {args!r}")
    if not low < high:
        raise SearchSpaceError(f"{where}: {name} needs low < high, got low={low}, high={high}")
    if name == "loguniform" and low <= 0:
        raise SearchSpaceError(f"{where}: loguniform needs low > 0, got {low}")
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[name](low, high)


def _parse_node(node, path, key):
    """Constant, distribution (one-key mapping named after one), or mapping of further nodes (nested options)."""
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        ((name, args),) = node.items()
        if name in DISTRIBUTIONS:
            return _distribution(path, key, name, args)
        close = difflib.get_close_matches(str(name), DISTRIBUTIONS, n=1, cutoff=0.75)
        if close:
            raise SearchSpaceError(
                f"{path}: key '{key}': unknown distribution '{name}' (did you mean '{close[0]}'?); "
                f"known: {', '.join(DISTRIBUTIONS)}"
            )
    return {sub_key: _parse_node(value, path, f"{key}.{sub_key}") for sub_key, value in node.items()}


def load_search_space(path):
    """Read a search-space YAML file into Ray Tune's `param_space` form (constants stay constants)."""
    path = pathlib.Path(path)
    if not path.is_file():
        known = sorted(p.name for p in (PROPERTIES_DIR / "hyper").glob("*.yaml"))
        raise FileNotFoundError(f"No search-space file {path} (properties/hyper has: {', '.join(known)})")
    try:
        raw = yaml.load(path.read_text(), Loader=_YamlLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise SearchSpaceError(f"{path}{line}: not valid YAML: {getattr(error, 'problem', error)}") from None
    if not isinstance(raw, dict) or not raw:
        raise SearchSpaceError(
            f"{path}: expected a mapping of option names to values or distributions, "
            f"e.g. 'learning_rate: {{loguniform: [1e-4, 1e-2]}}', got {type(raw).__name__}"
        )
    return {key: _parse_node(value, path, key) for key, value in raw.items()}


def _is_domain(value):
    from ray.tune.search.sample import Domain

    return isinstance(value, Domain)


def sampled_keys(space, prefix=""):
    """Dotted names of the keys a space samples (nested options as `outer.inner`)."""
    keys = []
    for key, value in space.items():
        if _is_domain(value):
            keys.append(prefix + key)
        elif isinstance(value, dict):
            keys += sampled_keys(value, f"{prefix}{key}.")
    return keys


def check_space_keys(space, config, path):
    """Every key must be an option of the run's config; nested mappings only where the option is a mapping."""
    for key, value in space.items():
        if key not in config.final_config_dict:
            close = difflib.get_close_matches(key, list(config.final_config_dict), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SearchSpaceError(
                f"{path}: key '{key}' is not an option of {config['model']}{hint}: "
                f"see properties/model/{config['model']}.yaml, properties/overall.yaml and RecBole's options"
            )
        if isinstance(value, dict) and not isinstance(config[key], (dict, type(None))):
            raise SearchSpaceError(
                f"{path}: key '{key}': {value!r} is neither a distribution ({', '.join(DISTRIBUTIONS)}) "
                f"nor a value for '{key}', which is not a mapping option"
            )


def constants(space):
    """The space's top-level keys with nothing sampled under them."""
    return {key: value for key, value in space.items() if not sampled_keys({key: value})}


def searched(space, overrides):
    """The space without the keys the command line fixes (those reach trials as overrides)."""
    return {key: value for key, value in space.items() if key not in overrides}


def nested_get(mapping, dotted_key):
    """`mapping[a][b]` for `a.b` (as `sampled_keys` names it); None where a level is missing."""
    for part in dotted_key.split("."):
        mapping = mapping.get(part) if isinstance(mapping, dict) else None
    return mapping


def plain(value):
    """Python scalars and containers (Ray may sample numpy scalars), so configs dump to YAML and JSON."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value.item() if hasattr(value, "item") else value
