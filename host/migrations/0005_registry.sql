-- Template registry: a version holds files (a disk image, a memory state, a config), each a
-- list of fixed-size chunks. Chunks are kept once per content in the storage backend under
-- `chunks/<first two hex digits>/<sha256>`; a row in `chunks` means the object is stored.

CREATE TABLE chunks (
    digest     TEXT PRIMARY KEY,      -- SHA-256 of the chunk's bytes, lowercase hex
    size_bytes INTEGER NOT NULL,
    stored_at  TEXT NOT NULL          -- last stored or reused: garbage collection spares young chunks
);

-- Chunks a template may reference: those uploaded for it and those its files reference. A client
-- learns which chunks it must still send only from these, never from other templates' data.
CREATE TABLE template_chunks (
    template_id TEXT NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
    digest      TEXT NOT NULL REFERENCES chunks (digest) ON DELETE CASCADE,
    PRIMARY KEY (template_id, digest)
);

CREATE TABLE template_files (
    template_id TEXT NOT NULL,
    number      INTEGER NOT NULL,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,        -- disk | state | config
    format      TEXT NOT NULL,        -- raw | qcow2 for disks, raw otherwise
    size_bytes  INTEGER NOT NULL,
    sha256      TEXT NOT NULL,        -- of the whole file
    chunk_size  INTEGER NOT NULL,     -- 0: a file of the data directory not yet chunked (from 0002)
    pushed_at   TEXT NOT NULL,
    PRIMARY KEY (template_id, number, name),
    FOREIGN KEY (template_id, number) REFERENCES template_versions (template_id, number) ON DELETE CASCADE
);

CREATE TABLE file_chunks (
    template_id TEXT NOT NULL,
    number      INTEGER NOT NULL,
    name        TEXT NOT NULL,
    position    INTEGER NOT NULL,
    digest      TEXT NOT NULL REFERENCES chunks (digest),
    PRIMARY KEY (template_id, number, name, position),
    FOREIGN KEY (template_id, number, name) REFERENCES template_files (template_id, number, name) ON DELETE CASCADE
);
CREATE INDEX file_chunks_by_digest ON file_chunks (digest);

-- Images uploaded before the registry become `disk` files, chunked from the data directory at
-- the next start.
INSERT INTO template_files (template_id, number, name, kind, format, size_bytes, sha256, chunk_size, pushed_at)
SELECT template_id, number, 'disk', 'disk', format, size_bytes, image_sha256, 0, COALESCE(image_uploaded_at, created_at)
FROM template_versions WHERE image_sha256 IS NOT NULL;

ALTER TABLE template_versions DROP COLUMN image_sha256;
ALTER TABLE template_versions DROP COLUMN image_uploaded_at;
ALTER TABLE template_versions DROP COLUMN format;
ALTER TABLE template_versions ADD COLUMN pulled_at TEXT;

-- A host's template cache budget (MiB; NULL: no limit). Least recently used templates that no
-- instance on the host uses are evicted to make room.
ALTER TABLE hosts ADD COLUMN template_cache_mb INTEGER;
