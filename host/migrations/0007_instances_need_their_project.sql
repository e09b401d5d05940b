-- An instance belongs to a project that exists. A create that checks nothing under the write
-- lock (no quota, MAC or idempotency key) reads its project first and commits later, with the
-- other writes of its group: should the project be deleted in between, this refuses the
-- instance (the message is matched by `store::instances::is_missing_project`).
CREATE TRIGGER instances_need_their_project_on_insert BEFORE INSERT ON instances
WHEN NOT EXISTS (SELECT 1 FROM projects WHERE id = NEW.project_id)
BEGIN
    SELECT RAISE(ABORT, 'instance of a missing project');
END;

CREATE TRIGGER instances_need_their_project_on_update BEFORE UPDATE OF project_id ON instances
WHEN NOT EXISTS (SELECT 1 FROM projects WHERE id = NEW.project_id)
BEGIN
    SELECT RAISE(ABORT, 'instance of a missing project');
END;
