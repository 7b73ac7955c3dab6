//! Cross-object rules over everything that parsed. Every problem is collected before
//! anything is reported, so an operator fixes a broken commit in one round. A desired
//! state that fails here is never acted on: nothing on any host is touched. The rules of
//! single values are in `fields.rs`, those of paths in `paths.rs`, references between
//! objects by name (and how a Release is named within its site) in `refs.rs`, the order
//! between sites (`dependsOn`) in `depends.rs`.

mod depends;
mod fields;
mod notifications;
mod paths;
mod refs;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::LoadOptions;
use super::diagnostic::{Diagnostic, Diagnostics};
use super::load::{AnyObject, Loaded, Sourced, sanitize};
use super::located::Pos;
use super::types::*;
use fields::{
    check_absolute_path, check_commands, check_dns_label, check_group, check_host, check_labels,
    check_name, check_site_settings,
};
pub use fields::{is_dns_label, is_dns_subdomain};
use paths::{anchor_paths, anchored, check_archive_path, path_overlap};
pub use paths::{archive_path_of_site, resolve_existing};
pub use refs::ObjectKey;
use refs::{Index, check_release_of, check_releases};

/// A valid desired state: every reference resolves and every value is safe to use.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub sites: BTreeMap<String, Object<SiteSpec>>,
    pub groups: BTreeMap<String, Object<ServerGroupSpec>>,
    /// Keyed by (site, release name): a Release's name is unique among its site's Releases.
    pub releases: BTreeMap<(String, String), Object<ReleaseSpec>>,
    /// Notifications by name (`urlFrom.file` made absolute).
    pub notifications: BTreeMap<String, Object<NotificationSpec>>,
    /// Distinct host names across the fleet.
    pub hosts: BTreeSet<String>,
    /// Per Site with an archive: the directories its archive must resolve inside (the
    /// manifest directory, or the `--archive-root`s), checked again when it is packed.
    pub archive_roots: BTreeMap<String, Vec<PathBuf>>,
    /// The file each object came from, for errors found after validation.
    pub files: BTreeMap<ObjectKey, Arc<str>>,
}

impl Catalog {
    /// Release `name` of Site `site`.
    pub fn release(&self, site: &str, name: &str) -> Option<&Object<ReleaseSpec>> {
        self.releases.get(&(site.to_string(), name.to_string()))
    }

    /// `3 sites, 2 server groups, 3 releases, 5 hosts`
    pub fn summary(&self) -> String {
        fn count(n: usize, what: &str) -> String {
            format!("{n} {what}{}", if n == 1 { "" } else { "s" })
        }
        let mut summary = format!(
            "{}, {}, {}, {}",
            count(self.sites.len(), "site"),
            count(self.groups.len(), "server group"),
            count(self.releases.len(), "release"),
            count(self.hosts.len(), "host")
        );
        if !self.notifications.is_empty() {
            summary.push_str(&format!(
                ", {}",
                count(self.notifications.len(), "notification")
            ));
        }
        summary
    }
}

/// Collects diagnostics for one file/object at a time.
struct Reporter {
    diagnostics: Vec<Diagnostic>,
}

impl Reporter {
    fn at(
        &mut self,
        file: &Arc<str>,
        object: &str,
        pos: Pos,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.diagnostics.push(Diagnostic {
            file: file.to_string(),
            pos,
            object: Some(object.to_string()),
            field: Some(field.into()),
            message: sanitize(&message.into()),
        });
    }
}

/// Where an object was defined, for "first defined at" messages.
fn place(file: &str, pos: Pos) -> String {
    format!("{file}:{pos}")
}

