"""Step kinds: `builtin:shell|noop|approval|gate`, `plugin:`, `command:`, `workflow:`."""
