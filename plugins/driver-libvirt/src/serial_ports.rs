//! Ports for serial consoles over TCP (a host's `serial_ports`), one per instance. A port is
//! claimed in the plugin's state (`serial-port/<host>/<port>` holds the claim) with
//! compare-and-swap, so concurrent creates, in this instance of the driver or another, never
//! get the same port. The claim goes with the instance's delete; one left by an instance that
//! vanished another way is taken back when the range is full. A port an instance could not
//! bind, because a program outside Hyperplane holds it, stays claimed for nobody
//! ([`mark_taken_outside`]) until it is old enough to be tried again.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use hyperplane_guest::state::{JsonState, KeyValueStore};
use hyperplane_guest::types::Error;
use serde::{Deserialize, Serialize};

use crate::config::PortRange;

/// A claim younger than this is never taken back: its create may still be defining the domain.
pub const RECLAIM_AFTER_SECS: u64 = 600;

/// What a claimed port's key holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The instance whose serial console has the port; empty: a program outside Hyperplane.
    pub instance: String,
    /// When it was claimed, in seconds since the Unix epoch.
    pub since: u64,
}

pub fn claim_key(host: &str, port: u16) -> String {
    format!("serial-port/{host}/{port}")
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or(0)
}

/// The claims on `host`'s ports, as `(port, claim)`.
fn claims<S: KeyValueStore>(state: &JsonState<S>, host: &str) -> Result<Vec<(u16, Claim)>, Error> {
    let entries = state.scan_json::<Claim>(&format!("serial-port/{host}/"))?;
    Ok(entries.into_iter().filter_map(|(key, claim)| Some((key.rsplit('/').next()?.parse().ok()?, claim))).collect())
}

/// The port `instance` holds on `host` (a retried create), or a free port of `ports` claimed
/// for it, looked for from a random place in the range (so concurrent creates rarely race for
/// one). When every port is claimed, the claims older than [`RECLAIM_AFTER_SECS`] whose
/// instance `is_gone` are taken back first; a range still full is a `conflict`.
pub fn claim<S: KeyValueStore, E: From<Error>>(
    state: &JsonState<S>,
    host: &str,
    ports: PortRange,
    instance: &str,
    mut is_gone: impl FnMut(&str) -> Result<bool, E>,
) -> Result<u16, E> {
    let mut held = claims(state, host)?;
    for pass in 0..2 {
        if let Some((port, _)) = held.iter().find(|(_, claim)| claim.instance == instance) {
            return Ok(*port);
        }
        let taken: HashSet<u16> = held.iter().map(|(port, _)| *port).collect();
        let claim = Claim { instance: instance.to_owned(), since: now_secs() };
        let start = crate::random_bits(instance) as u32;
        for offset in 0..ports.count() {
            let port = ports.nth(start % ports.count() + offset);
            if !taken.contains(&port)
                && state.insert_json_if_absent(&claim_key(host, port), &claim).map_err(Error::from)?
            {
                return Ok(port);
            }
        }
        if pass == 0 {
            let now = now_secs();
            for (port, claim) in &held {
                let old = now.saturating_sub(claim.since) >= RECLAIM_AFTER_SECS;
                if old && (claim.instance.is_empty() || is_gone(&claim.instance)?) {
                    release_claim(state, host, *port, claim)?;
                }
            }
            held = claims(state, host)?;
        }
    }
    Err(Error::Conflict(format!("no free serial console port in {ports} on host `{host}`")).into())
}

/// Gives back the ports `instance` holds on `host`.
pub fn release<S: KeyValueStore>(state: &JsonState<S>, host: &str, instance: &str) -> Result<(), Error> {
    for (port, claim) in claims(state, host)? {
        if claim.instance == instance {
            release_claim(state, host, port, &claim)?;
        }
    }
    Ok(())
}

