"""Prefect flows: the data sub-flow (data.py), the whole pipeline (pipeline.py) and the CLI."""
