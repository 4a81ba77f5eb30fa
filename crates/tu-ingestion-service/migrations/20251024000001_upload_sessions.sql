-- Upload sessions (the original's UploadSessions, plus owner, expiry and confirm time).
CREATE TABLE IF NOT EXISTS upload_sessions (
    id             TEXT PRIMARY KEY,
    owner          TEXT NOT NULL,           -- JWT subject the gateway passed on
    object_key     TEXT NOT NULL UNIQUE,    -- images/yyyy/MM/dd/{uuid}.{ext}
    content_type   TEXT NOT NULL,
    filename       TEXT NOT NULL,           -- as given, for display only; never part of the key
    status         TEXT NOT NULL,           -- Pending | Uploaded | Expired
    bytes          BIGINT,
    checksum       TEXT,                    -- sha256:<64 hex>, lower case
    correlation_id TEXT,
    created_at     BIGINT NOT NULL,         -- unix ms
    expires_at     BIGINT NOT NULL,
    confirmed_at   BIGINT
);
CREATE INDEX IF NOT EXISTS upload_sessions_owner ON upload_sessions (owner, created_at);
CREATE INDEX IF NOT EXISTS upload_sessions_expiry ON upload_sessions (status, expires_at);
