"""Model classes this plugin registers with RecBole (found first by `recbole_prorec.utils.get_model`)."""

__all__ = []
