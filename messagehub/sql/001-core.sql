-- The messagehub database: inboxes and their settings, agents, the raw mail
-- store, conversations and their messages, and the bookkeeping that makes
-- every consumer idempotent (processed events, the outbox, the send ledger).
-- Applied by `messagehub up` and by each service at start, before the
-- later NNN-*.sql files; every statement is safe to run again.

CREATE TABLE IF NOT EXISTS inboxes (
    id                   uuid PRIMARY KEY,
    name                 text NOT NULL UNIQUE,
    email                text NOT NULL,
    forwarding_address   text NOT NULL UNIQUE,
    greeting_enabled     boolean NOT NULL DEFAULT false,
    greeting_text        text,
    locale               text NOT NULL DEFAULT 'en',
    business_name        text,
    sender_name_style    text NOT NULL DEFAULT 'friendly'
                         CHECK (sender_name_style IN ('friendly', 'professional')),
    auto_assign_enabled  boolean NOT NULL DEFAULT true,
    auto_assign_limit    integer CHECK (auto_assign_limit IS NULL OR auto_assign_limit > 0),
    created_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS agents (
    id            uuid PRIMARY KEY,
    name          text NOT NULL,
    email         text NOT NULL UNIQUE,
    availability  text NOT NULL DEFAULT 'online'
                  CHECK (availability IN ('online', 'busy', 'offline')),
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- The collaborators of an inbox; last_assigned_at drives round robin.
CREATE TABLE IF NOT EXISTS inbox_agents (
    inbox_id          uuid NOT NULL REFERENCES inboxes (id) ON DELETE CASCADE,
    agent_id          uuid NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    last_assigned_at  timestamptz,
    PRIMARY KEY (inbox_id, agent_id)
);

-- Raw MIME, content-addressed. Events carry the digest, never the bytes.
CREATE TABLE IF NOT EXISTS raw_mails (
    sha256      text PRIMARY KEY,
    size        integer NOT NULL,
    content     bytea NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS contacts (
    id          uuid PRIMARY KEY,
    inbox_id    uuid NOT NULL REFERENCES inboxes (id) ON DELETE CASCADE,
    email       text NOT NULL,
    name        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (inbox_id, email)
);

CREATE TABLE IF NOT EXISTS conversations (
    id               uuid PRIMARY KEY,
    inbox_id         uuid NOT NULL REFERENCES inboxes (id) ON DELETE CASCADE,
    contact_id       uuid REFERENCES contacts (id),
    subject          text NOT NULL DEFAULT '',
    status           text NOT NULL DEFAULT 'open'
                     CHECK (status IN ('open', 'resolved')),
    assignee_id      uuid REFERENCES agents (id),
    reply_token      text NOT NULL UNIQUE,
    created_at       timestamptz NOT NULL,
    last_message_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS conversations_inbox_status
    ON conversations (inbox_id, status, assignee_id);

CREATE TABLE IF NOT EXISTS messages (
    id               uuid PRIMARY KEY,
    inbox_id         uuid NOT NULL REFERENCES inboxes (id) ON DELETE CASCADE,
    conversation_id  uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    -- Message-ID where present and sane, else "sha256:" and the raw digest
    dedup_key        text NOT NULL,
    direction        text NOT NULL CHECK (direction IN ('incoming', 'outgoing')),
    kind             text NOT NULL,
    rfc_message_id   text,
    in_reply_to      text[] NOT NULL DEFAULT '{}',
    "references"     text[] NOT NULL DEFAULT '{}',
    from_name        text NOT NULL DEFAULT '',
    from_email       text NOT NULL DEFAULT '',
    to_addresses     jsonb NOT NULL DEFAULT '[]',
    cc_addresses     jsonb NOT NULL DEFAULT '[]',
    subject          text NOT NULL DEFAULT '',
    text_body        text NOT NULL DEFAULT '',
    html_body        text,
    attachments      jsonb NOT NULL DEFAULT '[]',
    raw_sha256       text REFERENCES raw_mails (sha256),
    sent_at          timestamptz,
    received_at      timestamptz NOT NULL,
    UNIQUE (inbox_id, dedup_key)
);
CREATE INDEX IF NOT EXISTS messages_conversation ON messages (conversation_id, received_at);

-- Every Message-ID known to belong to a conversation, also ids only seen in
-- References (a root the inbox never received), so later mail threads to it.
CREATE TABLE IF NOT EXISTS thread_keys (
    inbox_id         uuid NOT NULL REFERENCES inboxes (id) ON DELETE CASCADE,
    message_id       text NOT NULL,
    conversation_id  uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    PRIMARY KEY (inbox_id, message_id)
);

-- Consumers record each event id they applied, in the same transaction as
-- its effects, so a redelivered event changes nothing.
CREATE TABLE IF NOT EXISTS processed_events (
    consumer      text NOT NULL,
    event_id      text NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Transactional outbox: events written with the rows that imply them and
-- published to Kafka after commit; published_at marks the hand-off.
CREATE TABLE IF NOT EXISTS outbox (
    id            bigserial PRIMARY KEY,
    topic         text NOT NULL,
    key           bytea,
    value         bytea NOT NULL,
    event_id      text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

-- The send ledger: one row per outbound request id. A row in 'sending' after
-- a crash is sent again with the same Message-ID.
CREATE TABLE IF NOT EXISTS send_ledger (
    request_id       text PRIMARY KEY,
    inbox_id         uuid NOT NULL REFERENCES inboxes (id) ON DELETE CASCADE,
    conversation_id  uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    kind             text NOT NULL,
    rfc_message_id   text NOT NULL,
    status           text NOT NULL CHECK (status IN ('sending', 'sent', 'failed', 'suppressed')),
    attempts         integer NOT NULL DEFAULT 0,
    smtp_response    text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
CREATE INDEX IF NOT EXISTS send_ledger_conversation_kind ON send_ledger (conversation_id, kind);

-- Mail that belongs to no customer conversation but that admins must see:
-- bounces no conversation claims, provider forwarding confirmations.
CREATE TABLE IF NOT EXISTS notices (
    id          uuid PRIMARY KEY,
    inbox_id    uuid NOT NULL REFERENCES inboxes (id) ON DELETE CASCADE,
    kind        text NOT NULL,
    subject     text NOT NULL DEFAULT '',
    detail      jsonb NOT NULL DEFAULT '{}',
    raw_sha256  text REFERENCES raw_mails (sha256),
    created_at  timestamptz NOT NULL DEFAULT now()
);
