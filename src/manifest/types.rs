//! The manifest DTOs exactly as operators write them (`convoy.dev/v1alpha1`).
//! Unknown fields are rejected here, at the edge; cross-object rules live in `validate`.
//! Doc comments become the CRD field descriptions, so they speak to the operator.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::Duration;
use super::located::{Located, Pos};

pub const API_GROUP: &str = "convoy.dev";
pub const API_VERSION: &str = "convoy.dev/v1alpha1";

/// The kinds convoy understands, in the order they are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Site,
    ServerGroup,
    Release,
    Notification,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Site,
        Kind::ServerGroup,
        Kind::Release,
        Kind::Notification,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Site => "Site",
            Kind::ServerGroup => "ServerGroup",
            Kind::Release => "Release",
            Kind::Notification => "Notification",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// The lowercase plural used in CRD names (`sites.convoy.dev`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Site => "sites",
            Kind::ServerGroup => "servergroups",
            Kind::Release => "releases",
            Kind::Notification => "notifications",
        }
    }
}

/// Every manifest: `apiVersion`, `kind`, `metadata`, `spec`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Object<S> {
    pub api_version: Located<String>,
    pub kind: Located<String>,
    pub metadata: ObjectMeta,
    pub spec: S,
}

/// Name and labels of a manifest object.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectMeta {
    /// Lowercase DNS-1123 label (a Release name may also contain dots). Unique per kind; a
    /// Release's name is unique among the Releases of its site (two sites may both have
    /// `r2026-11-28.1`).
    pub name: Located<String>,
    /// Free-form labels; values must be valid Kubernetes label values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, Located<String>>,
}

// ---------------------------------------------------------------- ServerGroup

/// A set of hosts and how to reach them.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerGroupSpec {
    /// SSH defaults for every host of the group.
    #[serde(default)]
    pub ssh: SshSettings,
    /// At most this many hosts of this group are worked on at once (default: no group limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_parallel: Option<Located<u32>>,
    /// The hosts of the group.
    #[schemars(length(min = 1))]
    pub hosts: Located<Vec<HostSpec>>,
}

/// How convoy treats an SSH host key it has not seen before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyChecking {
    /// Only keys already in known_hosts are accepted (the default).
    #[default]
    Strict,
    /// Unknown hosts are trusted on first use and recorded; a CHANGED key is still refused.
    AcceptNew,
}

/// SSH settings shared by the hosts of a group.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SshSettings {
    /// Remote user (default: whatever ssh_config says, else the ssh client's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Located<String>>,
    /// SSH port (default: whatever ssh_config says, else 22).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Located<u16>>,
    /// Private key to authenticate with (default: ssh_config's); `~/` is the controller user's
    /// home, a relative path is relative to the directory of this manifest file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_file: Option<Located<String>>,
    /// An ssh_config file to honour (`Host` aliases, `HostName`, `Port`...); `~/` is the
    /// controller user's home, a relative path is relative to the directory of this manifest file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_file: Option<Located<String>>,
    /// How long to wait for a connection (default 10s; whole seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Located<Duration>>,
    /// How an SSH host key missing from known_hosts is treated (default `strict`).
    #[serde(default)]
    pub host_key_checking: HostKeyChecking,
}

/// One server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostSpec {
    /// Unique across the whole fleet; the `host` label in metrics.
    pub name: Located<String>,
    /// SSH destination (hostname, IP or ssh_config `Host` alias), or `local` for this machine
    /// without SSH.
    pub address: Located<String>,
    /// Per-host override of `ssh.port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Located<u16>>,
    /// Per-host override of `ssh.user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Located<String>>,
    /// Per-host override of `ssh.identityFile` (relative to the directory of this manifest file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_file: Option<Located<String>>,
    /// Only for `address: local`: a directory prefixed to every path on this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<Located<String>>,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, Located<String>>,
}

impl HostSpec {
    /// The SSH port after the group default: host `port`, else `ssh.port`; `None` leaves it
    /// to ssh_config (`Port`), whose own default is 22.
    pub fn effective_port(&self, ssh: &SshSettings) -> Option<u16> {
        self.port.as_ref().or(ssh.port.as_ref()).map(|p| p.value)
    }

    /// The remote user after the group default, if any is set.
    pub fn effective_user(&self, ssh: &SshSettings) -> Option<String> {
        self.user
            .as_ref()
            .or(ssh.user.as_ref())
            .map(|u| u.value.clone())
    }

    /// The identity file after the group default, if any is set (as written, `~/` kept).
    pub fn effective_identity_file(&self, ssh: &SshSettings) -> Option<String> {
        self.identity_file
            .as_ref()
            .or(ssh.identity_file.as_ref())
            .map(|f| f.value.clone())
    }
}

