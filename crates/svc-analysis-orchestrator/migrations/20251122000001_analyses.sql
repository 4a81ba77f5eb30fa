-- One row per analysis. An upload starts exactly one (upload_key = its upload id, unique);
-- RequestAnalysis commands start more of the same object (upload_key NULL).
CREATE TABLE IF NOT EXISTS analyses (
    id             TEXT PRIMARY KEY,
    upload_key     TEXT UNIQUE,
    upload_id      TEXT,
    object_key     TEXT NOT NULL,
    owner          TEXT,
    content_type   TEXT,
    bytes          BIGINT,
    checksum       TEXT,
    correlation_id TEXT,
    origin         TEXT NOT NULL,           -- upload | request
    status         TEXT NOT NULL,           -- requested | started | completed | failed
    reason         TEXT,                    -- failure reason code
    message        TEXT,                    -- failure detail
    success        BIGINT,                  -- 1 when the engine was confident
    result         TEXT,                    -- RecognitionCompleted JSON
    requested_at   BIGINT NOT NULL,         -- unix ms
    started_at     BIGINT,
    completed_at   BIGINT,
    failed_at      BIGINT,
    deadline_at    BIGINT                   -- a started analysis fails with `timeout` after this
);
CREATE INDEX IF NOT EXISTS analyses_owner ON analyses (owner, requested_at, id);
CREATE INDEX IF NOT EXISTS analyses_upload ON analyses (upload_id);
CREATE INDEX IF NOT EXISTS analyses_object ON analyses (object_key);
CREATE INDEX IF NOT EXISTS analyses_deadline ON analyses (status, deadline_at);

-- Messages already handled, per consumer (queue): a redelivery is recognised and skipped.
CREATE TABLE IF NOT EXISTS inbox (
    consumer    TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX IF NOT EXISTS inbox_age ON inbox (received_at);
