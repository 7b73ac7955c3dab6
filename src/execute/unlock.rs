//! `convoy unlock`: breaking a lease another controller left behind, and saying in words
//! what the host did.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::join_all;

use crate::desired::DesiredSite;
use crate::host::protocol::{HostAnswer, LeaseState};
use crate::host::script::Script;
use crate::host::ssh::SshPool;
use crate::host::{Host, RemoteCommand};

/// Breaks the lease of `site` on each of `hosts`. Per host, `Ok` with what was done (whose
/// lease was broken, or that it was free), or `Err` with why not.
pub async fn break_leases(
    pool: &SshPool,
    all_hosts: &BTreeMap<String, Host>,
    site: &DesiredSite,
    hosts: &[&String],
    force: bool,
) -> Vec<(String, Result<String, String>)> {
    // Renewals come every third of the lease time: two missed in a row mean no live holder.
    let alive = (crate::controller::LEASE_TTL * 2 / 3).as_secs();
    join_all(hosts.iter().map(|name| async move {
        let host = &all_hosts[name.as_str()];
        let script = Script::new(&host.path(&site.path))
            .lease_break(alive, force)
            .finish();
        let command = RemoteCommand::new(script, Duration::from_secs(60));
        let result = match host.run(pool, &command).await {
            Err(e) => Err(e.to_string()),
            Ok(out) => describe_break(&HostAnswer::read(&out)),
        };
        (name.to_string(), result)
    }))
    .await
}

fn describe_break(answer: &HostAnswer) -> Result<String, String> {
    let Some(lease) = &answer.lease else {
        return Err(format!("failed to break the lease: {}", answer.tail));
    };
    let holder = lease.holder.as_deref().unwrap_or_default();
    let when = |t: Option<u64>| {
        t.filter(|t| *t > 0).map_or("never".to_string(), |t| {
            crate::state::rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(t))
        })
    };
    let generation = lease.generation.map(|g| g.to_string()).unwrap_or_default();
    match lease.state {
        LeaseState::Free => Ok("not locked; nothing to do".to_string()),
        LeaseState::Broken => Ok(format!(
            "broke the lease of `{holder}` (generation {generation}, last renewed {}, would have expired {}); ended {} command group(s) it left running",
            when(lease.renewed),
            when(lease.expires),
            answer.stopped
        )),
        LeaseState::Renewing => Err(format!(
            "refused: `{holder}` holds the lease and renewed it at {} (it is alive; expires {}); stop that controller, or use --force",
            when(lease.renewed),
            when(lease.expires)
        )),
        _ => Err(format!("unexpected answer: {}", answer.tail)),
    }
}
