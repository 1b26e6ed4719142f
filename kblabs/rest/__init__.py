"""REST: platform routes about plugins, plugin route dispatch, webhooks."""
