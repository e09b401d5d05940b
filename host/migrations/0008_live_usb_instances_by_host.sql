-- The USB devices a host's live instances hold, read with every host: an index over the live
-- instances that name a device only (few), so that a host read no longer visits every live
-- instance of the host to find none.
CREATE INDEX instances_live_with_usb_by_host
    ON instances (host_id, json_extract(placement, '$.usb_device'))
    WHERE state != 'terminated' AND json_extract(placement, '$.usb_device') IS NOT NULL;
