"""Workflow engine: specs, expressions, queue, workers, scheduler and API."""
