-- Identity and tenancy: projects with quotas, users, user groups, roles and their bindings,
-- API keys, sessions; the project of every instance, template and node group; who did what,
-- how and from where on every event.

CREATE TABLE projects (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL UNIQUE,
    description        TEXT NOT NULL DEFAULT '',
    -- Quotas; NULL is unlimited.
    max_instances      INTEGER,
    max_vcpu           INTEGER,
    max_ram_mb         INTEGER,
    max_template_bytes INTEGER,
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL
);
INSERT INTO projects (id, name, description, created_at, updated_at)
VALUES ('00000000-0000-4000-8000-000000000001', 'default', 'The project of everything created without one',
        strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));

ALTER TABLE instances ADD COLUMN project_id TEXT NOT NULL DEFAULT '00000000-0000-4000-8000-000000000001';
ALTER TABLE templates ADD COLUMN project_id TEXT NOT NULL DEFAULT '00000000-0000-4000-8000-000000000001';
ALTER TABLE groups ADD COLUMN project_id TEXT NOT NULL DEFAULT '00000000-0000-4000-8000-000000000001';
CREATE INDEX instances_by_project ON instances (project_id, state);

CREATE TABLE users (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    display_name     TEXT NOT NULL DEFAULT '',
    email            TEXT NOT NULL DEFAULT '',
    -- Argon2id PHC string; NULL: no password login (external identities only).
    password_hash    TEXT,
    disabled         INTEGER NOT NULL DEFAULT 0,
    external_issuer  TEXT,
    external_subject TEXT,
    last_login_at    TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    UNIQUE (external_issuer, external_subject)
);

CREATE TABLE user_groups (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE user_group_members (
    group_id TEXT NOT NULL REFERENCES user_groups (id) ON DELETE CASCADE,
    user_id  TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, user_id)
);

CREATE TABLE roles (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    -- JSON array of "resource:action" strings.
    permissions TEXT NOT NULL DEFAULT '[]',
    builtin     INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

-- A role granted to a user or a user group, in one project (NULL: every project), optionally
-- only on some resources (JSON array of ids; NULL: all).
CREATE TABLE role_bindings (
    id           TEXT PRIMARY KEY,
    role_id      TEXT NOT NULL REFERENCES roles (id) ON DELETE CASCADE,
    user_id      TEXT REFERENCES users (id) ON DELETE CASCADE,
    group_id     TEXT REFERENCES user_groups (id) ON DELETE CASCADE,
    project_id   TEXT REFERENCES projects (id) ON DELETE CASCADE,
    resource_ids TEXT,
    created_at   TEXT NOT NULL,
    CHECK ((user_id IS NULL) <> (group_id IS NULL))
);
CREATE INDEX role_bindings_by_user ON role_bindings (user_id);
CREATE INDEX role_bindings_by_group ON role_bindings (group_id);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    description  TEXT NOT NULL DEFAULT '',
    -- SHA-256 of the secret (random, 256 bits: a slow hash adds nothing).
    secret_hash  TEXT NOT NULL,
    -- JSON array of user group names the key acts with; empty: its user's own access.
    groups       TEXT NOT NULL DEFAULT '[]',
    expires_at   TEXT,
    revoked_at   TEXT,
    last_used_at TEXT,
    created_at   TEXT NOT NULL
);

CREATE TABLE sessions (
    id               TEXT PRIMARY KEY,
    token_hash       TEXT NOT NULL UNIQUE,
    user_id          TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    source           TEXT NOT NULL DEFAULT '',
    created_at       TEXT NOT NULL,
    last_seen_at     TEXT NOT NULL,
    -- Idle expiry, moved on by every use, and the hard end.
    expires_at       TEXT NOT NULL,
    ends_at          TEXT NOT NULL,
    revoked_at       TEXT
);
CREATE INDEX sessions_by_user ON sessions (user_id);

ALTER TABLE events ADD COLUMN scheme TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN source TEXT NOT NULL DEFAULT '';
-- 'succeeded', 'denied' or 'failed'; '' for events that are not calls (state changes).
ALTER TABLE events ADD COLUMN outcome TEXT NOT NULL DEFAULT '';
