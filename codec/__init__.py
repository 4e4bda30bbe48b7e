"""A loudness-safe neural speech codec pipeline for Telugu.

Stages (each a plain function here, with a thin ``main`` run by ``codec <stage>``):
ingest -> normalize -> validate -> train -> evaluate -> promote.
"""

__version__ = "0.1.0"
