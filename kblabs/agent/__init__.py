"""The host agent: the program a developer runs on their laptop.

The gateway tunnels calls (``{adapter, method, args}``) to it over a WebSocket; the
handlers that answer them live in :mod:`kblabs.agent.capabilities`.
"""
