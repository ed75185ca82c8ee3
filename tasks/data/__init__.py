"""The data stages: reading files as published, normalising them into records, dedup, decontamination and the mixture, each a content-addressed stage output."""
