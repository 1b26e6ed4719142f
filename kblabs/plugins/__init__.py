"""Plugins: manifests, discovery, registry, runtime and executors (issue: plugin runtime)."""
