-- The transactional outbox: a service writes its state change and the message to publish in one
-- transaction; the relay publishes and marks the row sent. Portable SQL (SQLite and PostgreSQL).
CREATE TABLE IF NOT EXISTS outbox (
    id          TEXT PRIMARY KEY,     -- also the message's x-message-id: stable across retries
    destination TEXT NOT NULL,        -- 'log' (Kafka topic) or 'broker' (RabbitMQ exchange)
    target      TEXT NOT NULL,        -- topic or exchange
    route_key   TEXT NOT NULL,        -- Kafka key or routing key
    headers     TEXT NOT NULL,        -- JSON object of string headers
    payload     TEXT NOT NULL,        -- the message body (JSON)
    created_at  BIGINT NOT NULL,      -- unix ms
    sent_at     BIGINT,               -- unix ms, NULL while pending
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    lease_owner TEXT,                 -- relay instance that claimed it
    lease_until BIGINT                -- unix ms; a crashed relay's lease runs out
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (sent_at, created_at);
