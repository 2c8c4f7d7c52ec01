-- What services/ingest keeps besides the raw mail store of 001-core.sql: the
-- IMAP settings of each inbox, the per-folder sync cursor, mails that could
-- not be fetched (retried, then quarantined) and the health of each sync.
-- Every statement is safe to run again.

-- An inbox's IMAP account. Outbound reads the connection columns for the
-- Sent-folder copy; the sync_* columns are ingest's. Passwords are Fernet
-- tokens made by messagehub.secrets.encrypt, never plain text.
CREATE TABLE IF NOT EXISTS inbox_imap (
    inbox_id  uuid PRIMARY KEY REFERENCES inboxes (id) ON DELETE CASCADE
);
ALTER TABLE inbox_imap ADD COLUMN IF NOT EXISTS host text;
ALTER TABLE inbox_imap ADD COLUMN IF NOT EXISTS port integer;
ALTER TABLE inbox_imap ADD COLUMN IF NOT EXISTS username text;
ALTER TABLE inbox_imap ADD COLUMN IF NOT EXISTS password_encrypted text;
-- 'tls' (implicit, usually 993), 'starttls' or 'none' (loopback only).
ALTER TABLE inbox_imap ADD COLUMN IF NOT EXISTS security text;
ALTER TABLE inbox_imap ADD COLUMN IF NOT EXISTS sync_enabled boolean NOT NULL DEFAULT false;
-- Folder names as people read them (Unicode); ingest encodes them in
-- modified UTF-7 on the wire.
ALTER TABLE inbox_imap ADD COLUMN IF NOT EXISTS sync_folders text[] NOT NULL DEFAULT '{INBOX}';
-- The first sync of a folder imports mail whose INTERNALDATE is at or after
-- this time; NULL imports the whole folder (a backfill).
ALTER TABLE inbox_imap ADD COLUMN IF NOT EXISTS sync_start_at timestamptz DEFAULT now();
-- What happens to a mail on the server once Kafka has it: 'leave' it as it
-- was, 'mark_read' (\Seen), or 'move' it to sync_move_to.
ALTER TABLE inbox_imap ADD COLUMN IF NOT EXISTS sync_after_import text NOT NULL DEFAULT 'leave'
    CHECK (sync_after_import IN ('leave', 'mark_read', 'move'));
ALTER TABLE inbox_imap ADD COLUMN IF NOT EXISTS sync_move_to text;
-- Raised by the trigger below on every change that matters to the sync, so
-- a running sync sees that it must reconnect with the new settings.
ALTER TABLE inbox_imap ADD COLUMN IF NOT EXISTS settings_version bigint NOT NULL DEFAULT 1;
ALTER TABLE inbox_imap ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();

CREATE OR REPLACE FUNCTION inbox_imap_changed() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF (NEW.host, NEW.port, NEW.username, NEW.password_encrypted, NEW.security,
            NEW.sync_enabled, NEW.sync_folders, NEW.sync_start_at, NEW.sync_after_import,
            NEW.sync_move_to)
           IS NOT DISTINCT FROM
           (OLD.host, OLD.port, OLD.username, OLD.password_encrypted, OLD.security,
            OLD.sync_enabled, OLD.sync_folders, OLD.sync_start_at, OLD.sync_after_import,
            OLD.sync_move_to) THEN
            RETURN NEW;
        END IF;
        NEW.settings_version := OLD.settings_version + 1;
        NEW.updated_at := now();
    END IF;
    -- Ingest replicas LISTEN on this channel and reconcile the inbox at once.
    PERFORM pg_notify('inbox_imap_changed', NEW.inbox_id::text);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE TRIGGER inbox_imap_changed
    BEFORE INSERT OR UPDATE ON inbox_imap
    FOR EACH ROW EXECUTE FUNCTION inbox_imap_changed();

-- Progress of one folder: every mail up to last_uid under uidvalidity is in
-- Kafka (or recorded in imap_failed_mails). Written only after Kafka
-- acknowledged. 'live' is the running sync; 'history' is `messagehub import
-- --imap`, which walks the whole folder on its own cursor.
CREATE TABLE IF NOT EXISTS imap_cursors (
    inbox_id     uuid NOT NULL REFERENCES inboxes (id) ON DELETE CASCADE,
    folder       text NOT NULL,
    cursor_name  text NOT NULL DEFAULT 'live' CHECK (cursor_name IN ('live', 'history')),
    uidvalidity  bigint NOT NULL,
    last_uid     bigint NOT NULL CHECK (last_uid >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (inbox_id, folder, cursor_name)
);

-- Mails that could not be fetched or stored as they are. A 'retrying' row is
-- fetched again at next_attempt_at; after the last attempt it becomes
-- 'quarantined' and stays for an admin, with the bytes that could be read.
CREATE TABLE IF NOT EXISTS imap_failed_mails (
    inbox_id         uuid NOT NULL REFERENCES inboxes (id) ON DELETE CASCADE,
    folder           text NOT NULL,
    uidvalidity      bigint NOT NULL,
    uid              bigint NOT NULL,
    status           text NOT NULL CHECK (status IN ('retrying', 'quarantined')),
    attempts         integer NOT NULL DEFAULT 1,
    last_error       text NOT NULL,
    first_failed_at  timestamptz NOT NULL DEFAULT now(),
    last_failed_at   timestamptz NOT NULL DEFAULT now(),
    next_attempt_at  timestamptz,
    raw_sha256       text REFERENCES raw_mails (sha256),
    PRIMARY KEY (inbox_id, folder, uidvalidity, uid)
);
CREATE INDEX IF NOT EXISTS imap_failed_mails_due
    ON imap_failed_mails (inbox_id, folder, next_attempt_at) WHERE status = 'retrying';

-- The health of each folder sync, for the API and the operator: what it does
-- now, when it last caught up, and the current error streak.
CREATE TABLE IF NOT EXISTS imap_sync_health (
    inbox_id              uuid NOT NULL REFERENCES inboxes (id) ON DELETE CASCADE,
    folder                text NOT NULL,
    state                 text NOT NULL
                          CHECK (state IN ('connecting', 'syncing', 'idle', 'backoff',
                                           'auth_failed', 'stopped')),
    last_sync_at          timestamptz,
    -- auth, tls, connect, timeout, protocol, folder or storage
    error_class           text,
    last_error            text,
    last_error_at         timestamptz,
    error_since           timestamptz,
    consecutive_failures  integer NOT NULL DEFAULT 0,
    next_attempt_at       timestamptz,
    replica               text,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (inbox_id, folder)
);

-- Mail and attachment bytes are compressed with lz4 instead of the default
-- pglz. On the benchmark's mail mix (97 KB mean, mostly base64 attachments)
-- pglz took 2.05 ms of server CPU per mail to save 0.5% of the space, lz4
-- 0.49 ms to save 3%. It applies to rows written from now on. A server
-- built without lz4 stores the bytes uncompressed instead.
DO $$
BEGIN
    ALTER TABLE raw_mails ALTER COLUMN content SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'PostgreSQL has no lz4 support; raw mail is stored uncompressed';
    ALTER TABLE raw_mails ALTER COLUMN content SET STORAGE EXTERNAL;
END
$$;