// ---------------------------------------------------------------- Release

/// One version of one site's code.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReleaseSpec {
    /// The Site this release belongs to: the scope of its name, as a namespace is in Kubernetes.
    pub site: Located<String>,
    /// What the fetch step checks out: a commit, tag or branch (a branch is resolved once).
    /// Immutable once applied: to ship other code, make a new Release.
    pub revision: Located<String>,
}

// ---------------------------------------------------------------- Site

/// What runs where, and how a release goes live.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SiteSpec {
    /// The Release to run, by name among this site's Releases. GitOps: change this line to
    /// deploy or roll back.
    pub release: Located<String>,
    /// Absolute path on every host: releases/<id>/, current -> releases/<id>, shared/.
    pub path: Located<String>,
    /// Switched in this order; a stage goes live only after the one before it.
    #[schemars(length(min = 1))]
    pub stages: Located<Vec<Stage>>,
    /// How a release's files arrive in releases/<id>.
    pub fetch: Located<Fetch>,
    /// Run in releases/<id> on every host; any failure = build failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub build: Vec<Located<String>>,
    /// Paths kept in <path>/shared/ and symlinked into every release (`dir/` = a directory).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared: Vec<Located<String>>,
    /// Exported to build, once, activate and health commands.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, Located<String>>,
    /// Run on each host after activate; failure = rollback of what switched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Pace and failure policy of a rollout.
    #[serde(default)]
    pub rollout: Rollout,
    /// Complete releases kept per host (minimum 2); never removes current, previous or desired.
    #[serde(default = "defaults::keep_releases")]
    #[schemars(range(min = 2))]
    pub keep_releases: Located<u32>,
    /// true: observe and report, change nothing.
    #[serde(default)]
    pub suspend: bool,
    /// Other Sites that must be Converged on their own desired release before this one
    /// runs `once` or switches (builds go ahead). A cycle or an unknown name is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<Located<Vec<Located<String>>>>,
}

/// One stage of a site: a ServerGroup that goes live together.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Stage {
    /// Unique within the site.
    pub name: Located<String>,
    /// The ServerGroup whose hosts form this stage.
    pub group: Located<String>,
    /// Unreachable hosts here do not block the rollout; they catch up when back.
    #[serde(default)]
    pub optional: bool,
    /// Once per release, on one host of this stage, after all builds and before any switch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub once: Vec<Located<String>>,
    /// Run on each host right after its switch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub activate: Vec<Located<String>>,
}

/// Exactly one of `git` or `archive`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fetch {
    /// Check the release's revision out of a git repository (mirrored on each host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitFetch>,
    /// Upload an archive from the controller; `{release}` is replaced by the release id and
    /// `{site}` by the site's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveFetch>,
}

/// A git repository every host can clone.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitFetch {
    /// Clone URL, e.g. `git@github.com:org/app.git` or `https://…`.
    pub repository: Located<String>,
}

/// An archive on the controller, uploaded to every host.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArchiveFetch {
    /// A .tar.gz (e.g. `./dist/{site}-{release}.tar.gz`) or a directory on the controller; a directory
    /// is packed by convoy. A relative path is relative to the directory of this manifest file
    /// and may not lead out of the manifest directory (`-f`), symlinks included; an absolute
    /// path must lie under a directory the operator allows with `--archive-root`.
    pub path: Located<String>,
}

/// A health check run on each host after activation.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Health {
    /// Shell command; exit 0 = healthy.
    pub command: Located<String>,
    /// Per attempt (default 10s).
    #[serde(default = "defaults::health_timeout")]
    pub timeout: Duration,
    /// Further attempts after the first failure (`3` = up to 4 runs; default 0).
    #[serde(default)]
    pub retries: u32,
    /// Wait between attempts (default 2s).
    #[serde(default = "defaults::health_interval")]
    pub interval: Duration,
}

/// Pace and failure policy of a rollout.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rollout {
    /// Site-wide cap on hosts worked on at once (default 10).
    #[serde(default = "defaults::max_parallel")]
    #[schemars(range(min = 1))]
    pub max_parallel: Located<u32>,
    /// Switch this many hosts of a stage at a time; 0 = the whole stage at once.
    #[serde(default)]
    pub batch: u32,
    /// Wait between batches (default 0s).
    #[serde(default)]
    pub pause: Duration,
    /// Failed attempts of one release after which it is held Failed (default 3, minimum 1).
    #[serde(default = "defaults::failure_retries")]
    #[schemars(range(min = 1))]
    pub failure_retries: Located<u32>,
    /// Hosts of an optional stage that may fail their build or health check while the rollout
    /// goes on (they keep their previous release; the site is Degraded): a count, or `N%` of
    /// the stage's hosts rounded down. Required stages need every host. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failed: Option<Located<IntOrPercent>>,
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            max_parallel: defaults::max_parallel(),
            batch: 0,
            pause: Duration::default(),
            failure_retries: defaults::failure_retries(),
            max_failed: None,
        }
    }
}

