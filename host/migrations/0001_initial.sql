-- Hyperplane's initial schema. Timestamps are RFC 3339 text in UTC; ids are UUID text.

CREATE TABLE hosts (
    id               TEXT PRIMARY KEY,
    provider         TEXT NOT NULL,
    name             TEXT NOT NULL,
    arch             TEXT NOT NULL,
    cpu              INTEGER NOT NULL,
    ram_mb           INTEGER NOT NULL,
    disk_gb          INTEGER NOT NULL,
    hypervisor       TEXT NOT NULL,
    state            TEXT NOT NULL,
    draining         INTEGER NOT NULL DEFAULT 0,
    maintenance      INTEGER NOT NULL DEFAULT 0,
    capacity_mode    TEXT NOT NULL DEFAULT 'resource',
    usb_devices      TEXT NOT NULL DEFAULT '{}',
    max_instances    INTEGER,
    vcpu_limit       INTEGER,
    ram_limit_mb     INTEGER,
    labels           TEXT NOT NULL DEFAULT '{}',
    cached_templates TEXT NOT NULL DEFAULT '[]',
    last_report_at   TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    UNIQUE (provider, name)
);

CREATE TABLE groups (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    description       TEXT NOT NULL DEFAULT '',
    fallback_group_id TEXT REFERENCES groups (id) ON DELETE SET NULL,
    strategy          TEXT NOT NULL DEFAULT 'spread',
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL
);

CREATE TABLE host_groups (
    host_id  TEXT NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    group_id TEXT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    PRIMARY KEY (host_id, group_id)
);

CREATE TABLE templates (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    arch        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE template_versions (
    template_id TEXT NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
    number      INTEGER NOT NULL,
    tag         TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    size_bytes  INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (template_id, number),
    UNIQUE (template_id, tag)
);

CREATE TABLE instances (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    external_id      TEXT,
    state            TEXT NOT NULL,
    template_id      TEXT REFERENCES templates (id),
    template_version INTEGER,
    provider         TEXT,
    host_id          TEXT REFERENCES hosts (id),
    requested_host_id TEXT,
    provider_id      TEXT,
    vcpu             INTEGER NOT NULL,
    ram_mb           INTEGER NOT NULL,
    disk_gb          INTEGER NOT NULL,
    ip               TEXT,
    mac              TEXT,
    metadata         TEXT NOT NULL DEFAULT '{}',
    priority         INTEGER NOT NULL DEFAULT 1000,
    placement        TEXT NOT NULL DEFAULT '{}',
    startup_script   TEXT,
    startup_result   TEXT,
    error            TEXT,
    origin           TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);
CREATE INDEX instances_by_host ON instances (host_id, state);
CREATE INDEX instances_by_state ON instances (state);
CREATE INDEX instances_by_external_id ON instances (external_id);

CREATE TABLE tasks (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    state           TEXT NOT NULL,
    object_id       TEXT,
    parent_id       TEXT REFERENCES tasks (id),
    progress        REAL NOT NULL DEFAULT 0,
    message         TEXT,
    input           TEXT NOT NULL DEFAULT '{}',
    result          TEXT,
    error_code      TEXT,
    error_message   TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT UNIQUE,
    request_digest  TEXT,
    created_at      TEXT NOT NULL,
    started_at      TEXT,
    ended_at        TEXT
);
CREATE INDEX tasks_by_state ON tasks (state, created_at);
CREATE INDEX tasks_by_object ON tasks (object_id, state);
CREATE INDEX tasks_by_parent ON tasks (parent_id);

CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    time        TEXT NOT NULL,
    type        TEXT NOT NULL,
    object_kind TEXT NOT NULL,
    object_id   TEXT NOT NULL,
    actor       TEXT NOT NULL,
    data        TEXT NOT NULL DEFAULT 'null'
);

CREATE TABLE plugin_state (
    provider TEXT NOT NULL,
    key      TEXT NOT NULL,
    value    BLOB NOT NULL,
    PRIMARY KEY (provider, key)
);
