"""Model code: torch, transformers, safetensors (and peft only where a test or export
check needs it). Nothing here imports Prefect, MLflow, DuckDB or data_specs, so the
package runs alone, e.g. on a GPU machine that has only torch and transformers."""
