"""Marketplace: the lock file of installed plugins and adapters, installers, API."""
