"""An example KB Labs plugin (used by the tests and docs)."""