/// Validates everything loaded. In the valid catalog, relative paths (`ssh.configFile`,
/// `identityFile`, `fetch.archive.path`) are made absolute against the directory of the file
/// that holds them: convoy's working directory (`/` under systemd) never matters.
pub fn validate(loaded: Loaded, options: &LoadOptions) -> Result<Catalog, Diagnostics> {
    let mut r = Reporter {
        diagnostics: loaded.diagnostics,
    };
    let manifest_root = loaded.root.as_deref().map(resolve_existing);
    let archive_roots: Vec<PathBuf> = options
        .archive_roots
        .iter()
        .map(|root| resolve_existing(root))
        .collect();
    // Names first: later rules look objects up by name.
    let (mut catalog, files) = check_names(&mut r, &loaded.objects);
    let index = Index {
        files: &files,
        broken: &loaded.broken,
        single_file: loaded.single_file,
    };
    check_hosts(&mut r, &mut catalog, &index);
    check_releases(&mut r, &catalog, &index);
    let roots = ArchiveRoots {
        manifest: manifest_root.as_deref(),
        given: &archive_roots,
    };
    catalog.archive_roots = check_sites(&mut r, &catalog, &index, &roots);
    notifications::check_notifications(&mut r, &catalog, &index);
    depends::check_depends_on(&mut r, &catalog, &index);

    let mut diagnostics = r.diagnostics;
    if diagnostics.is_empty() {
        anchor_paths(&mut catalog, &files);
        catalog.files = files;
        return Ok(catalog);
    }
    diagnostics.sort();
    diagnostics.dedup();
    Err(Diagnostics(diagnostics))
}

/// Where archive paths must lead: inside the manifest directory (relative paths), or under
/// a given `--archive-root` (absolute ones).
struct ArchiveRoots<'a> {
    manifest: Option<&'a Path>,
    given: &'a [PathBuf],
}

/// Names and labels of every object, and duplicates: the catalog of the objects that may be
/// looked up by name, with the file each came from.
fn check_names(r: &mut Reporter, objects: &[Sourced]) -> (Catalog, BTreeMap<ObjectKey, Arc<str>>) {
    let mut catalog = Catalog::default();
    let mut files: BTreeMap<ObjectKey, Arc<str>> = BTreeMap::new();
    for sourced in objects {
        let meta = sourced.object.metadata();
        let kind = sourced.object.kind();
        let id = format!("{}/{}", kind.as_str(), meta.name.value);
        let file = &sourced.file;
        check_name(r, file, &id, kind, &meta.name);
        check_labels(r, file, &id, "metadata.labels", &meta.labels);
        let key = ObjectKey::of(&sourced.object);
        if let Some(first) = files.get(&key) {
            let first_pos = first_position(&catalog, &key);
            let scope = match kind {
                Kind::Release => format!(" for Site `{}`", key.scope),
                _ => String::new(),
            };
            r.at(
                file,
                &id,
                meta.name.pos,
                "metadata.name",
                format!(
                    "duplicate {} name `{}`{scope}: already defined at {}",
                    kind.as_str(),
                    meta.name.value,
                    place(first, first_pos)
                ),
            );
            continue;
        }
        files.insert(key.clone(), file.clone());
        let name = meta.name.value.clone();
        match &sourced.object {
            AnyObject::Site(o) => drop(catalog.sites.insert(name, (**o).clone())),
            AnyObject::ServerGroup(o) => drop(catalog.groups.insert(name, o.clone())),
            AnyObject::Release(o) => drop(catalog.releases.insert((key.scope, name), o.clone())),
            AnyObject::Notification(o) => drop(catalog.notifications.insert(name, o.clone())),
        }
    }
    (catalog, files)
}

/// Server groups and their hosts: host names unique fleet-wide, or identical wherever
/// repeated. Fills `catalog.hosts`.
fn check_hosts(r: &mut Reporter, catalog: &mut Catalog, index: &Index) {
    let mut seen_hosts: BTreeMap<String, (ResolvedHost, Arc<str>, Pos, String)> = BTreeMap::new();
    for (name, group) in &catalog.groups {
        let file = index.file_of(&ObjectKey::named(Kind::ServerGroup, name));
        let id = format!("ServerGroup/{name}");
        check_group(r, &file, &id, &group.spec);
        let mut in_group = BTreeSet::new();
        for (i, host) in group.spec.hosts.iter().enumerate() {
            let field = format!("spec.hosts[{i}]");
            check_host(r, &file, &id, &field, host);
            if !in_group.insert(host.name.value.clone()) {
                r.at(
                    &file,
                    &id,
                    host.name.pos,
                    format!("{field}.name"),
                    format!("host `{}` is listed twice in this group", host.name.value),
                );
                continue;
            }
            let resolved = ResolvedHost::new(&group.spec.ssh, host, &file);
            match seen_hosts.get(&host.name.value) {
                Some((first, first_file, first_pos, first_group)) if *first != resolved => r.at(
                    &file,
                    &id,
                    host.name.pos,
                    format!("{field}.name"),
                    format!(
                        "host `{}` is defined differently here than in ServerGroup/{first_group} at {} ({}); a host listed in several groups must be identical everywhere",
                        host.name.value,
                        place(first_file, *first_pos),
                        first.difference(&resolved)
                    ),
                ),
                Some(_) => {}
                None => {
                    seen_hosts.insert(host.name.value.clone(), (resolved, file.clone(), host.name.pos, name.clone()));
                }
            }
            catalog.hosts.insert(host.name.value.clone());
        }
    }
}

