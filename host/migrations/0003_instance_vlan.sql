-- The VLAN tag an instance's NIC carries (NULL: untagged). A requested MAC address already
-- lives in `mac`; live instances' MACs are looked up by it.

ALTER TABLE instances ADD COLUMN vlan INTEGER;
CREATE INDEX instances_by_mac ON instances (mac) WHERE mac IS NOT NULL;
