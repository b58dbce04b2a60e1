"""recbole-prorec: generative recommendation with semantic item IDs (PRORec, TIGER) as a RecBole plugin.

Importing the package changes nothing global. The RecBole compatibility shims (`recbole_prorec.compat.apply`) are
applied where a run starts (`quick_start.run`, `evaluate.load_data_and_model`); call `compat.apply()` yourself
before driving RecBole's Trainer directly with our models.
"""

__version__ = "0.1.0"
