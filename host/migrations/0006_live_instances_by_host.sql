-- What a host's live instances use, read with every host: a covering index over the live
-- instances only, so that neither one host's usage nor the fleet's walks past the terminated
-- instances the table keeps.
CREATE INDEX instances_live_by_host ON instances (host_id, state, vcpu, ram_mb, disk_gb) WHERE state != 'terminated';
