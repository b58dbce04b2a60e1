"""recbole-prorec: generative recommendation with semantic item IDs (PRORec, TIGER) as a RecBole plugin."""

from recbole_prorec import compat as _compat

_compat.apply()

__version__ = "0.1.0"
