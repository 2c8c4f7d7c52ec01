-- Tables and columns that services/assign and messagehub.actions use: the inbox's
-- assignment and business-hours settings, the queue of conversations that
-- wait for a free agent, the log of assignment decisions, and the
-- out-of-hours notes already sent. Every statement is safe to run again.

-- Assignment: the chooser picks among the online collaborators below
-- auto_assign_limit (001-core.sql). round_robin takes the one assigned
-- least recently, balanced the one with the fewest open conversations.
ALTER TABLE inboxes ADD COLUMN IF NOT EXISTS assign_chooser text NOT NULL DEFAULT 'round_robin'
    CHECK (assign_chooser IN ('round_robin', 'balanced'));

-- Business hours, judged in time_zone (an IANA name; never a fixed offset)
-- at each mail's arrival. business_hours maps mon..sun to a list of
-- ["HH:MM", "HH:MM"] intervals. A missing or empty weekday is closed, and
-- ["00:00", "24:00"] is open all day. A closing time at or before the
-- opening time ends on the next day. Holidays are closed all day.
-- messagehub.business_hours reads these columns; outbound reads them too,
-- for the next opening in the out-of-hours note (out_of_hours_text is in
-- 040-outbound.sql).
ALTER TABLE inboxes ADD COLUMN IF NOT EXISTS business_hours_enabled boolean NOT NULL DEFAULT false;
ALTER TABLE inboxes ADD COLUMN IF NOT EXISTS time_zone text NOT NULL DEFAULT 'UTC';
ALTER TABLE inboxes ADD COLUMN IF NOT EXISTS business_hours jsonb NOT NULL DEFAULT
    '{"mon": [["09:00", "17:00"]], "tue": [["09:00", "17:00"]], "wed": [["09:00", "17:00"]],
      "thu": [["09:00", "17:00"]], "fri": [["09:00", "17:00"]]}'
    CHECK (jsonb_typeof(business_hours) = 'object');
ALTER TABLE inboxes ADD COLUMN IF NOT EXISTS holidays date[] NOT NULL DEFAULT '{}';
ALTER TABLE inboxes ADD COLUMN IF NOT EXISTS out_of_hours_enabled boolean NOT NULL DEFAULT true;

-- Conversations waiting for an agent, served in order of queued_at: the
-- arrival of the mail that opened the conversation, or the moment a person
-- put it back. Arrival times come in milliseconds, so mails of one burst can
-- share one, and position (the order of queueing) breaks the tie. A row
-- leaves when the conversation is assigned or resolved.
CREATE TABLE IF NOT EXISTS assignment_queue (
    conversation_id  uuid PRIMARY KEY REFERENCES conversations (id) ON DELETE CASCADE,
    inbox_id         uuid NOT NULL REFERENCES inboxes (id) ON DELETE CASCADE,
    queued_at        timestamptz NOT NULL,
    reason           text NOT NULL
);
ALTER TABLE assignment_queue ADD COLUMN IF NOT EXISTS position bigserial;
DROP INDEX IF EXISTS assignment_queue_order;
CREATE INDEX IF NOT EXISTS assignment_queue_in_order
    ON assignment_queue (inbox_id, queued_at, position);

-- Every assignment decision, written under the inbox's row lock, so id
-- order is the order in which the decisions took effect. open_count is the
-- number of the agent's open conversations in the inbox right after the
-- decision, and assign_limit is the inbox's limit then. Together they show
-- that the limit was kept, or that a person overrode it (over_limit).
CREATE TABLE IF NOT EXISTS assignment_log (
    id               bigserial PRIMARY KEY,
    inbox_id         uuid NOT NULL REFERENCES inboxes (id) ON DELETE CASCADE,
    conversation_id  uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    decision         text NOT NULL CHECK (decision IN ('assigned', 'unassigned', 'queued')),
    agent_id         uuid REFERENCES agents (id) ON DELETE SET NULL,
    reason           text NOT NULL,
    open_count       integer,
    assign_limit     integer,
    over_limit       boolean NOT NULL DEFAULT false,
    event_id         text NOT NULL,
    decided_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS assignment_log_inbox ON assignment_log (inbox_id, id);

-- One out-of-hours note per conversation and closed period. A closed period
-- is named by the instant it ends, the next opening. closed_until is null
-- when the inbox does not open again within the search horizon.
CREATE TABLE IF NOT EXISTS out_of_hours_notes (
    conversation_id  uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    closed_until     timestamptz,
    request_id       text NOT NULL,
    message_id       uuid,
    requested_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE NULLS NOT DISTINCT (conversation_id, closed_until)
);
