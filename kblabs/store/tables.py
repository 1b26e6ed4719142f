"""The store's own tables. Other modules add theirs to the same `metadata`."""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, DateTime, Index, Integer, MetaData, String, Table

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


# --- workflow engine (kblabs.workflow) ------------------------------------------------
# Times are timezone-aware; JSON columns hold what the API returns. Jobs are the queue:
# claimed with a lease (owner + token + expiry), every write fenced by the token.

workflow_runs = Table(
    "workflow_runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant_id", String(64), nullable=False, index=True),
    Column("workflow_id", String(256), nullable=False, index=True),
    Column("name", String(256), nullable=False),
    Column("version", String(64), nullable=True),
    Column("status", String(16), nullable=False, index=True),
    Column("trigger", JSON, nullable=False),
    Column("inputs", JSON, nullable=False),
    Column("env", JSON, nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("spec", JSON, nullable=False),  # snapshot: later edits never change a run
    Column("idempotency_key", String(256), nullable=True, unique=True),
    Column("concurrency_group", String(256), nullable=True),
    Column("parent_run_id", String(64), nullable=True, index=True),
    Column("depth", Integer, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("cancel_requested", Boolean, nullable=False),
    Column("error", JSON, nullable=True),
    Column("result", JSON, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("duration_ms", Integer, nullable=True),
)

workflow_jobs = Table(
    "workflow_jobs",
    metadata,
    Column("id", String(320), primary_key=True),  # "<runId>:<jobName>"
    Column("run_id", String(64), nullable=False, index=True),
    Column("name", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("priority", Integer, nullable=False),  # lower runs first
    Column("needs", JSON, nullable=False),
    Column("pending_deps", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),  # claims so far (a lost lease counts)
    Column("failures", Integer, nullable=False),  # retries spent
    Column("available_at", DateTime(timezone=True), nullable=False),
    Column("lease_owner", String(128), nullable=True),
    Column("lease_token", String(64), nullable=True),
    Column("lease_expires_at", DateTime(timezone=True), nullable=True, index=True),
    Column("concurrency_group", String(256), nullable=True),
    Column("cancel_requested", Boolean, nullable=False),
    Column("skip_reason", String(256), nullable=True),
    Column("outputs", JSON, nullable=True),
    Column("error", JSON, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Index("ix_workflow_jobs_claim", "status", "available_at", "priority"),
)

workflow_steps = Table(
    "workflow_steps",
    metadata,
    Column("id", String(400), primary_key=True),  # "<jobId>:<section>:<index>"
    Column("run_id", String(64), nullable=False, index=True),
    Column("job_id", String(320), nullable=False, index=True),
    Column("section", String(16), nullable=False),  # pre | main | onSuccess | onFailure | post
    Column("idx", Integer, nullable=False),
    Column("step_id", String(128), nullable=False),  # the spec's id
    Column("name", String(256), nullable=False),
    Column("uses", String(512), nullable=False),
    Column("status", String(24), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("inputs", JSON, nullable=True),  # `with` after interpolation
    Column("outputs", JSON, nullable=True),
    Column("error", JSON, nullable=True),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
)

workflow_approvals = Table(
    "workflow_approvals",
    metadata,
    Column("step_row_id", String(400), primary_key=True),  # workflow_steps.id
    Column("run_id", String(64), nullable=False, index=True),
    Column("job_id", String(320), nullable=False),
    Column("step_id", String(128), nullable=False),
    Column("status", String(16), nullable=False, index=True),  # pending|approved|rejected|…
    Column("title", String(512), nullable=True),
    Column("instructions", String(4000), nullable=True),
    Column("context", JSON, nullable=True),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("action", String(16), nullable=True),
    Column("comment", String(4000), nullable=True),
    Column("data", JSON, nullable=True),
    Column("resolved_by", String(128), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("resolved_at", DateTime(timezone=True), nullable=True),
)

workflow_schedules = Table(
    "workflow_schedules",
    metadata,
    Column("id", String(320), primary_key=True),  # workflow:<id> | plugin:<pluginId>:<id> | api
    Column("source", String(16), nullable=False),  # workflow | plugin | api
    Column("tenant_id", String(64), nullable=False),
    Column("workflow_id", String(256), nullable=True),
    Column("plugin_id", String(256), nullable=True),
    Column("job_type", String(512), nullable=True),
    Column("cron", String(128), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("payload", JSON, nullable=True),
    Column("priority", Integer, nullable=False),
    Column("next_run_at", DateTime(timezone=True), nullable=True),
    Column("last_run_at", DateTime(timezone=True), nullable=True),
    Column("last_run_id", String(64), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # none | latest: what the leader does, on taking over, with fires missed while no
    # process ran the scheduler (skip them, or run the last one once)
    Column("catch_up", String(16), nullable=False, server_default="none"),
)

run_events = Table(
    "workflow_run_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), nullable=False, index=True),
    Column("job_id", String(320), nullable=True),
    Column("step_id", String(400), nullable=True),
    Column("type", String(64), nullable=False),
    Column("payload", JSON, nullable=True),
    Column("ts", DateTime(timezone=True), nullable=False, index=True),
)

run_logs = Table(
    "workflow_run_logs",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), nullable=False, index=True),
    Column("job_id", String(320), nullable=True),
    Column("step_id", String(400), nullable=True),
    Column("level", String(8), nullable=False),
    Column("stream", String(8), nullable=True),  # stdout | stderr | None (engine)
    Column("line_no", Integer, nullable=True),
    Column("message", String(8000), nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False, index=True),
)

workflow_artifacts = Table(
    "workflow_artifacts",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("run_id", String(64), nullable=False, index=True),
    Column("job_id", String(320), nullable=False),
    Column("step_id", String(400), nullable=True),
    Column("name", String(256), nullable=False),
    Column("path", String(1024), nullable=False),  # storage path
    Column("size", Integer, nullable=False),
    Column("digest", String(96), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Named leases across processes (the scheduler leader) and one running job per group.
leases = Table(
    "kb_leases",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("owner", String(128), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

# --- log records (kblabs.observability.log_store): what GET /api/v1/logs reads ----------
# `id` is ULID-like (time-ordered), so ordering by id is ordering by time. `level_no` is
# loguru's number (debug 10, info 20, warning 30, error 40) for "this level or worse".

log_records = Table(
    "log_records",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("ts", DateTime(timezone=True), nullable=False, index=True),
    Column("level", String(16), nullable=False),
    Column("level_no", Integer, nullable=False),
    Column("message", String, nullable=False),  # unbounded (TEXT-like)
    Column("module", String(256), nullable=True),
    Column("plugin", String(256), nullable=True),
    Column("request_id", String(128), nullable=True, index=True),
    Column("trace_id", String(128), nullable=True, index=True),
    Column("execution_id", String(128), nullable=True, index=True),
    Column("namespace_id", String(64), nullable=True),
    Column("fields", JSON, nullable=True),
)
