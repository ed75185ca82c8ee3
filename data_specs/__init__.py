"""Pipeline specs: the typed schema, the canonical record and the bundled demo."""
