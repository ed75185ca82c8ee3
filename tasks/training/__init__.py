"""Training: loading the base model (hub, folder, GGUF, tiny), tokenising the mixture, the Trainer client and its launcher."""
