-- At most one unfinished delete task per instance. A delete request reads whether one is under
-- way and, when none is, creates its task with the next group commit instead of holding the
-- write lock across that read: should two requests race, this refuses the second task, and its
-- request answers the first one's (`store::tasks::is_second_unfinished_delete`).
CREATE UNIQUE INDEX tasks_one_unfinished_delete_per_instance
    ON tasks (object_id) WHERE kind = 'instance.delete' AND state IN ('pending', 'running');
