//! Paths in manifests, where they lead: site paths on one host must not overlap; paths on
//! the controller are taken from the manifest file's directory, and an archive must resolve
//! inside the manifest directory or under an `--archive-root`. Reads the filesystem (to
//! resolve symlinks), writes nothing.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::{Catalog, ObjectKey, Reporter};
use crate::manifest::located::Located;
use crate::manifest::types::Kind;

/// Why `path` cannot be used on `host` next to site `other` at `other_path`: equal or
/// nested paths, compared by components (`/srv/app` and `/srv/app2` do not overlap).
pub(super) fn path_overlap(
    path: &str,
    other_path: &str,
    other: &str,
    host: &str,
) -> Option<String> {
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

/// The directory of the manifest file `file`, absolute: what relative paths in it mean.
pub(super) fn file_dir(file: &str) -> PathBuf {
    let dir = match Path::new(file).parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// A controller-side path as written in `file`: `~/` and absolute paths stay as they are,
/// a relative one is taken from the file's directory.
pub(super) fn anchored(value: &str, file: &str) -> String {
    if value.starts_with('/') || value.starts_with("~/") || value == "~" {
        value.to_string()
    } else {
        file_dir(file).join(value).display().to_string()
    }
}

/// Rewrites the relative controller-side paths of a valid catalog to absolute ones.
pub(super) fn anchor_paths(catalog: &mut Catalog, files: &BTreeMap<ObjectKey, Arc<str>>) {
    for (name, group) in catalog.groups.iter_mut() {
        let file = &files[&ObjectKey::named(Kind::ServerGroup, name)];
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
        let file = &files[&ObjectKey::named(Kind::Site, name)];
        if let Some(archive) = &mut site.spec.fetch.value.archive {
            archive.path.value = anchored(&archive.path.value, file);
        }
    }
    for (name, notification) in catalog.notifications.iter_mut() {
        let file = &files[&ObjectKey::named(Kind::Notification, name)];
        if let Some(path) = &mut notification.spec.webhook.url_from.value.file {
            path.value = anchored(&path.value, file);
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

/// An archive path with `{site}` filled in. Release names are scoped to their site, so two
/// sites' archives kept in one folder are told apart by `{site}`; it is fixed per site,
/// and only `{release}` is left for the engine to fill.
pub fn archive_path_of_site(path: &str, site: &str) -> String {
    path.replace("{site}", site)
}

/// The archive path rules: relative = inside the manifest directory, absolute = under an
/// `--archive-root`, both after symlinks and `..` are resolved, checked on `written` (the
/// path with `{site}` and `{release}` filled in for the site's release). Returns the
/// directories the archive must stay inside (checked again when it is packed, for other
/// releases and for links created later).
pub(super) fn check_archive_path(
    r: &mut Reporter,
    file: &Arc<str>,
    id: &str,
    path: &Located<String>,
    written: &str,
    manifest_root: Option<&Path>,
    archive_roots: &[PathBuf],
) -> Vec<PathBuf> {
    let field = "spec.fetch.archive.path";
    if path.starts_with('/') {
        let target = resolve_existing(Path::new(written));
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
    let target = resolve_existing(&file_dir(file).join(written));
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
