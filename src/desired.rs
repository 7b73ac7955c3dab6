//! The desired state in the shape the engine uses: defaults applied, references resolved,
//! positions dropped. Built from a validated [`Catalog`], so nothing here can fail.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::host::Host;
use crate::host::local::LocalHost;
use crate::host::ssh::SshHost;
use crate::manifest::Catalog;
use crate::manifest::types::{DEFAULT_CONNECT_TIMEOUT, HostSpec, SshSettings};
use crate::manifest::validate::archive_path_of_site;

/// One site as the engine sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredSite {
    pub name: String,
    /// Release id: the directory name on every host.
    pub release: String,
    /// What the release checks out (commit, tag or branch as written).
    pub revision: String,
    pub path: String,
    pub stages: Vec<DesiredStage>,
    pub fetch: FetchSpec,
    pub build: Vec<String>,
    pub shared: Vec<String>,
    pub env: Vec<(String, String)>,
    pub health: Option<HealthSpec>,
    pub rollout: RolloutSpec,
    pub keep_releases: usize,
    pub suspend: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DesiredStage {
    pub name: String,
    pub group: String,
    pub optional: bool,
    pub once: Vec<String>,
    pub activate: Vec<String>,
    /// Host names, in manifest order.
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FetchSpec {
    Git {
        repository: String,
    },
    /// `path`: absolute, `{site}` filled in, `{release}` still in it. `roots`: where it must resolve inside,
    /// checked when packed (validation saw only the desired release's path).
    Archive {
        path: String,
        roots: Vec<std::path::PathBuf>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthSpec {
    pub command: String,
    pub timeout: Duration,
    pub retries: u32,
    pub interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSpec {
    pub max_parallel: usize,
    /// Hosts of a stage switched at a time; 0 = the whole stage.
    pub batch: usize,
    pub pause: Duration,
    pub failure_retries: u32,
}

/// Everything convoy should make true, plus how to reach each host.
#[derive(Debug, Clone, Default)]
pub struct DesiredState {
    pub sites: BTreeMap<String, DesiredSite>,
    pub hosts: BTreeMap<String, Host>,
    /// Per ServerGroup `maxParallel`.
    pub group_limits: BTreeMap<String, usize>,
    /// Each Site's `metadata.labels`: for `convoy status -l`, never part of what a pass
    /// does (an edited label neither lifts a hold nor starts a pass).
    pub site_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// The manifest commit this desired state was loaded from (`reconcile --git`): the
    /// version of the desired state, shown in status, history, logs and metrics. Never part
    /// of a site's desired key: a commit that leaves a site unchanged neither starts its
    /// pass nor lifts its hold.
    pub commit: Option<String>,
}

impl DesiredState {
    pub fn from_catalog(catalog: &Catalog) -> Self {
        let mut state = DesiredState::default();
        for (name, group) in &catalog.groups {
            if let Some(limit) = &group.spec.max_parallel {
                state
                    .group_limits
                    .insert(name.clone(), limit.value as usize);
            }
            for host in group.spec.hosts.iter() {
                state
                    .hosts
                    .entry(host.name.value.clone())
                    .or_insert_with(|| resolve_host(&group.spec.ssh, host));
            }
        }
        for (name, site) in &catalog.sites {
            let spec = &site.spec;
            let release = catalog
                .release(name, &spec.release)
                .expect("validation resolved every site's release");
            let stages = spec
                .stages
                .iter()
                .map(|stage| DesiredStage {
                    name: stage.name.value.clone(),
                    group: stage.group.value.clone(),
                    optional: stage.optional,
                    once: stage.once.iter().map(|c| c.value.clone()).collect(),
                    activate: stage.activate.iter().map(|c| c.value.clone()).collect(),
                    hosts: catalog.groups[&stage.group.value]
                        .spec
                        .hosts
                        .iter()
                        .map(|h| h.name.value.clone())
                        .collect(),
                })
                .collect();
            let fetch = match (&spec.fetch.git, &spec.fetch.archive) {
                (Some(git), _) => FetchSpec::Git {
                    repository: git.repository.value.clone(),
                },
                (None, Some(archive)) => FetchSpec::Archive {
                    path: archive_path_of_site(&archive.path, name),
                    roots: catalog.archive_roots.get(name).cloned().unwrap_or_default(),
                },
                (None, None) => unreachable!("validation requires exactly one fetch source"),
            };
            let desired = DesiredSite {
                name: name.clone(),
                release: spec.release.value.clone(),
                revision: release.spec.revision.value.clone(),
                path: spec.path.value.clone(),
                stages,
                fetch,
                build: spec.build.iter().map(|c| c.value.clone()).collect(),
                shared: spec.shared.iter().map(|c| c.value.clone()).collect(),
                env: spec
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.value.clone()))
                    .collect(),
                health: spec.health.as_ref().map(|h| HealthSpec {
                    command: h.command.value.clone(),
                    timeout: h.timeout.as_std(),
                    retries: h.retries,
                    interval: h.interval.as_std(),
                }),
                rollout: RolloutSpec {
                    max_parallel: spec.rollout.max_parallel.value as usize,
                    batch: spec.rollout.batch as usize,
                    pause: spec.rollout.pause.as_std(),
                    failure_retries: spec.rollout.failure_retries.value,
                },
                keep_releases: spec.keep_releases.value as usize,
                suspend: spec.suspend,
            };
            state.sites.insert(name.clone(), desired);
        }
        state.site_labels = site_labels(catalog);
        state
    }
}

/// Each Site's `metadata.labels`, without their positions.
fn site_labels(catalog: &Catalog) -> BTreeMap<String, BTreeMap<String, String>> {
    let labels = |site: &crate::manifest::types::Object<_>| {
        let pairs = site.metadata.labels.iter();
        pairs.map(|(k, v)| (k.clone(), v.value.clone())).collect()
    };
    catalog
        .sites
        .iter()
        .map(|(name, site)| (name.clone(), labels(site)))
        .collect()
}

fn resolve_host(ssh: &SshSettings, host: &HostSpec) -> Host {
    if host.address.value == "local" {
        return Host::Local(LocalHost {
            name: host.name.value.clone(),
            root: host.root.as_ref().map(|r| r.value.clone()),
        });
    }
    Host::Ssh(SshHost {
        name: host.name.value.clone(),
        address: host.address.value.clone(),
        port: host.effective_port(ssh),
        user: host.effective_user(ssh),
        identity_file: host.effective_identity_file(ssh).map(expand_home),
        config_file: ssh
            .config_file
            .as_ref()
            .map(|f| expand_home(f.value.clone())),
        connect_timeout: ssh
            .connect_timeout
            .as_ref()
            .map_or(DEFAULT_CONNECT_TIMEOUT, |t| t.value)
            .as_std(),
        host_key_checking: ssh.host_key_checking,
    })
}

/// `~/x` is the controller user's home, as in ssh_config.
fn expand_home(path: String) -> std::path::PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => std::path::Path::new(&home).join(rest),
        _ => path.into(),
    }
}
