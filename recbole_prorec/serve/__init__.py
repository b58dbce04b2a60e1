"""Serving: every user's top-K pre-computed from a checkpoint into SQLite, refreshed per user, looked up in O(1).

    python -m recbole_prorec.serve precache --checkpoint saved/PRORec-X.pth --k 50 --store recs.sqlite
    python -m recbole_prorec.serve refresh --checkpoint saved/PRORec-X.pth --store recs.sqlite --interactions new.inter
    python -m recbole_prorec.serve lookup --store recs.sqlite USER [--k 10]
    python -m recbole_prorec.serve serve --store recs.sqlite --port 8000      # GET /recommendations/USER?k=10

From Python: `open_store("recs.sqlite").top_k(user, 10)`.
"""

from recbole_prorec.serve.store import Recommendations, RecommendationStore, StoreError, open_store

__all__ = ["RecommendationStore", "Recommendations", "StoreError", "open_store"]
