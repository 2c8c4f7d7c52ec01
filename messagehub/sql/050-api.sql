-- The tables of services/api: its scoped API tokens and the dead-letter
-- records an operator sent back to their source topic. Every statement is
-- safe to run again.

-- A token is shown once when it is created; only its SHA-256 is stored.
-- admin may do everything, agent acts on conversations as agent_id, service
-- reads and acts on conversations for another system.
CREATE TABLE IF NOT EXISTS api_tokens (
    id            uuid PRIMARY KEY,
    name          text NOT NULL,
    scope         text NOT NULL CHECK (scope IN ('admin', 'agent', 'service')),
    token_sha256  text NOT NULL UNIQUE,
    agent_id      uuid REFERENCES agents (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz,
    CHECK ((scope = 'agent') = (agent_id IS NOT NULL))
);

-- One row per dead letter sent back for another try, so a second retry of
-- the same record is reported instead of repeated.
CREATE TABLE IF NOT EXISTS dead_letter_retries (
    dead_letter_id  text PRIMARY KEY,
    stage           text NOT NULL,
    source_topic    text NOT NULL,
    retried_at      timestamptz NOT NULL DEFAULT now(),
    retried_by      uuid
);
