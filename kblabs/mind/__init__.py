"""`mind`: semantic search over a team's code.

A workspace's text files are cut into overlapping line windows (`chunking`), embedded
with the configured embeddings adapter and stored in the vector store, one collection
per index (`index`). `workspace` decides which files count (`.gitignore`, binaries,
size). The `@kb-labs/mind` built-in plugin (`kblabs/builtin_plugins/mind`) serves it
over REST and as a workflow step; `python -m kblabs mind …` is its CLI.
"""
