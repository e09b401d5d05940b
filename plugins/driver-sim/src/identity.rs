//! Addresses derived deterministically from an instance id: IP, MAC and console port.
//!
//! The simulator manages no leases: two ids can map to the same IP (the space is 10.0.0.0/8
//! minus network and broadcast octets, so collisions are rare below tens of thousands).

/// FNV-1a: stable across builds and platforms, unlike `std`'s hashers.
pub(crate) fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

fn byte_of(hash: u64, shift: u32) -> u8 {
    ((hash >> shift) & 0xff) as u8
}

/// `10.x.y.z` with `z` in 1..=254.
pub fn ip_for(instance_id: &str) -> String {
    let hash = stable_hash(instance_id);
    format!("10.{}.{}.{}", byte_of(hash, 16), byte_of(hash, 8), 1 + hash % 254)
}

/// A MAC in QEMU's locally administered `52:54:00` range.
pub fn mac_for(instance_id: &str) -> String {
    let hash = stable_hash(instance_id);
    format!("52:54:00:{:02x}:{:02x}:{:02x}", byte_of(hash, 40), byte_of(hash, 32), byte_of(hash, 24))
}

/// A VNC port in 5900..=15899.
pub fn console_port_for(instance_id: &str) -> u16 {
    5900 + (stable_hash(instance_id) % 10_000) as u16
}

/// `Some(lowercased)` if `mac` is six `:`-separated pairs of hex digits.
pub fn normalized_mac(mac: &str) -> Option<String> {
    let groups: Vec<&str> = mac.split(':').collect();
    let well_formed = groups.len() == 6
        && groups.iter().all(|group| group.len() == 2 && group.chars().all(|c| c.is_ascii_hexdigit()));
    well_formed.then(|| mac.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_addresses_are_stable_and_well_formed() {
        assert_eq!(ip_for("vm-1"), ip_for("vm-1"));
        assert_ne!(ip_for("vm-1"), ip_for("vm-2"));
        for id in ["", "vm-1", "a-much-longer-instance-identifier", "ünïcode"] {
            let octets: Vec<u32> = ip_for(id).split('.').map(|octet| octet.parse().unwrap_or(999)).collect();
            assert_eq!(octets.len(), 4);
            assert_eq!(octets[0], 10);
            assert!(octets.iter().all(|octet| *octet <= 255));
            assert!((1..=254).contains(&octets[3]));
            assert_eq!(normalized_mac(&mac_for(id)), Some(mac_for(id)));
            assert!((5900..=15899).contains(&console_port_for(id)));
        }
    }

    #[test]
    fn mac_validation() {
        let check = |mac: &str, expected: Option<&str>| assert_eq!(normalized_mac(mac).as_deref(), expected, "{mac}");
        check("52:54:00:AB:cd:01", Some("52:54:00:ab:cd:01"));
        check("52:54:00:ab:cd", None);
        check("52:54:00:ab:cd:0g", None);
        check("52-54-00-ab-cd-01", None);
        check("", None);
    }
}
