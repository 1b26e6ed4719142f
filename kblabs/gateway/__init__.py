"""The gateway: host registry, the host-agent tunnel, dispatch and facades."""
