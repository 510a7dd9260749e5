-- Devices and what they reported. Portable SQL (SQLite now, PostgreSQL later):
-- TEXT/BIGINT only, no AUTOINCREMENT/SERIAL, upserts via ON CONFLICT.

-- The latest report of each device.
CREATE TABLE devices (
    device_id TEXT NOT NULL PRIMARY KEY,
    hardware_id TEXT NOT NULL,
    installed_version TEXT NOT NULL,
    booted_slot TEXT,
    status TEXT NOT NULL,
    target TEXT,
    target_version TEXT,
    reason TEXT,
    -- RFC 3339, UTC
    last_seen TEXT NOT NULL
);

-- Every report, in order: seq counts each device's reports from 1.
CREATE TABLE device_events (
    device_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    hardware_id TEXT NOT NULL,
    installed_version TEXT NOT NULL,
    booted_slot TEXT,
    status TEXT NOT NULL,
    target TEXT,
    target_version TEXT,
    reason TEXT,
    -- RFC 3339, UTC
    at TEXT NOT NULL,
    PRIMARY KEY (device_id, seq)
);
