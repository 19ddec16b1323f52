"""``unstuck analyze``: plateaus and likely causes in the logs people already have.

Each supported format has one reader module that turns a source into a
:class:`~unstuck.record.rundata.RunData` with canonical series names (``names.py``):
TensorBoard event folders (``tensorboard_events``), HF ``trainer_state.json`` (``hf_trainer``),
Lightning ``metrics.csv`` (``lightning_csv``), Keras ``CSVLogger`` files (``keras_csv``), MLflow
runs (``mlflow_run``), unstuck's own run store (``run_store``), and logs no framework wrote:
any CSV (``table_csv``), JSON lines (``json_lines``) and a script's printout (``text_log``),
whose x axis ``_records`` finds from the names. ``formats.detect_format``
picks the reader; ``analysis.analyze`` runs the live detector and rules over the series.
Optional frameworks (tensorboard, mlflow) are imported only inside their reader.

>>> from unstuck.analyze import analyze, load
>>> run = analyze(load("lightning_logs/version_0/metrics.csv"))  # doctest: +SKIP
>>> run.plateaus, run.findings  # doctest: +SKIP
"""

from unstuck.analyze._common import FORMATS, KNOWN_FORMATS, LogFormatError
from unstuck.analyze.analysis import analyze, loss_series, summary
from unstuck.analyze.formats import detect_format, load
from unstuck.analyze.names import ALIASES, canonical_names

__all__ = [
    "ALIASES",
    "FORMATS",
    "KNOWN_FORMATS",
    "LogFormatError",
    "analyze",
    "canonical_names",
    "detect_format",
    "load",
    "loss_series",
    "summary",
]
