//! The desired state in the shape the engine uses: defaults applied, references resolved,
//! positions dropped. Built from a validated [`Catalog`], so nothing here can fail.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::host::Host;
use crate::host::local::LocalHost;
use crate::host::ssh::SshHost;
use crate::manifest::Catalog;
use crate::manifest::types::{
    DEFAULT_CONNECT_TIMEOUT, HostSpec, IntOrPercent, NotificationEvent, NotificationSpec, Rollout,
    SshSettings, WebhookFormat,
};
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
    /// `dependsOn`: the sites that must be Converged on their desired release before this
    /// one runs `once` or switches, in manifest order.
    pub depends_on: Vec<String>,
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
    /// How many hosts of an optional stage may fail their build or health check while the
    /// rollout goes on (`rollout.maxFailed`; required stages need every host).
    pub max_failed: MaxFailed,
}

impl From<&Rollout> for RolloutSpec {
    fn from(rollout: &Rollout) -> Self {
        RolloutSpec {
            max_parallel: rollout.max_parallel.value as usize,
            batch: rollout.batch as usize,
            pause: rollout.pause.as_std(),
            failure_retries: rollout.failure_retries.value,
            max_failed: rollout
                .max_failed
                .as_ref()
                .map_or_else(MaxFailed::default, |m| m.value.into()),
        }
    }
}

/// `rollout.maxFailed`: a count of hosts, or a percentage of a stage's hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxFailed {
    Count(u32),
    Percent(u32),
}

impl Default for MaxFailed {
    /// 0: any failure stops the rollout.
    fn default() -> Self {
        MaxFailed::Count(0)
    }
}

impl From<IntOrPercent> for MaxFailed {
    fn from(written: IntOrPercent) -> Self {
        match written {
            IntOrPercent::Count(n) => MaxFailed::Count(n),
            IntOrPercent::Percent(n) => MaxFailed::Percent(n),
        }
    }
}

impl std::fmt::Display for MaxFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaxFailed::Count(n) => write!(f, "{n}"),
            MaxFailed::Percent(n) => write!(f, "{n}%"),
        }
    }
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
    /// Who hears about what (the URLs are read when convoy starts sending, see `notify`).
    pub notifications: Vec<DesiredNotification>,
    /// Every Site's desired release, also when a run selects one site (`--site`): what a
    /// site's dependencies must be Converged on.
    pub releases: BTreeMap<String, String>,
}

/// A Notification as the engine uses it: where its URL comes from, never the URL.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredNotification {
    pub name: String,
    /// `None`: every site.
    pub sites: Option<Vec<String>>,
    pub events: Vec<NotificationEvent>,
    pub format: WebhookFormat,
    pub url_from: UrlSource,
}

/// Where a webhook URL is read from.
#[derive(Debug, Clone, PartialEq)]
pub enum UrlSource {
    Env(String),
    /// Absolute (a relative path was anchored at its manifest's directory).
    File(std::path::PathBuf),
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
                rollout: RolloutSpec::from(&spec.rollout),
                keep_releases: spec.keep_releases.value as usize,
                suspend: spec.suspend,
                depends_on: depends_on(spec),
            };
            state.releases.insert(name.clone(), desired.release.clone());
            state.sites.insert(name.clone(), desired);
        }
        state.site_labels = site_labels(catalog);
        state.notifications = notifications(catalog);
        state
    }
}

fn notifications(catalog: &Catalog) -> Vec<DesiredNotification> {
    let of = |(name, n): (&String, &crate::manifest::types::Object<NotificationSpec>)| {
        let url = &n.spec.webhook.url_from;
        DesiredNotification {
            name: name.clone(),
            sites: (!n.spec.sites.is_empty())
                .then(|| n.spec.sites.iter().map(|s| s.value.clone()).collect()),
            events: n.spec.events.value.clone(),
            format: n.spec.webhook.format,
            url_from: match (&url.env, &url.file) {
                (Some(env), _) => UrlSource::Env(env.value.clone()),
                (None, Some(file)) => UrlSource::File(file.value.clone().into()),
                (None, None) => unreachable!("validation requires exactly one URL source"),
            },
        }
    };
    catalog.notifications.iter().map(of).collect()
}

/// A Site's `dependsOn`, without positions.
fn depends_on(spec: &crate::manifest::types::SiteSpec) -> Vec<String> {
    let entries = spec.depends_on.iter().flat_map(|d| d.iter());
    entries.map(|s| s.value.clone()).collect()
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