/// host -> (path, site) of every site deploying there: two sites must neither share a
/// directory nor nest one inside the other (one site's clean-up would delete the other's
/// files).
type Claimed = BTreeMap<String, Vec<(String, String)>>;

/// One Site being checked, with where it is defined.
struct SiteRef<'a> {
    name: &'a str,
    file: Arc<str>,
    id: String,
    spec: &'a SiteSpec,
}

/// Every Site: its Release, settings, archive path and stages. Returns, per Site with an
/// archive, the directories the archive must resolve inside.
fn check_sites(
    r: &mut Reporter,
    catalog: &Catalog,
    index: &Index,
    roots: &ArchiveRoots,
) -> BTreeMap<String, Vec<PathBuf>> {
    let mut archive_roots = BTreeMap::new();
    let mut claimed = Claimed::new();
    for (name, site) in &catalog.sites {
        let site = SiteRef {
            name,
            file: index.file_of(&ObjectKey::named(Kind::Site, name)),
            id: format!("Site/{name}"),
            spec: &site.spec,
        };
        let (file, id, spec) = (&site.file, site.id.as_str(), site.spec);
        check_release_of(r, &site, catalog, index);
        check_absolute_path(r, file, id, "spec.path", &spec.path);
        check_site_settings(r, file, id, spec);
        if let (None, Some(archive)) = (&spec.fetch.git, &spec.fetch.archive) {
            let allowed = check_archive_path(
                r,
                file,
                id,
                &archive.path,
                &archive_path_of_site(&archive.path, name).replace("{release}", &spec.release),
                roots.manifest,
                roots.given,
            );
            archive_roots.insert(name.clone(), allowed);
        }
        if spec.stages.is_empty() {
            r.at(
                file,
                id,
                spec.stages.pos,
                "spec.stages",
                "a site needs at least one stage",
            );
        }
        check_stages(r, &site, catalog, index, &mut claimed);
    }
    archive_roots
}

/// The Site's stages: unique valid names, usable commands, an existing group, and each
/// host in one stage only and claimed by no other Site at an overlapping path.
fn check_stages(
    r: &mut Reporter,
    site: &SiteRef,
    catalog: &Catalog,
    index: &Index,
    claimed: &mut Claimed,
) {
    let (file, id) = (&site.file, site.id.as_str());
    let mut stage_names = BTreeMap::new();
    let mut host_stage: BTreeMap<String, String> = BTreeMap::new();
    for (i, stage) in site.spec.stages.iter().enumerate() {
        let field = format!("spec.stages[{i}]");
        check_dns_label(
            r,
            file,
            id,
            &format!("{field}.name"),
            &stage.name,
            "stage name",
        );
        if let Some(first) = stage_names.insert(stage.name.value.clone(), stage.name.pos) {
            r.at(
                file,
                id,
                stage.name.pos,
                format!("{field}.name"),
                format!(
                    "duplicate stage name `{}`: already used at {}",
                    stage.name.value,
                    place(file, first)
                ),
            );
        }
        check_commands(r, file, id, &format!("{field}.once"), &stage.once);
        check_commands(r, file, id, &format!("{field}.activate"), &stage.activate);
        match catalog.groups.get(&stage.group.value) {
            Some(group) => {
                for host in group.spec.hosts.iter() {
                    let host = &host.name.value;
                    if let Some(other) = host_stage.insert(host.clone(), stage.name.value.clone())
                        && other != stage.name.value
                    {
                        r.at(file, id, stage.group.pos, format!("{field}.group"), format!("host `{host}` is in stage `{other}` and in stage `{}`; a host can belong to only one stage of a site", stage.name.value));
                    }
                    claim(r, site, host, claimed);
                }
            }
            None if index.exists(&ObjectKey::named(Kind::ServerGroup, &stage.group)) => {}
            None => {
                let groups = catalog.groups.keys().map(String::as_str);
                let message = index.not_defined(Kind::ServerGroup, &stage.group, groups);
                r.at(file, id, stage.group.pos, format!("{field}.group"), message);
            }
        }
    }
}

