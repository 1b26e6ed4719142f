"""The `@kb-labs/commit` built-in plugin: a Conventional Commits message for the staged
diff, written by the platform's LLM (tier `small`)."""
