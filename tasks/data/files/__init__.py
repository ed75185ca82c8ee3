"""Reading data files (JSONL, JSON, CSV/TSV, Parquet) as row batches that remember their file row numbers, and writing Parquet atomically."""