/// Records that `site` deploys to its path on `host`, reporting any other Site whose path
/// there is the same or nested.
fn claim(r: &mut Reporter, site: &SiteRef, host: &str, claimed: &mut Claimed) {
    let path = &site.spec.path;
    let on_host = claimed.entry(host.to_string()).or_default();
    for (other_path, other) in on_host.iter().filter(|(_, o)| o != site.name) {
        if let Some(message) = path_overlap(path, other_path, other, host) {
            r.at(&site.file, &site.id, path.pos, "spec.path", message);
        }
    }
    if !on_host
        .iter()
        .any(|(p, o)| o == site.name && *p == path.value)
    {
        on_host.push((path.value.clone(), site.name.to_string()));
    }
}

/// Kubernetes-style immutability of `Release.spec.revision`: a release already applied with
/// one revision cannot silently change to another (hosts would keep the old build while
/// status said Converged). `applied(site, release)`: the revision it was first applied with.
pub fn check_immutable(
    catalog: &Catalog,
    applied: impl Fn(&str, &str) -> Option<String>,
) -> Result<(), Diagnostics> {
    let mut r = Reporter {
        diagnostics: vec![],
    };
    for ((site, name), release) in &catalog.releases {
        let revision = &release.spec.revision;
        if let Some(before) = applied(site, name)
            && before != revision.value
        {
            let file = &catalog.files[&ObjectKey::release(site, name)];
            r.at(file, &format!("Release/{name}"), revision.pos, "spec.revision", format!(
                "field is immutable: release {name} of site {site} was applied with revision {before}; make a new Release"
            ));
        }
    }
    match r.diagnostics {
        d if d.is_empty() => Ok(()),
        mut d => {
            d.sort();
            Err(Diagnostics(d))
        }
    }
}

/// Position of the first object with the same key (for duplicate messages).
fn first_position(catalog: &Catalog, key: &ObjectKey) -> Pos {
    let name = &key.name;
    match key.kind {
        Kind::Site => catalog.sites.get(name).map(|o| o.metadata.name.pos),
        Kind::ServerGroup => catalog.groups.get(name).map(|o| o.metadata.name.pos),
        Kind::Release => catalog
            .release(&key.scope, name)
            .map(|o| o.metadata.name.pos),
        Kind::Notification => catalog.notifications.get(name).map(|o| o.metadata.name.pos),
    }
    .unwrap_or_default()
}

/// How convoy will connect to a host, after group defaults: what must agree fleet-wide.
#[derive(Debug, PartialEq, Eq)]
struct ResolvedHost {
    address: String,
    port: Option<u16>,
    user: Option<String>,
    identity_file: Option<String>,
    root: Option<String>,
}

impl ResolvedHost {
    /// `file`: the group's manifest, which relative identity files are taken from.
    fn new(ssh: &SshSettings, host: &HostSpec, file: &str) -> Self {
        ResolvedHost {
            address: host.address.value.clone(),
            port: host.effective_port(ssh),
            user: host.effective_user(ssh),
            identity_file: host
                .effective_identity_file(ssh)
                .map(|f| anchored(&f, file)),
            root: host.root.as_ref().map(|r| r.value.clone()),
        }
    }

    fn difference(&self, other: &ResolvedHost) -> String {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "unset".into());
        if self.address != other.address {
            format!("address `{}` vs `{}`", self.address, other.address)
        } else if self.port != other.port {
            let show = |p: Option<u16>| p.map_or("unset".into(), |p| p.to_string());
            format!("port {} vs {}", show(self.port), show(other.port))
        } else if self.user != other.user {
            format!("user {} vs {}", show(&self.user), show(&other.user))
        } else if self.identity_file != other.identity_file {
            format!(
                "identityFile {} vs {}",
                show(&self.identity_file),
                show(&other.identity_file)
            )
        } else {
            format!("root {} vs {}", show(&self.root), show(&other.root))
        }
    }
}
