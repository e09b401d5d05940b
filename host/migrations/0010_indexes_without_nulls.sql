-- Lookups by batch (`parent_id = ?`) and by the client's own id (`external_id = ?`) never ask for
-- NULL, yet most tasks have no batch and most instances no external id: every insert wrote an
-- entry for a NULL, one more page in each commit's WAL frames. Partial indexes hold only the
-- rows that can be looked up (SQLite still uses them: `x = ?` implies `x IS NOT NULL`).
DROP INDEX tasks_by_parent;
CREATE INDEX tasks_by_parent ON tasks (parent_id) WHERE parent_id IS NOT NULL;
DROP INDEX instances_by_external_id;
CREATE INDEX instances_by_external_id ON instances (external_id) WHERE external_id IS NOT NULL;
