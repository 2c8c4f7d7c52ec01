-- What services/outbound reads and writes besides the send ledger of
-- 001-core.sql: the inbox settings of automatic mail, per-inbox SMTP and
-- the IMAP login of the Sent-folder copy (passwords encrypted with
-- messagehub.secrets), satisfaction surveys and their answers, and the
-- per-inbox send-rate windows. Every statement is safe to run again.

-- Inbox settings that shape outgoing mail. The control plane writes them.
ALTER TABLE inboxes ADD COLUMN IF NOT EXISTS csat_enabled boolean NOT NULL DEFAULT false;
ALTER TABLE inboxes ADD COLUMN IF NOT EXISTS csat_text text;
ALTER TABLE inboxes ADD COLUMN IF NOT EXISTS out_of_hours_text text;
ALTER TABLE inboxes ADD COLUMN IF NOT EXISTS help_center_url text;
ALTER TABLE inboxes ADD COLUMN IF NOT EXISTS avatar_url text;

-- An inbox's own SMTP server. Without a row (or with enabled false) the
-- inbox only forwards, and its mail goes through the operator's relay.
CREATE TABLE IF NOT EXISTS inbox_smtp (
    inbox_id              uuid PRIMARY KEY REFERENCES inboxes (id) ON DELETE CASCADE,
    enabled               boolean NOT NULL DEFAULT true,
    host                  text NOT NULL,
    port                  integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    -- Empty means no AUTH at all, never an AUTH with an empty login.
    username              text NOT NULL DEFAULT '',
    -- A Fernet token from messagehub.secrets.encrypt, never the password.
    password_encrypted    text,
    helo_domain           text,
    -- auto: implicit TLS on port 465, STARTTLS on any other port.
    encryption            text NOT NULL DEFAULT 'auto'
                          CHECK (encryption IN ('auto', 'tls', 'starttls', 'none')),
    auth_method           text NOT NULL DEFAULT 'auto'
                          CHECK (auth_method IN ('auto', 'login', 'plain', 'cram-md5')),
    -- NULL means the operator's default (MESSAGEHUB_OUTBOUND_MAX_SENDS_PER_MINUTE).
    max_sends_per_minute  integer CHECK (max_sends_per_minute IS NULL OR max_sends_per_minute > 0),
    -- Providers that file sent mail themselves (Gmail) turn the copy off.
    save_to_sent          boolean NOT NULL DEFAULT true,
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- The IMAP login outbound uses for the Sent-folder copy. IMAP sync may
-- keep more columns in this table; outbound reads only these, all nullable
-- so that another writer's rows stay valid.
CREATE TABLE IF NOT EXISTS inbox_imap (
    inbox_id  uuid PRIMARY KEY REFERENCES inboxes (id) ON DELETE CASCADE
);
ALTER TABLE inbox_imap ADD COLUMN IF NOT EXISTS host text;
ALTER TABLE inbox_imap ADD COLUMN IF NOT EXISTS port integer;
ALTER TABLE inbox_imap ADD COLUMN IF NOT EXISTS username text;
ALTER TABLE inbox_imap ADD COLUMN IF NOT EXISTS password_encrypted text;
-- 'tls' (implicit, usually 993), 'starttls' or 'none' (loopback only).
ALTER TABLE inbox_imap ADD COLUMN IF NOT EXISTS security text;
-- A folder name that overrides the SPECIAL-USE and usual-name search.
ALTER TABLE inbox_imap ADD COLUMN IF NOT EXISTS sent_folder text;

-- What the ledger keeps about each send besides its state.
ALTER TABLE send_ledger ADD COLUMN IF NOT EXISTS recipients text[] NOT NULL DEFAULT '{}';
ALTER TABLE send_ledger ADD COLUMN IF NOT EXISTS automatic boolean NOT NULL DEFAULT false;
ALTER TABLE send_ledger ADD COLUMN IF NOT EXISTS error_class text;
ALTER TABLE send_ledger ADD COLUMN IF NOT EXISTS smtp_code integer;
-- The IMAP Sent copy: NULL when none is due, else pending, saved or failed.
ALTER TABLE send_ledger ADD COLUMN IF NOT EXISTS sent_copy text
    CHECK (sent_copy IS NULL OR sent_copy IN ('pending', 'saved', 'failed'));
ALTER TABLE send_ledger ADD COLUMN IF NOT EXISTS sent_copy_error text;
-- The per-recipient caps on automatic mail count recent sends.
CREATE INDEX IF NOT EXISTS send_ledger_automatic_recent
    ON send_ledger (inbox_id, finished_at) WHERE automatic AND status = 'sent';

-- One survey per conversation. The token in the link is an HMAC of the
-- conversation id under the server secret; only its SHA-256 is stored.
CREATE TABLE IF NOT EXISTS csat_surveys (
    conversation_id  uuid PRIMARY KEY REFERENCES conversations (id) ON DELETE CASCADE,
    inbox_id         uuid NOT NULL REFERENCES inboxes (id) ON DELETE CASCADE,
    token_sha256     text NOT NULL UNIQUE,
    locale           text NOT NULL DEFAULT 'en',
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    rating           smallint CHECK (rating IS NULL OR rating BETWEEN 1 AND 5),
    comment          text,
    answered_at      timestamptz
);

-- Sends per inbox per minute, for the per-inbox rate limit.
CREATE TABLE IF NOT EXISTS outbound_rate_windows (
    inbox_id      uuid NOT NULL REFERENCES inboxes (id) ON DELETE CASCADE,
    window_start  timestamptz NOT NULL,
    sends         integer NOT NULL DEFAULT 0,
    PRIMARY KEY (inbox_id, window_start)
);

-- The sent bytes, for a Sent-folder copy retried after a crash.
ALTER TABLE send_ledger ADD COLUMN IF NOT EXISTS raw_sha256 text;
