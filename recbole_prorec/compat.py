"""Compatibility shims for RecBole 1.2.1 on the pinned stack (torch 2.13, numpy 1.26, pandas 2.x).

Each shim states why it exists. `apply()` is idempotent; it runs where a run starts (`quick_start.run`,
`evaluate.load_data_and_model`), not on import, so importing the package has no global side effect.
"""

import enum
import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)


def _checkpoint_safe_globals():
    """Classes RecBole pickles into a checkpoint (`{"config": Config, ...}`), nothing more.

    Why: torch >= 2.6 loads with `weights_only=True`, which refuses any class not allow-listed, and RecBole's
    Trainer (`resume_checkpoint`, `evaluate(load_best_model=True)`) calls `torch.load` without arguments.
    Allow-listing these classes keeps the safe unpickler on for everything else, unlike `weights_only=False`.
    """
    import yaml
    from recbole.config.configurator import Config
    from recbole.utils import enum_type

    from recbole_prorec.registry import our_models, recbole_model_classes

    enums = [
        value
        for value in vars(enum_type).values()
        if isinstance(value, type) and issubclass(value, enum.Enum) and value.__module__ == enum_type.__name__
    ]
    numpy_scalars = [np.dtype, np.core.multiarray.scalar, np.ndarray, np.core.multiarray._reconstruct]
    numpy_dtypes = [type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32", "bool")]
    # The Config keeps its YAML loader class and the model class (references only, never instantiated on load).
    model_classes = [*recbole_model_classes(), *our_models().values()]
    return [Config, yaml.loader.FullLoader, torch.device, *enums, *numpy_scalars, *numpy_dtypes, *model_classes]


def allow_recbole_checkpoints():
    torch.serialization.add_safe_globals(_checkpoint_safe_globals())


def save_checkpoints_with_protocol_2():
    """Make RecBole's Trainer write checkpoints that torch's weights-only unpickler can read, with the data they
    were trained on.

    Why: `Trainer._save_checkpoint` calls `torch.save(..., pickle_protocol=4)`, and protocol 4's FRAME opcode is
    rejected by the weights-only unpickler of torch 2.13 ("Unsupported operand 149"). The wrapper runs RecBole's
    own method with `torch.save` forced to torch's default protocol 2 for the duration of the call. It also adds
    `data_fingerprint` (a string: `utils.data_fingerprint` of the trainer's config), so that a checkpoint later
    given to a run whose dataset changed is refused (`checkpoint.check_data`) instead of loaded onto other items.
    """
    from recbole.trainer import trainer as recbole_trainer

    original = recbole_trainer.Trainer._save_checkpoint
    if getattr(original, "saves_protocol_2", False):
        return
    real_save = torch.save

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        fingerprint = _trainer_data_fingerprint(self)

        def save_protocol_2(obj, f, pickle_module=None, pickle_protocol=None, **save_kwargs):
            if fingerprint and isinstance(obj, dict):
                obj = {**obj, "data_fingerprint": fingerprint}
            return real_save(obj, f, **save_kwargs)

        torch.save = save_protocol_2
        try:
            return original(self, epoch, verbose=verbose, **kwargs)
        finally:
            torch.save = real_save

    _save_checkpoint.saves_protocol_2 = True
    recbole_trainer.Trainer._save_checkpoint = _save_checkpoint


def _trainer_data_fingerprint(trainer):
    """`utils.data_fingerprint` of the trainer's config, computed once per trainer; None when it has no dataset
    files to read (a config built by hand)."""
    if "_data_fingerprint" not in trainer.__dict__:
        from recbole_prorec.utils import data_fingerprint

        try:
            trainer._data_fingerprint = data_fingerprint(trainer.config)
        except (TypeError, KeyError, OSError):
            trainer._data_fingerprint = None
    return trainer._data_fingerprint


def load_checkpoint(path, map_location="cpu"):
    """Load a RecBole checkpoint with torch's safe (weights-only) unpickler and our allow-list."""
    allow_recbole_checkpoints()
    return torch.load(str(path), map_location=map_location, weights_only=True)


def restore_numpy_aliases():
    """Why: RecBole's metrics use `np.float` & co., removed in numpy 1.24. RecBole restores them only inside
    `Config.__init__` (`compatibility_settings`), so code that unpickles a Config from a checkpoint instead of
    building one (evaluating a saved model) fails in the evaluator without this."""
    from recbole.config.configurator import Config

    Config.compatibility_settings(None)


def disable_anomaly_detection():
    """Why: importing `recbole.model.sequential_recommender` runs SINE's module-level
    `torch.autograd.set_detect_anomaly(True)`, which slows every model's backward pass 2-3x (and ours, which
    import that package). Switched back off after the import; a user who wants it can turn it on again."""
    import recbole.model.sequential_recommender  # noqa: F401  (the import that switches it on)

    torch.autograd.set_detect_anomaly(False)


def name_the_file_in_load_errors():
    """Why: RecBole's `Dataset._load_feat` reports an atomic file it cannot parse without naming it ("Unable to
    convert column timestamp:float to type float64", "not enough values to unpack" for an empty file). The
    wrapper re-raises the same ValueError with the file's path in front."""
    from recbole.data.dataset import Dataset

    original = Dataset._load_feat
    if getattr(original, "names_the_file", False):
        return

    def _load_feat(self, filepath, source):
        try:
            return original(self, filepath, source)
        except ValueError as error:
            raise ValueError(f"{filepath}: {error} (a RecBole atomic file: a 'name:type' header, then rows)") from error

    _load_feat.names_the_file = True
    Dataset._load_feat = _load_feat


def apply():
    """Every shim above (idempotent)."""
    restore_numpy_aliases()
    disable_anomaly_detection()
    allow_recbole_checkpoints()
    save_checkpoints_with_protocol_2()
    name_the_file_in_load_errors()