/// A percentage from `0%` to `100%`, no leading zeros: what the CRD publishes and the loader
/// accepts.
pub const PERCENT_PATTERN: &str = "^(100|[1-9]?[0-9])%$";

/// A count (`2`) or a percentage of a stage's hosts (`"5%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntOrPercent {
    Count(u32),
    Percent(u32),
}

impl<'de> Deserialize<'de> for IntOrPercent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = IntOrPercent;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a count like `2` or a percentage like `\"5%\"`")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<IntOrPercent, E> {
                u32::try_from(v)
                    .map(IntOrPercent::Count)
                    .map_err(|_| E::custom("count too large"))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<IntOrPercent, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("expected a count of 0 or more, got {v}")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IntOrPercent, E> {
                v.strip_suffix('%')
                    .filter(|n| !n.starts_with('0') || *n == "0")
                    .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|n| n.parse::<u32>().ok())
                    .filter(|n| *n <= 100)
                    .map(IntOrPercent::Percent)
                    .ok_or_else(|| {
                        E::custom(format!(
                            "expected a percentage from `0%` to `100%`, got `{v}`"
                        ))
                    })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Serialize for IntOrPercent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            IntOrPercent::Count(n) => serializer.serialize_u32(*n),
            IntOrPercent::Percent(n) => serializer.collect_str(&format_args!("{n}%")),
        }
    }
}

impl JsonSchema for IntOrPercent {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IntOrPercent".into()
    }
    fn inline_schema() -> bool {
        true
    }
    /// Kubernetes' int-or-string form: no `type`, and exactly `anyOf: [{type: integer},
    /// {type: string}]` (the one shape allowed to carry types inside `anyOf`). The value rules
    /// sit beside it: `minimum` binds only numbers, `pattern` only strings.
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "x-kubernetes-int-or-string": true,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "minimum": 0,
            "pattern": PERCENT_PATTERN,
        })
    }
}

// ---------------------------------------------------------------- Notification

/// Who hears about what: phase changes, rollbacks and offline hosts of the sites it names,
/// sent once per change to a webhook.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotificationSpec {
    /// Sites to report on (default: every site).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<Located<String>>,
    /// Which changes to send: a site entering a phase (Converged, Progressing, Degraded,
    /// Blocked, Failed; Degraded and Blocked again whenever the set of offline hosts changes),
    /// or hosts rolled back (RolledBack).
    #[schemars(length(min = 1))]
    pub events: Located<Vec<NotificationEvent>>,
    /// Where to send them.
    pub webhook: Webhook,
}

/// Events a notification can subscribe to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
pub enum NotificationEvent {
    Failed,
    Blocked,
    Degraded,
    RolledBack,
    Converged,
    Progressing,
}

impl NotificationEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationEvent::Failed => "Failed",
            NotificationEvent::Blocked => "Blocked",
            NotificationEvent::Degraded => "Degraded",
            NotificationEvent::RolledBack => "RolledBack",
            NotificationEvent::Converged => "Converged",
            NotificationEvent::Progressing => "Progressing",
        }
    }
}

/// An HTTP receiver.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Webhook {
    /// `slack` (incoming-webhook JSON) or `json` (convoy's event object).
    pub format: WebhookFormat,
    /// Where the URL comes from (exactly one of `env` or `file`); never the URL itself, which
    /// is a secret.
    pub url_from: Located<UrlFrom>,
}

/// Payload format of a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    Slack,
    Json,
}

/// A secret's source: an environment variable of the controller, or a file on the
/// controller (relative: to this manifest file's directory). Read when convoy starts.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UrlFrom {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Located<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<Located<String>>,
}

mod defaults {
    use super::*;

    pub fn keep_releases() -> Located<u32> {
        Located::new(5, Pos::default())
    }
    pub fn max_parallel() -> Located<u32> {
        Located::new(10, Pos::default())
    }
    pub fn failure_retries() -> Located<u32> {
        Located::new(3, Pos::default())
    }
    pub fn health_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn health_interval() -> Duration {
        Duration::from_secs(2)
    }
}

/// Default SSH port and connect timeout, applied where a manifest says nothing.
pub const DEFAULT_SSH_PORT: u16 = 22;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
