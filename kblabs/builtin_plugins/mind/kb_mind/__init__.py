"""The `@kb-labs/mind` built-in plugin: `kblabs.mind` served as REST routes and workflow
steps. The CLI (`python -m kblabs mind …`) is `kblabs/cli/mind_cmd.py`."""
