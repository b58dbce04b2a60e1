"""Model lookup by name: this plugin's classes first, then RecBole's (as RecBole-GNN does), and their YAML files.

It sits above the models (it imports `recbole_prorec.model`; the models import only `utils`), so the import graph
has no cycle.
"""

import importlib

import recbole.model.sequential_recommender as recbole_sequential

from recbole_prorec.utils import PROPERTIES_DIR

# RecBole's own model packages, searched after ours (the order RecBole's get_model uses, minus exlib).
_RECBOLE_MODEL_PACKAGES = [
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
]


def our_models():
    """Model classes this plugin provides, by name."""
    from recbole_prorec import model as ours

    return {name: getattr(ours, name) for name in ours.__all__}


def recbole_model_classes():
    """Every model class RecBole ships in the packages we search."""
    classes = []
    for package in _RECBOLE_MODEL_PACKAGES:
        module = importlib.import_module(f"recbole.model.{package}")
        classes += [value for value in vars(module).values() if isinstance(value, type)]
    return classes


def get_model(name):
    """Return the model class called `name`: ours first, then RecBole's built-ins (as RecBole-GNN does).

    RecBole's own `get_model` ends in a misleading `No module named 'lightgbm'` for unknown names, so an unknown
    name here is a ValueError that lists every model available.
    """
    if isinstance(name, type):
        return name
    ours = our_models()
    if name in ours:
        return ours[name]
    for package in _RECBOLE_MODEL_PACKAGES:
        module = importlib.import_module(f"recbole.model.{package}")
        model_class = getattr(module, name, None)
        if isinstance(model_class, type):
            return model_class
    raise ValueError(
        f"Unknown model '{name}'. Ours: {', '.join(sorted(ours))}. "
        f"RecBole's sequential models: {', '.join(sorted(n for n in dir(recbole_sequential) if n[0].isupper()))}. "
        "Other RecBole models (general, context-aware, knowledge-aware) are accepted by their class names too."
    )


def model_config_files(model_class, dataset_name):
    """Our YAML files for a run, in RecBole's order: protocol, model, dataset (which wins).

    A model inherits the YAML of each parent class that has one (PRORec reads TIGER.yaml, then PRORec.yaml),
    so shared options are written once.
    """
    lineage = [cls.__name__ for cls in reversed(model_class.__mro__)]
    candidates = [PROPERTIES_DIR / "overall.yaml"]
    candidates += [PROPERTIES_DIR / "model" / f"{name}.yaml" for name in lineage]
    candidates += [PROPERTIES_DIR / "dataset" / f"{dataset_name}.yaml"]
    return [str(path) for path in candidates if path.is_file()]
