"""Pipeline stages: plain functions (testable alone) plus their Prefect task wrappers."""
