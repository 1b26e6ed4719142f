"""What the running process holds: settings, lifecycle, metrics and the core components.

One `Runtime` per app, reachable from handlers as `request.app.state.runtime`.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from kblabs.auth.service import AuthService
from kblabs.config import Settings
from kblabs.gateway.execute import Executions
from kblabs.gateway.hub import HostHub
from kblabs.lifecycle import Lifecycle
from kblabs.marketplace.service import Marketplace
from kblabs.observability.looplag import LoopLagSampler
from kblabs.observability.metrics import Metrics
from kblabs.observability.operations import OperationStats
from kblabs.platform import AdapterRegistry
from kblabs.plugins.registry import PluginRegistry
from kblabs.plugins.runner import PluginRunner
from kblabs.rest.webhooks import WebhookQueue
from kblabs.state.service import StateBroker
from kblabs.store import Store
from kblabs.workflow.engine import WorkflowEngine


@dataclass
class Runtime:
    settings: Settings
    store: Store
    adapters: AdapterRegistry
    state: StateBroker
    auth: AuthService
    plugins: PluginRegistry
    runner: PluginRunner
    webhooks: WebhookQueue
    workflows: WorkflowEngine
    hub: HostHub
    executions: Executions
    marketplace: Marketplace
    loop_lag: LoopLagSampler
    lifecycle: Lifecycle
    metrics: Metrics
    operations: OperationStats = field(default_factory=OperationStats)
    instance_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
