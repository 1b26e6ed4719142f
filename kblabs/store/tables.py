"""The store's own tables. Other modules add theirs to the same `metadata`."""

from __future__ import annotations

from sqlalchemy import JSON, Column, DateTime, Integer, MetaData, String, Table

# Constraint names are spelled out so Alembic migrations match on SQLite and PostgreSQL.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# One row per process start: the persisted boot counter behind service_restarts_total.
boots = Table(
    "kb_boots",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("hostname", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("version", String(64), nullable=False),
)


# --- identity (kblabs.auth) -------------------------------------------------------------

auth_clients = Table(
    "auth_clients",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("namespace_id", String(64), nullable=False, index=True),
    Column("role", String(16), nullable=False),
    Column("host_id", String(64), nullable=False, unique=True),
    Column("secret_hash", String(64), nullable=False),
    # the secret before the last rotation, accepted until previous_secret_expires_at
    Column("previous_secret_hash", String(64), nullable=True),
    Column("previous_secret_expires_at", DateTime(timezone=True), nullable=True),
    Column("capabilities", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

# Refresh tokens are opaque; only their SHA-256 is stored. A family is one login's chain
# of rotations: replaying a consumed token revokes the whole family.
auth_refresh_tokens = Table(
    "auth_refresh_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("family_id", String(64), nullable=False, index=True),
    Column("client_id", String(64), nullable=False, index=True),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("consumed_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

# Long-lived bearer tokens: the bootstrap admin token, host machine tokens, operator keys.
auth_api_keys = Table(
    "auth_api_keys",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("key_id", String(32), nullable=False, unique=True),
    Column("label", String(128), nullable=False),
    Column("role", String(16), nullable=False),
    Column("namespace_id", String(64), nullable=False),
    Column("host_id", String(64), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

# One-time tokens that let a machine register itself without an admin token.
auth_enrollments = Table(
    "auth_enrollments",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("enrollment_id", String(32), nullable=False, unique=True),
    Column("namespace_id", String(64), nullable=True),
    Column("role", String(16), nullable=False),
    Column("note", String(256), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True), nullable=True),
)

# --- hosts (kblabs.gateway) --------------------------------------------------------------

gateway_hosts = Table(
    "gateway_hosts",
    metadata,
    Column("namespace_id", String(64), primary_key=True),
    Column("host_id", String(64), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("capabilities", JSON, nullable=False),
    Column("host_type", String(16), nullable=False),
    Column("workspaces", JSON, nullable=False),
    Column("last_status", String(16), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


# --- analytics (kblabs.platform: the embedded analytics adapter) ------------------------

analytics_events = Table(
    "analytics_events",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("type", String(256), nullable=False, index=True),
    Column("ts", DateTime(timezone=True), nullable=False, index=True),
    Column("ingest_ts", DateTime(timezone=True), nullable=False),
    Column("namespace_id", String(64), nullable=False),
    Column("source", JSON, nullable=False),  # {product, version}
    Column("run_id", String(64), nullable=True),
    Column("actor", JSON, nullable=True),  # {type, id, name}
    Column("ctx", JSON, nullable=True),
    Column("payload", JSON, nullable=True),
)

# --- webhook deliveries (kblabs.rest.webhooks): a leased work queue ----------------------

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("delivery_id", String(128), primary_key=True),  # "<source>:<sender's id>"
    Column("source", String(64), nullable=False),
    Column("event", String(256), nullable=False),
    Column("payload", JSON, nullable=True),
    Column("handlers", JSON, nullable=False),  # [{"pluginId", "handler"}] matched on receipt
    Column("status", String(16), nullable=False, index=True),  # queued|running|done|failed
    Column("attempts", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("available_at", DateTime(timezone=True), nullable=False, index=True),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_token", String(64), nullable=True),
    Column("lease_expires_at", DateTime(timezone=True), nullable=True),
    Column("results", JSON, nullable=True),
    Column("error", String(2000), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
