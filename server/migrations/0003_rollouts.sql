-- Staged rollouts: the server's hold on each release (it can only hold a
-- release back; the signed plan decides who may install when), its history,
-- and each device's rollout groups. Portable SQL (SQLite and PostgreSQL):
-- TEXT/BIGINT only.

-- One row per target name ever paused, resumed or aborted. A target without
-- a row is active (devices ask by name: an unknown name is simply active).
CREATE TABLE rollouts (
    target TEXT NOT NULL PRIMARY KEY,
    -- active | paused | aborted (aborted is final)
    state TEXT NOT NULL,
    reason TEXT,
    -- admin token name, cli:USER, or automatic
    changed_by TEXT NOT NULL,
    -- RFC 3339, UTC
    changed_at TEXT NOT NULL
);

-- Every state change, in order: seq counts each target's changes from 1.
CREATE TABLE rollout_events (
    target TEXT NOT NULL,
    seq BIGINT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    changed_by TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (target, seq)
);

-- The groups of each device's latest report: a JSON array of ids (the
-- server places the device in the same wave the device does).
ALTER TABLE devices ADD COLUMN rollout_groups TEXT NOT NULL DEFAULT '[]';

-- Each device's latest report about one target (fleet status, automatic pause).
CREATE INDEX device_events_by_target ON device_events (target, device_id, seq);