/// Hands `port`, which `instance` holds but could not bind, to the program outside Hyperplane
/// that holds it, so that no instance is given it again for [`RECLAIM_AFTER_SECS`].
pub fn mark_taken_outside<S: KeyValueStore>(
    state: &JsonState<S>,
    host: &str,
    port: u16,
    instance: &str,
) -> Result<(), Error> {
    let key = claim_key(host, port);
    if let Some(current) = state.get_versioned::<Claim>(&key)?
        && current.value.instance == instance
    {
        let outside = Claim { instance: String::new(), since: now_secs() };
        state.compare_and_swap_json(&key, Some(&current), Some(&outside))?;
    }
    Ok(())
}

/// Removes `claim` from `port`, unless the port changed hands since it was read.
fn release_claim<S: KeyValueStore>(state: &JsonState<S>, host: &str, port: u16, claim: &Claim) -> Result<(), Error> {
    let key = claim_key(host, port);
    if let Some(current) = state.get_versioned::<Claim>(&key)?
        && current.value == *claim
    {
        state.compare_and_swap_json(&key, Some(&current), None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use hyperplane_guest::state::MemoryStore;

    use super::*;

    const RANGE: PortRange = PortRange { first: 7000, last: 7002 };

    fn never_gone(_: &str) -> Result<bool, Error> {
        Ok(false)
    }

    fn claim_for(state: &JsonState<MemoryStore>, host: &str, instance: &str) -> Result<u16, Error> {
        claim(state, host, RANGE, instance, never_gone)
    }

    #[test]
    fn each_instance_gets_its_own_port_and_keeps_it() -> Result<(), Error> {
        let state = JsonState::new(MemoryStore::new());
        let ports: Vec<u16> =
            ["a", "b", "c"].iter().map(|instance| claim_for(&state, "h", instance)).collect::<Result<_, _>>()?;
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct, HashSet::from([7000, 7001, 7002]));
        assert_eq!(claim_for(&state, "h", "b")?, ports[1], "a retried create keeps its port");
        assert!(claim_for(&state, "other-host", "d")? >= RANGE.first, "another host's ports are its own");
        match claim_for(&state, "h", "d") {
            Err(Error::Conflict(message)) => assert!(message.contains("7000-7002") && message.contains("`h`")),
            other => panic!("a full range is a conflict, got {other:?}"),
        }
        release(&state, "h", "b")?;
        assert_eq!(claim_for(&state, "h", "d")?, ports[1], "a released port is claimed again");
        Ok(())
    }

    #[test]
    fn a_full_range_takes_back_old_claims_of_vanished_instances_only() -> Result<(), Error> {
        let state = JsonState::new(MemoryStore::new());
        let old = now_secs() - RECLAIM_AFTER_SECS;
        state.set_json(&claim_key("h", 7000), &Claim { instance: "vanished".into(), since: old })?;
        state.set_json(&claim_key("h", 7001), &Claim { instance: "alive".into(), since: old })?;
        state.set_json(&claim_key("h", 7002), &Claim { instance: "creating".into(), since: now_secs() })?;
        let mut asked = Vec::new();
        let port = claim(&state, "h", RANGE, "new", |instance| -> Result<bool, Error> {
            asked.push(instance.to_owned());
            Ok(instance != "alive")
        })?;
        assert_eq!(port, 7000);
        assert_eq!(asked, ["vanished", "alive"], "young claims are not even looked at");

        // A port taken outside Hyperplane is nobody's for a while, then tried again.
        mark_taken_outside(&state, "h", 7000, "someone else")?;
        assert_eq!(state.get_json::<Claim>(&claim_key("h", 7000))?.map(|claim| claim.instance), Some("new".into()));
        mark_taken_outside(&state, "h", 7000, "new")?;
        release(&state, "h", "new")?;
        let full = claim(&state, "h", RANGE, "next", |_| -> Result<bool, Error> { Ok(false) });
        assert!(matches!(full, Err(Error::Conflict(_))), "the outside program's port is not given out: {full:?}");
        state.set_json(&claim_key("h", 7000), &Claim { instance: String::new(), since: old })?;
        assert_eq!(claim(&state, "h", RANGE, "next", |_| -> Result<bool, Error> { Ok(false) })?, 7000);
        assert_eq!(
            state.get_json::<Claim>(&claim_key("h", 7002))?.map(|claim| claim.instance),
            Some("creating".into())
        );
        Ok(())
    }
}
