"""A loudness-safe neural speech codec pipeline for Telugu.

Stages: ingest -> normalize -> validate -> train -> evaluate -> promote, each run by
``codec <stage>`` (:data:`codec.cli.main.COMMANDS` names the module). A stage's module holds
the work as library functions that take typed params (``ingest``, ``normalize``,
``validate``, ``train``, ``evaluate_model``, ``promote``) and, for the command line,
``add_arguments(parser)`` and ``run(args)``: read the stage's section of ``params.yaml``
(:mod:`codec.params`), call those functions, write the reports, print a summary.

``codec.__version__`` is the installed distribution's version (``pyproject.toml``'s, read
from the package metadata when first asked for), or ``"unknown"`` in a checkout that was
never installed.
"""

from __future__ import annotations

DISTRIBUTION = "telugu-speech-codec"


def __getattr__(name: str) -> str:
    # Read lazily (PEP 562), so importing a codec module does not scan the installed packages.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(DISTRIBUTION)
        except PackageNotFoundError:
            return "unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
