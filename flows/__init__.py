"""Prefect flows: the data sub-flow (data.py), the whole pipeline (pipeline.py) and the CLI."""

import logging

# Every project logger lives under "mlora" (mlora.train, mlora.catalog, ...). Prefect
# leaves the root logger at WARNING in the processes it starts for scheduled runs, so
# INFO progress lines (step, loss, tokens/s, ETA) would be dropped there without this.
logging.getLogger("mlora").setLevel(logging.INFO)
