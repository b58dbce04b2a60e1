"""Model classes this plugin registers with RecBole (found first by `recbole_prorec.registry.get_model`)."""

from recbole_prorec.model.prorec import PRORec
from recbole_prorec.model.semconv import SemConv, SemConvTokenizer
from recbole_prorec.model.tiger import TIGER
from recbole_prorec.model.tokenizer import PRORecTokenizer

__all__ = ["PRORecTokenizer", "TIGER", "PRORec", "SemConvTokenizer", "SemConv"]
