-- Credentials: admin API tokens with roles, per-device tokens, and the
-- replay guard of device reports. Secrets are never stored, only the
-- SHA-256 (hex) of each token. Portable SQL (SQLite and PostgreSQL):
-- TEXT/BIGINT only; flags are BIGINT 0/1.

CREATE TABLE admin_tokens (
    -- random, hex
    id TEXT NOT NULL PRIMARY KEY,
    -- what operators call it (token revoke NAME); unique even once revoked,
    -- so the log and the list never show two tokens of one name
    name TEXT NOT NULL UNIQUE,
    -- publisher | operator | viewer
    role TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    -- RFC 3339, UTC
    created_at TEXT NOT NULL,
    revoked BIGINT NOT NULL DEFAULT 0
);

-- One token per device; `device add` again replaces it (rotation).
CREATE TABLE device_tokens (
    device_id TEXT NOT NULL PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked BIGINT NOT NULL DEFAULT 0
);

-- The highest X-Ota-Report-Seq accepted from each device.
CREATE TABLE device_report_seq (
    device_id TEXT NOT NULL PRIMARY KEY,
    seq BIGINT NOT NULL
);
