-- Router tables and columns beyond the core schema: inbox threading
-- settings, the subject fallback and successor links of conversations, the
-- participants of each conversation (read by the trust check of threading),
-- and the decoded details of each message. Applied after 001-core.sql; every
-- statement is safe to run again.

-- A reply to a conversation resolved longer than this ago starts a new
-- conversation instead of reopening it; NULL always reopens.
ALTER TABLE inboxes ADD COLUMN IF NOT EXISTS new_conversation_after_days integer
    CHECK (new_conversation_after_days IS NULL OR new_conversation_after_days > 0);
-- How recent a conversation must be for the subject fallback to join mail
-- to it, in days; 0 turns the fallback off.
ALTER TABLE inboxes ADD COLUMN IF NOT EXISTS subject_threading_days integer NOT NULL DEFAULT 14
    CHECK (subject_threading_days >= 0);

-- Correspondent and normalized subject of the mail that started the
-- conversation (see services/router/threader.py); NULL when the subject
-- was empty.
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS subject_key text;
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS started_by_reply boolean NOT NULL DEFAULT false;
-- The conversation that a later reply started when this one was resolved
-- too long ago; mail found through this one's keys goes there.
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS superseded_by uuid REFERENCES conversations (id);
CREATE INDEX IF NOT EXISTS conversations_subject_key
    ON conversations (inbox_id, subject_key, last_message_at) WHERE subject_key IS NOT NULL;

-- Every address that took part in a conversation: From, Sender, Reply-To,
-- To and Cc of its incoming mail, recipients of its outgoing mail, and
-- "list:<List-Id>" for list mail. The inbox's own addresses are left out.
CREATE TABLE IF NOT EXISTS conversation_participants (
    conversation_id  uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    address          text NOT NULL,
    -- the first role seen: contact, from, sender, reply_to, to, cc, recipient or list
    role             text NOT NULL,
    PRIMARY KEY (conversation_id, address)
);

ALTER TABLE messages ADD COLUMN IF NOT EXISTS new_text text NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN IF NOT EXISTS auto_submitted boolean NOT NULL DEFAULT false;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS list_id text;
-- Failed recipients, status and returned ids, for messages of kind bounce.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS bounce jsonb;
-- What the MIME parser repaired or could not read.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS defects jsonb NOT NULL DEFAULT '[]';
-- The threading rule that placed the message: reply_token, in_reply_to,
-- references, own_message_id, subject, new or outgoing.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS threaded_by text;

-- The dedup key of the mail behind a notice, so a second copy adds nothing.
ALTER TABLE notices ADD COLUMN IF NOT EXISTS dedup_key text;
CREATE INDEX IF NOT EXISTS notices_dedup_key ON notices (inbox_id, dedup_key);
