//! When a draining chunkserver may be retired. Pure.
//!
//! Retiring a server is destructive (its copies stop counting and nobody reads from it), so
//! it needs positive proof from current state; anything missing, stale or empty means "keep
//! draining":
//! - this controller's metadata view is proven current (the same proof GC needs, passed in);
//! - the draining server is alive and its inventory, as the registry knows it, matches what it
//!   last reported (otherwise we do not know everything it holds);
//! - at least one other server is active;
//! - every live chunk the server holds has the policy's copies (`min(n, other active
//!   servers)`, at least one) on *other* active servers whose inventories are current too.
//!
//! The result names, per server, the chunks to confirm with a fresh `HasChunks` before the
//! state changes: the registry is soft state, the confirmation is the proof.

use std::collections::{BTreeMap, HashMap};

use super::plan::{ChunkHash, Health, Policy};

/// What the check needs to know about one chunkserver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainServer {
    pub id: String,
    pub health: Health,
    /// Heartbeating, and the registry's view of its inventory matches its last report.
    pub inventory_current: bool,
}

/// Everything the check reads.
#[derive(Debug)]
pub struct DrainInput<'a> {
    /// The draining server.
    pub server: &'a str,
    pub policy: Policy,
    pub servers: &'a [DrainServer],
    pub holders: &'a HashMap<ChunkHash, Vec<String>>,
    pub live: &'a HashMap<ChunkHash, u64>,
    /// Why this controller's metadata view is not proven current, if it is not.
    pub view_not_current: Option<String>,
}

/// Per server, the chunks whose copies must be confirmed before the drain completes.
pub type Confirmations = BTreeMap<String, Vec<ChunkHash>>;

/// `Ok(confirmations)` when the server may be retired once they hold; `Err(why not yet)`.
pub fn check(input: &DrainInput<'_>) -> Result<Confirmations, String> {
    if let Some(why) = &input.view_not_current {
        return Err(format!("metadata view not proven current: {why}"));
    }
    let by_id: HashMap<&str, &DrainServer> =
        input.servers.iter().map(|s| (s.id.as_str(), s)).collect();
    let me = by_id
        .get(input.server)
        .ok_or_else(|| "the draining server has not reported to this controller".to_owned())?;
    if !me.inventory_current {
        return Err("the draining server's inventory is not known to be current".into());
    }
    let counts =
        |s: &DrainServer| s.id != input.server && s.health == Health::Active && s.inventory_current;
    let others = input
        .servers
        .iter()
        .filter(|s| s.id != input.server && s.health == Health::Active)
        .count();
    if others == 0 {
        return Err("no other active chunkserver to hold its data".into());
    }
    let want = match input.policy {
        Policy::All => others,
        Policy::Count(n) => (n as usize).min(others),
    }
    .max(1);
    let mut confirm = Confirmations::new();
    let no_holders = Vec::new();
    for chunk in input.live.keys() {
        let holders = input.holders.get(chunk).unwrap_or(&no_holders);
        if !holders.iter().any(|h| h == input.server) {
            continue;
        }
        let copies: Vec<&String> = holders
            .iter()
            .filter(|h| by_id.get(h.as_str()).is_some_and(|s| counts(s)))
            .collect();
        if copies.len() < want {
            return Err(format!(
                "chunk {} has {} of {want} copies elsewhere",
                hex::encode(chunk),
                copies.len()
            ));
        }
        for h in copies.into_iter().take(want) {
            confirm.entry(h.clone()).or_default().push(*chunk);
        }
    }
    Ok(confirm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(id: &str, health: Health) -> DrainServer {
        DrainServer {
            id: id.into(),
            health,
            inventory_current: true,
        }
    }

    fn c(n: u8) -> ChunkHash {
        [n; 32]
    }

    fn run(
        policy: Policy,
        servers: &[DrainServer],
        holders: &[(ChunkHash, &[&str])],
        view: Option<&str>,
    ) -> Result<Confirmations, String> {
        let holders: HashMap<ChunkHash, Vec<String>> = holders
            .iter()
            .map(|(c, hs)| (*c, hs.iter().map(|h| h.to_string()).collect()))
            .collect();
        let live: HashMap<ChunkHash, u64> = holders.keys().map(|c| (*c, 1)).collect();
        check(&DrainInput {
            server: "a",
            policy,
            servers,
            holders: &holders,
            live: &live,
            view_not_current: view.map(str::to_owned),
        })
    }

    #[test]
    fn the_issues_scenario_the_last_copy_is_never_retired() {
        // B and C are dead; the file landed on A only; A is drained.
        let servers = [
            server("a", Health::Draining),
            server("b", Health::Failed),
            server("c", Health::Failed),
        ];
        let r = run(Policy::All, &servers, &[(c(1), &["a"])], None);
        assert!(r.unwrap_err().contains("no other active"));
        // B comes back but has not received the chunk yet.
        let servers = [
            server("a", Health::Draining),
            server("b", Health::Active),
            server("c", Health::Failed),
        ];
        let r = run(Policy::All, &servers, &[(c(1), &["a"])], None);
        assert!(r.unwrap_err().contains("0 of 1"));
    }

    #[test]
    fn copies_on_active_servers_with_current_inventories_complete_the_drain() {
        let servers = [
            server("a", Health::Draining),
            server("b", Health::Active),
            server("c", Health::Active),
        ];
        let r = run(
            Policy::Count(2),
            &servers,
            &[(c(1), &["a", "b", "c"]), (c(2), &["b", "c"])],
            None,
        )
        .unwrap();
        // Only chunks the draining server holds need confirming, on two servers.
        assert_eq!(r["b"], vec![c(1)]);
        assert_eq!(r["c"], vec![c(1)]);
    }

    #[test]
    fn policy_all_wants_every_other_active_server() {
        let servers = [
            server("a", Health::Draining),
            server("b", Health::Active),
            server("c", Health::Active),
        ];
        let r = run(Policy::All, &servers, &[(c(1), &["a", "b"])], None);
        assert!(r.unwrap_err().contains("1 of 2"));
    }

    #[test]
    fn stale_knowledge_keeps_draining() {
        let mut servers = vec![server("a", Health::Draining), server("b", Health::Active)];
        servers[1].inventory_current = false;
        assert!(run(Policy::All, &servers, &[(c(1), &["a", "b"])], None).is_err());
        let mut servers = vec![server("a", Health::Draining), server("b", Health::Active)];
        servers[0].inventory_current = false;
        let r = run(Policy::All, &servers, &[(c(1), &["a", "b"])], None);
        assert!(r.unwrap_err().contains("draining server's inventory"));
        let servers = vec![server("a", Health::Draining), server("b", Health::Active)];
        let r = run(Policy::All, &servers, &[(c(1), &["a", "b"])], Some("fresh"));
        assert!(r.unwrap_err().contains("not proven current"));
        // A draining server this controller never heard from.
        let servers = vec![server("b", Health::Active)];
        assert!(run(Policy::All, &servers, &[(c(1), &["b"])], None).is_err());
    }

    #[test]
    fn draining_or_failed_copies_do_not_count() {
        let servers = [
            server("a", Health::Draining),
            server("b", Health::Draining),
            server("c", Health::Failed),
            server("d", Health::Active),
        ];
        let r = run(
            Policy::Count(2),
            &servers,
            &[(c(1), &["a", "b", "c", "d"])],
            None,
        )
        .unwrap();
        assert_eq!(r.keys().collect::<Vec<_>>(), ["d"]);
    }
}
