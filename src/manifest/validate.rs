//! Cross-object rules over everything that parsed. Every problem is collected before
//! anything is reported, so an operator fixes a broken commit in one round. A desired
//! state that fails here is never acted on: nothing on any host is touched.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::LoadOptions;
use super::diagnostic::{Diagnostic, Diagnostics};
use super::load::{AnyObject, Loaded, sanitize};
use super::located::{Located, Pos};
use super::types::*;

/// A valid desired state: every reference resolves and every value is safe to use.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub sites: BTreeMap<String, Object<SiteSpec>>,
    pub groups: BTreeMap<String, Object<ServerGroupSpec>>,
    pub releases: BTreeMap<String, Object<ReleaseSpec>>,
    /// Distinct host names across the fleet.
    pub hosts: BTreeSet<String>,
    /// Per Site with an archive: the directories its archive must resolve inside (the
    /// manifest directory, or the `--archive-root`s), checked again when it is packed.
    pub archive_roots: BTreeMap<String, Vec<PathBuf>>,
    /// The file each object came from, for errors found after validation.
    pub files: BTreeMap<(Kind, String), Arc<str>>,
}

impl Catalog {
    /// `3 sites, 2 server groups, 3 releases, 5 hosts`
    pub fn summary(&self) -> String {
        fn count(n: usize, what: &str) -> String {
            format!("{n} {what}{}", if n == 1 { "" } else { "s" })
        }
        format!(
            "{}, {}, {}, {}",
            count(self.sites.len(), "site"),
            count(self.groups.len(), "server group"),
            count(self.releases.len(), "release"),
            count(self.hosts.len(), "host")
        )
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
    let mut catalog = Catalog::default();
    let mut files: BTreeMap<(Kind, String), Arc<str>> = BTreeMap::new();

    // Names first: later rules look objects up by name.
    for sourced in &loaded.objects {
        let meta = sourced.object.metadata();
        let kind = sourced.object.kind();
        let id = format!("{}/{}", kind.as_str(), meta.name.value);
        let file = &sourced.file;
        check_name(&mut r, file, &id, kind, &meta.name);
        check_labels(&mut r, file, &id, "metadata.labels", &meta.labels);
        let key = (kind, meta.name.value.clone());
        if let Some(first) = files.get(&key) {
            let first_pos = first_position(&catalog, &sourced.object);
            r.at(
                file,
                &id,
                meta.name.pos,
                "metadata.name",
                format!(
                    "duplicate {} name `{}`: already defined at {}",
                    kind.as_str(),
                    meta.name.value,
                    place(first, first_pos)
                ),
            );
            continue;
        }
        files.insert(key, file.clone());
        let name = meta.name.value.clone();
        match &sourced.object {
            AnyObject::Site(o) => drop(catalog.sites.insert(name, (**o).clone())),
            AnyObject::ServerGroup(o) => drop(catalog.groups.insert(name, o.clone())),
            AnyObject::Release(o) => drop(catalog.releases.insert(name, o.clone())),
            AnyObject::Notification(o) => r.at(
                file,
                &id,
                o.kind.pos,
                "kind",
                "the Notification kind is not supported yet: remove this manifest (convoy refuses settings it cannot honour)",
            ),
        }
    }
    let file_of = |kind: Kind, name: &str| files[&(kind, name.to_string())].clone();
    let exists = |kind: Kind, name: &str| {
        files.contains_key(&(kind, name.to_string()))
            || loaded.broken.contains(&(kind, name.to_string()))
    };

    // Hosts: unique names fleet-wide, or identical wherever repeated.
    let mut seen_hosts: BTreeMap<String, (ResolvedHost, Arc<str>, Pos, String)> = BTreeMap::new();
    for (name, group) in &catalog.groups {
        let file = file_of(Kind::ServerGroup, name);
        let id = format!("ServerGroup/{name}");
        check_group(&mut r, &file, &id, &group.spec);
        let mut in_group = BTreeSet::new();
        for (i, host) in group.spec.hosts.iter().enumerate() {
            let field = format!("spec.hosts[{i}]");
            check_host(&mut r, &file, &id, &field, host);
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

    for (name, release) in &catalog.releases {
        let file = file_of(Kind::Release, name);
        let id = format!("Release/{name}");
        let site = &release.spec.site;
        if !exists(Kind::Site, site) {
            r.at(
                &file,
                &id,
                site.pos,
                "spec.site",
                format!("Site `{}` is not defined", site.value),
            );
        }
        check_revision(&mut r, &file, &id, &release.spec.revision);
    }

    // host -> (path, site) of every site deploying there: two sites must neither share a
    // directory nor nest one inside the other (one site's clean-up would delete the other's
    // files).
    let mut claimed: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (name, site) in &catalog.sites {
        let file = file_of(Kind::Site, name);
        let id = format!("Site/{name}");
        let spec = &site.spec;
        match catalog.releases.get(&spec.release.value) {
            Some(release) if release.spec.site.value != *name => r.at(
                &file,
                &id,
                spec.release.pos,
                "spec.release",
                format!(
                    "Release `{}` belongs to Site `{}`, not to this site",
                    spec.release.value, release.spec.site.value
                ),
            ),
            Some(_) => {}
            None if loaded
                .broken
                .contains(&(Kind::Release, spec.release.value.clone())) => {}
            None => r.at(
                &file,
                &id,
                spec.release.pos,
                "spec.release",
                format!("Release `{}` is not defined", spec.release.value),
            ),
        }
        check_absolute_path(&mut r, &file, &id, "spec.path", &spec.path);
        check_site_settings(&mut r, &file, &id, spec);
        if let (None, Some(archive)) = (&spec.fetch.git, &spec.fetch.archive) {
            let allowed = check_archive_path(
                &mut r,
                &file,
                &id,
                &archive.path,
                &spec.release,
                manifest_root.as_deref(),
                &archive_roots,
            );
            catalog.archive_roots.insert(name.clone(), allowed);
        }
        if spec.stages.is_empty() {
            r.at(
                &file,
                &id,
                spec.stages.pos,
                "spec.stages",
                "a site needs at least one stage",
            );
        }
        let mut stage_names = BTreeMap::new();
        let mut host_stage: BTreeMap<String, String> = BTreeMap::new();
        for (i, stage) in spec.stages.iter().enumerate() {
            let field = format!("spec.stages[{i}]");
            check_dns_label(
                &mut r,
                &file,
                &id,
                &format!("{field}.name"),
                &stage.name,
                "stage name",
            );
            if let Some(first) = stage_names.insert(stage.name.value.clone(), stage.name.pos) {
                r.at(
                    &file,
                    &id,
                    stage.name.pos,
                    format!("{field}.name"),
                    format!(
                        "duplicate stage name `{}`: already used at {}",
                        stage.name.value,
                        place(&file, first)
                    ),
                );
            }
            check_commands(&mut r, &file, &id, &format!("{field}.once"), &stage.once);
            check_commands(
                &mut r,
                &file,
                &id,
                &format!("{field}.activate"),
                &stage.activate,
            );
            match catalog.groups.get(&stage.group.value) {
                Some(group) => {
                    for host in group.spec.hosts.iter() {
                        let host = &host.name.value;
                        if let Some(other) =
                            host_stage.insert(host.clone(), stage.name.value.clone())
                            && other != stage.name.value
                        {
                            r.at(&file, &id, stage.group.pos, format!("{field}.group"), format!("host `{host}` is in stage `{other}` and in stage `{}`; a host can belong to only one stage of a site", stage.name.value));
                        }
                        let on_host = claimed.entry(host.clone()).or_default();
                        for (other_path, other) in on_host.iter().filter(|(_, o)| o != name) {
                            if let Some(message) = path_overlap(&spec.path, other_path, other, host)
                            {
                                r.at(&file, &id, spec.path.pos, "spec.path", message);
                            }
                        }
                        if !on_host
                            .iter()
                            .any(|(p, o)| o == name && *p == spec.path.value)
                        {
                            on_host.push((spec.path.value.clone(), name.clone()));
                        }
                    }
                }
                None if exists(Kind::ServerGroup, &stage.group) => {}
                None => r.at(
                    &file,
                    &id,
                    stage.group.pos,
                    format!("{field}.group"),
                    format!("ServerGroup `{}` is not defined", stage.group.value),
                ),
            }
        }
    }

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
    for (name, release) in &catalog.releases {
        let site = &release.spec.site.value;
        let revision = &release.spec.revision;
        if let Some(before) = applied(site, name)
            && before != revision.value
        {
            let file = &catalog.files[&(Kind::Release, name.clone())];
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

/// Why `path` cannot be used on `host` next to site `other` at `other_path`: equal or
/// nested paths, compared by components (`/srv/app` and `/srv/app2` do not overlap).
fn path_overlap(path: &str, other_path: &str, other: &str, host: &str) -> Option<String> {
    let (mine, theirs) = (std::path::Path::new(path), std::path::Path::new(other_path));
    if mine == theirs {
        Some(format!(
            "Site `{other}` already deploys to `{path}` on host `{host}`; two sites cannot share a path on one host"
        ))
    } else if mine.starts_with(theirs) {
        Some(format!(
            "`{path}` is inside `{other_path}`, where Site `{other}` deploys on host `{host}`; site paths on one host may not be nested (one site's clean-up would delete the other's files)"
        ))
    } else if theirs.starts_with(mine) {
        Some(format!(
            "`{path}` contains `{other_path}`, where Site `{other}` deploys on host `{host}`; site paths on one host may not be nested (one site's clean-up would delete the other's files)"
        ))
    } else {
        None
    }
}

/// Position of the first object with the same kind and name (for duplicate messages).
fn first_position(catalog: &Catalog, object: &AnyObject) -> Pos {
    let name = &object.metadata().name.value;
    match object {
        AnyObject::Site(_) => catalog.sites.get(name).map(|o| o.metadata.name.pos),
        AnyObject::ServerGroup(_) => catalog.groups.get(name).map(|o| o.metadata.name.pos),
        AnyObject::Release(_) => catalog.releases.get(name).map(|o| o.metadata.name.pos),
        AnyObject::Notification(_) => None,
    }
    .unwrap_or_default()
}

/// The directory of the manifest file `file`, absolute: what relative paths in it mean.
fn file_dir(file: &str) -> PathBuf {
    let dir = match Path::new(file).parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// A controller-side path as written in `file`: `~/` and absolute paths stay as they are,
/// a relative one is taken from the file's directory.
fn anchored(value: &str, file: &str) -> String {
    if value.starts_with('/') || value.starts_with("~/") || value == "~" {
        value.to_string()
    } else {
        file_dir(file).join(value).display().to_string()
    }
}

/// Rewrites the relative controller-side paths of a valid catalog to absolute ones.
fn anchor_paths(catalog: &mut Catalog, files: &BTreeMap<(Kind, String), Arc<str>>) {
    for (name, group) in catalog.groups.iter_mut() {
        let file = &files[&(Kind::ServerGroup, name.clone())];
        let ssh = &mut group.spec.ssh;
        for path in [&mut ssh.config_file, &mut ssh.identity_file]
            .into_iter()
            .flatten()
        {
            path.value = anchored(&path.value, file);
        }
        for host in group.spec.hosts.value.iter_mut() {
            if let Some(path) = &mut host.identity_file {
                path.value = anchored(&path.value, file);
            }
        }
    }
    for (name, site) in catalog.sites.iter_mut() {
        let file = &files[&(Kind::Site, name.clone())];
        if let Some(archive) = &mut site.spec.fetch.value.archive {
            archive.path.value = anchored(&archive.path.value, file);
        }
    }
}

/// Where `path` really leads: the part that exists with its symlinks resolved, then the
/// rest with `.` and `..` applied. Absolute (made so against the current directory).
pub fn resolve_existing(path: &Path) -> PathBuf {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut resolved = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                resolved.pop();
            }
            Component::Normal(part) => {
                let next = resolved.join(part);
                resolved = std::fs::canonicalize(&next).unwrap_or(next);
            }
        }
    }
    resolved
}

/// The archive path rules: relative = inside the manifest directory, absolute = under an
/// `--archive-root`, both after symlinks and `..` are resolved, with `{release}` replaced by
/// the site's release. Returns the directories the archive must stay inside (checked again
/// when it is packed, for other releases and for links created later).
fn check_archive_path(
    r: &mut Reporter,
    file: &Arc<str>,
    id: &str,
    path: &Located<String>,
    release: &str,
    manifest_root: Option<&Path>,
    archive_roots: &[PathBuf],
) -> Vec<PathBuf> {
    let field = "spec.fetch.archive.path";
    let written = path.value.replace("{release}", release);
    if path.starts_with('/') {
        let target = resolve_existing(Path::new(&written));
        if !archive_roots.iter().any(|root| target.starts_with(root)) {
            let given = if archive_roots.is_empty() {
                "none given".to_string()
            } else {
                let roots: Vec<String> = archive_roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect();
                format!("given: {}", roots.join(", "))
            };
            r.at(file, id, path.pos, field, format!(
                "invalid archive path `{}`: it resolves to `{}`, which is not under an archive root; an absolute archive path must lie under a directory given with --archive-root ({given})",
                path.value,
                target.display()
            ));
        }
        return archive_roots.to_vec();
    }
    let Some(root) = manifest_root else {
        return vec![];
    };
    let target = resolve_existing(&file_dir(file).join(&written));
    if !target.starts_with(root) {
        r.at(file, id, path.pos, field, format!(
            "invalid archive path `{}`: it resolves to `{}`, outside the manifest directory `{}`; a relative archive path must stay inside it (use an absolute path under an --archive-root for anything else)",
            path.value,
            target.display(),
            root.display()
        ));
    }
    vec![root.to_path_buf()]
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

// ---------------------------------------------------------------- value rules

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn check_name(r: &mut Reporter, file: &Arc<str>, id: &str, kind: Kind, name: &Located<String>) {
    let ok = match kind {
        Kind::Release => is_dns_subdomain(name),
        _ => is_dns_label(name),
    };
    if !ok {
        let rule = match kind {
            Kind::Release => {
                "a release id must be lowercase letters, digits, `-` and `.` (DNS-1123 subdomain, e.g. `r2026-11-24.1`)"
            }
            _ => {
                "a name must be lowercase letters, digits and `-`, start and end with a letter or digit, at most 63 characters (DNS-1123 label)"
            }
        };
        r.at(
            file,
            id,
            name.pos,
            "metadata.name",
            format!("invalid name `{}`: {rule}", name.value),
        );
    }
}

fn check_dns_label(
    r: &mut Reporter,
    file: &Arc<str>,
    id: &str,
    field: &str,
    value: &Located<String>,
    what: &str,
) {
    if !is_dns_label(value) {
        r.at(file, id, value.pos, field, format!("invalid {what} `{}`: use lowercase letters, digits and `-`, starting and ending with a letter or digit, at most 63 characters", value.value));
    }
}

fn check_labels(
    r: &mut Reporter,
    file: &Arc<str>,
    id: &str,
    field: &str,
    labels: &BTreeMap<String, Located<String>>,
) {
    // Kubernetes label syntax: `[prefix/]name`, name and value 1-63 of `[A-Za-z0-9._-]`,
    // starting and ending alphanumeric (a value may also be empty).
    fn is_label_name(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    }
    for (key, value) in labels {
        let key_ok = match key.split_once('/') {
            Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
            None => is_label_name(key),
        };
        if !key_ok {
            r.at(file, id, value.pos, format!("{field}.{key}"), format!("invalid label key `{key}`: use letters, digits, `-`, `_` and `.`, optionally after a `prefix/`"));
        }
        if !(value.is_empty() || is_label_name(value)) {
            r.at(file, id, value.pos, format!("{field}.{key}"), format!("invalid label value `{}`: at most 63 letters, digits, `-`, `_` and `.`, starting and ending with a letter or digit", value.value));
        }
    }
}

/// Characters allowed in paths that reach a remote shell: no quoting subtleties at all.
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | '@')
}

/// Why a path is not in normal form, if it is not (`//`, `.`, `..`, trailing `/`).
fn path_form_problem(path: &str) -> Option<&'static str> {
    let body = path.strip_prefix('/').unwrap_or(path);
    if body.split('/').any(|part| part == "." || part == "..") {
        return Some("it has a `.` or `..` component");
    }
    if body.split('/').any(|part| part.is_empty()) {
        return Some("it has an empty component (`//` or a trailing `/`)");
    }
    None
}

/// What is wrong with a path's characters or form, whether absolute or relative.
fn path_text_problem(path: &str) -> Option<String> {
    if let Some(bad) = path.chars().find(|c| !is_path_char(*c)) {
        return Some(format!(
            "character {bad:?} is not allowed (use letters, digits and `/._-+@`)"
        ));
    }
    path_form_problem(path).map(|p| format!("{p}; write it in normal form"))
}

fn check_absolute_path(
    r: &mut Reporter,
    file: &Arc<str>,
    id: &str,
    field: &str,
    path: &Located<String>,
) {
    let problem = if !path.starts_with('/') {
        Some("it must be absolute (start with `/`)".to_string())
    } else if path.value == "/" {
        Some("it cannot be `/` itself".to_string())
    } else {
        path_text_problem(path)
    };
    if let Some(problem) = problem {
        r.at(
            file,
            id,
            path.pos,
            field,
            format!("invalid path `{}`: {problem}", path.value),
        );
    }
}

fn check_relative_path(
    r: &mut Reporter,
    file: &Arc<str>,
    id: &str,
    field: &str,
    path: &Located<String>,
) {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    let problem = if path.starts_with('/') {
        Some("it must be relative to the release directory".to_string())
    } else if trimmed.is_empty() {
        Some("it is empty".to_string())
    } else {
        path_text_problem(trimmed)
    };
    if let Some(problem) = problem {
        r.at(
            file,
            id,
            path.pos,
            field,
            format!("invalid shared path `{}`: {problem}", path.value),
        );
    }
}

fn check_commands(
    r: &mut Reporter,
    file: &Arc<str>,
    id: &str,
    field: &str,
    commands: &[Located<String>],
) {
    for (i, command) in commands.iter().enumerate() {
        if command.trim().is_empty() {
            r.at(
                file,
                id,
                command.pos,
                format!("{field}[{i}]"),
                "empty command",
            );
        } else if command.contains('\0') {
            r.at(
                file,
                id,
                command.pos,
                format!("{field}[{i}]"),
                "a command cannot contain a NUL character",
            );
        }
    }
}

/// A value passed as one word to ssh or git: no leading `-` (it would become an option).
fn check_word(
    r: &mut Reporter,
    file: &Arc<str>,
    id: &str,
    field: &str,
    value: &Located<String>,
    what: &str,
    extra: &str,
) {
    let allowed = |c: char| {
        c.is_ascii_alphanumeric()
            || matches!(c, '.' | '_' | '-' | '/' | '~' | '+' | '@' | ':')
            || extra.contains(c)
    };
    if value.is_empty() {
        r.at(file, id, value.pos, field, format!("{what} is empty"));
    } else if value.starts_with('-') {
        r.at(
            file,
            id,
            value.pos,
            field,
            format!("invalid {what} `{}`: it cannot start with `-`", value.value),
        );
    } else if let Some(bad) = value.chars().find(|c| !allowed(*c)) {
        r.at(
            file,
            id,
            value.pos,
            field,
            format!(
                "invalid {what} `{}`: character {bad:?} is not allowed",
                value.value
            ),
        );
    }
}

fn check_revision(r: &mut Reporter, file: &Arc<str>, id: &str, revision: &Located<String>) {
    check_word(r, file, id, "spec.revision", revision, "revision", "");
    if revision.contains("..")
        || revision.contains(':')
        || revision.contains('~')
        || revision.ends_with(['/', '.'])
    {
        r.at(
            file,
            id,
            revision.pos,
            "spec.revision",
            format!(
                "invalid revision `{}`: not a valid git commit, tag or branch name",
                revision.value
            ),
        );
    }
}

fn check_group(r: &mut Reporter, file: &Arc<str>, id: &str, spec: &ServerGroupSpec) {
    if let Some(n) = &spec.max_parallel
        && n.value == 0
    {
        r.at(file, id, n.pos, "spec.maxParallel", "must be at least 1");
    }
    if spec.hosts.is_empty() {
        r.at(
            file,
            id,
            spec.hosts.pos,
            "spec.hosts",
            "a server group needs at least one host",
        );
    }
    let ssh = &spec.ssh;
    if let Some(user) = &ssh.user {
        check_word(r, file, id, "spec.ssh.user", user, "user", "");
    }
    if let Some(port) = &ssh.port
        && port.value == 0
    {
        r.at(
            file,
            id,
            port.pos,
            "spec.ssh.port",
            "port must be between 1 and 65535",
        );
    }
    if let Some(f) = &ssh.identity_file {
        check_word(r, file, id, "spec.ssh.identityFile", f, "identity file", "");
    }
    if let Some(f) = &ssh.config_file {
        check_word(r, file, id, "spec.ssh.configFile", f, "config file", "");
    }
    if let Some(t) = &ssh.connect_timeout
        && t.as_std() < std::time::Duration::from_secs(1)
    {
        r.at(
            file,
            id,
            t.pos,
            "spec.ssh.connectTimeout",
            "must be at least 1s (ssh counts whole seconds)",
        );
    }
}

fn check_host(r: &mut Reporter, file: &Arc<str>, id: &str, field: &str, host: &HostSpec) {
    check_dns_label(
        r,
        file,
        id,
        &format!("{field}.name"),
        &host.name,
        "host name",
    );
    let local = host.address.value == "local";
    if !local {
        check_word(
            r,
            file,
            id,
            &format!("{field}.address"),
            &host.address,
            "address",
            "[]",
        );
    }
    if let Some(port) = &host.port
        && port.value == 0
    {
        r.at(
            file,
            id,
            port.pos,
            format!("{field}.port"),
            "port must be between 1 and 65535",
        );
    }
    if let Some(user) = &host.user {
        check_word(r, file, id, &format!("{field}.user"), user, "user", "");
    }
    if let Some(f) = &host.identity_file {
        check_word(
            r,
            file,
            id,
            &format!("{field}.identityFile"),
            f,
            "identity file",
            "",
        );
    }
    if let Some(root) = &host.root {
        if local {
            check_absolute_path(r, file, id, &format!("{field}.root"), root);
        } else {
            r.at(
                file,
                id,
                root.pos,
                format!("{field}.root"),
                "`root` is only allowed for `address: local` hosts",
            );
        }
    }
    check_labels(r, file, id, &format!("{field}.labels"), &host.labels);
}

fn check_site_settings(r: &mut Reporter, file: &Arc<str>, id: &str, spec: &SiteSpec) {
    match (&spec.fetch.git, &spec.fetch.archive) {
        (Some(git), None) => check_word(
            r,
            file,
            id,
            "spec.fetch.git.repository",
            &git.repository,
            "repository",
            "%=",
        ),
        (None, Some(archive)) => check_word(
            r,
            file,
            id,
            "spec.fetch.archive.path",
            &archive.path,
            "archive path",
            "{}",
        ),
        _ => r.at(
            file,
            id,
            spec.fetch.pos,
            "spec.fetch",
            "set exactly one of `git` or `archive`",
        ),
    }
    check_commands(r, file, id, "spec.build", &spec.build);
    for (i, shared) in spec.shared.iter().enumerate() {
        check_relative_path(r, file, id, &format!("spec.shared[{i}]"), shared);
    }
    for (key, value) in &spec.env {
        let field = format!("spec.env.{key}");
        let valid_key = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key {
            r.at(file, id, value.pos, &field, format!("invalid variable name `{key}`: use letters, digits and `_`, not starting with a digit"));
        } else if key.starts_with("CONVOY_") {
            r.at(
                file,
                id,
                value.pos,
                &field,
                format!("`{key}` is reserved: convoy sets the CONVOY_* variables itself"),
            );
        }
        if value.contains('\0') {
            r.at(
                file,
                id,
                value.pos,
                &field,
                "a value cannot contain a NUL character",
            );
        }
    }
    if let Some(health) = &spec.health {
        if health.command.trim().is_empty() {
            r.at(
                file,
                id,
                health.command.pos,
                "spec.health.command",
                "empty command",
            );
        }
        if health.timeout.as_std().is_zero() {
            r.at(
                file,
                id,
                health.command.pos,
                "spec.health.timeout",
                "must be greater than 0s",
            );
        }
    }
    let rollout = &spec.rollout;
    if rollout.max_parallel.value == 0 {
        r.at(
            file,
            id,
            rollout.max_parallel.pos,
            "spec.rollout.maxParallel",
            "must be at least 1",
        );
    }
    if rollout.failure_retries.value == 0 {
        r.at(
            file,
            id,
            rollout.failure_retries.pos,
            "spec.rollout.failureRetries",
            "must be at least 1",
        );
    }
    if let Some(max_failed) = &rollout.max_failed {
        r.at(file, id, max_failed.pos, "spec.rollout.maxFailed", "not supported yet: convoy cannot honour a failure budget, so it refuses the setting rather than ignore it");
    }
    if spec.keep_releases.value < 2 {
        r.at(
            file,
            id,
            spec.keep_releases.pos,
            "spec.keepReleases",
            format!(
                "must be at least 2 (got {}): the previous release must stay for rollback",
                spec.keep_releases.value
            ),
        );
    }
    if let Some(depends_on) = &spec.depends_on {
        r.at(file, id, depends_on.pos, "spec.dependsOn", "not supported yet: convoy cannot order sites, so it refuses the setting rather than ignore it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "web1", "jobs-manager", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64), "ü"] {
            assert!(!is_dns_label(bad), "{bad}");
        }
        assert!(is_dns_subdomain("r2026-11-24.1"));
        assert!(!is_dns_subdomain("r1..2"));
        assert!(!is_dns_subdomain(".r1"));
    }

    #[test]
    fn site_paths_overlap_by_components_not_by_text() {
        assert!(path_overlap("/srv/app", "/srv/app", "a", "h").is_some());
        assert!(path_overlap("/srv/app/releases/legacy", "/srv/app", "a", "h").is_some());
        assert!(path_overlap("/srv/app", "/srv/app/releases/legacy", "a", "h").is_some());
        assert_eq!(path_overlap("/srv/app2", "/srv/app", "a", "h"), None);
        assert_eq!(path_overlap("/srv/app", "/srv/app2", "a", "h"), None);
        assert_eq!(path_overlap("/srv/a", "/srv/b", "a", "h"), None);
    }

    #[test]
    fn path_normal_form() {
        assert_eq!(path_form_problem("/srv/app"), None);
        assert_eq!(
            path_form_problem("media/"),
            Some("it has an empty component (`//` or a trailing `/`)")
        );
        assert_eq!(
            path_form_problem("/srv/./app"),
            Some("it has a `.` or `..` component")
        );
        assert_eq!(
            path_form_problem("/srv//app"),
            Some("it has an empty component (`//` or a trailing `/`)")
        );
    }

    proptest! {
        /// Whatever passes the path rules contains nothing a shell would interpret.
        #[test]
        fn accepted_paths_are_shell_inert(path in "/[a-zA-Z0-9 ./_$;`'\"\\-]{1,20}") {
            let mut r = Reporter { diagnostics: vec![] };
            let file: Arc<str> = Arc::from("f.yaml");
            check_absolute_path(&mut r, &file, "Site/x", "spec.path", &Located::new(path.clone(), Pos::default()));
            if r.diagnostics.is_empty() {
                prop_assert!(path.chars().all(is_path_char));
                prop_assert!(!path.contains("..") || path.split('/').all(|p| p != ".."));
            }
        }
    }
}
