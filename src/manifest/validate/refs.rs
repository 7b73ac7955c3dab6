//! References between objects by name: a Release's Site, a Site's Release, a stage's
//! ServerGroup. Which objects exist (and which were named but broken), how a Release is
//! found within its site, and the "not defined" message with a "did you mean" and, when
//! `-f` named one file, the reminder that no other file was read. Reports, never fixes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{Catalog, Reporter, place};
use crate::manifest::load::AnyObject;
use crate::manifest::located::Located;
use crate::manifest::suggest::closest;
use crate::manifest::types::Kind;

/// How objects are told apart. A Release's name is scoped to its site (`scope` is the site,
/// as a namespace is in Kubernetes: two sites may both have `r2026-11-28.1`); every other
/// kind is named fleet-wide (`scope` is empty).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub scope: String,
    pub name: String,
}

impl ObjectKey {
    /// A Site, ServerGroup or Notification.
    pub fn named(kind: Kind, name: &str) -> Self {
        ObjectKey {
            kind,
            scope: String::new(),
            name: name.to_string(),
        }
    }

    /// Release `name` of Site `site`.
    pub fn release(site: &str, name: &str) -> Self {
        ObjectKey {
            kind: Kind::Release,
            scope: site.to_string(),
            name: name.to_string(),
        }
    }

    pub(super) fn of(object: &AnyObject) -> Self {
        let name = &object.metadata().name.value;
        match object {
            AnyObject::Release(release) => ObjectKey::release(&release.spec.site, name),
            other => ObjectKey::named(other.kind(), name),
        }
    }
}

/// Which file defines each object, which objects were named but failed to parse, and
/// whether references could only be looked up in one file.
pub(super) struct Index<'a> {
    pub files: &'a BTreeMap<ObjectKey, Arc<str>>,
    /// Kind and name only: a broken Release's site may be unreadable, so a reference to a
    /// release of that name from any site is not reported again.
    pub broken: &'a BTreeSet<(Kind, String)>,
    /// `-f` named one file: nothing outside it was read.
    pub single_file: bool,
}

impl Index<'_> {
    /// The file of an object known to be in the catalog.
    pub fn file_of(&self, key: &ObjectKey) -> Arc<str> {
        self.files[key].clone()
    }

    /// Whether the object exists, even if broken: a reference to it is not reported again.
    pub fn exists(&self, key: &ObjectKey) -> bool {
        self.files.contains_key(key) || self.broken.contains(&(key.kind, key.name.clone()))
    }

    /// "`Kind` `name` is not defined", with the closest of `candidates` if one looks like the
    /// intended name, and where convoy looked when that was a single file.
    pub fn not_defined<'c>(
        &self,
        kind: Kind,
        name: &str,
        candidates: impl IntoIterator<Item = &'c str>,
    ) -> String {
        let mut message = format!("{} `{name}` is not defined", kind.as_str());
        if self.single_file {
            message.push_str(" in this file");
        }
        if let Some(close) = closest(name, candidates) {
            message.push_str(&format!("; did you mean `{close}`?"));
        }
        if self.single_file {
            message.push_str(
                " (`-f` named a single file, so no other file was read: pass the manifest directory to look in all of them)",
            );
        }
        message
    }
}

/// Every Release names an existing Site and a usable revision.
pub(super) fn check_releases(r: &mut Reporter, catalog: &Catalog, index: &Index) {
    for ((site, name), release) in &catalog.releases {
        let file = index.file_of(&ObjectKey::release(site, name));
        let id = format!("Release/{name}");
        let site = &release.spec.site;
        if !index.exists(&ObjectKey::named(Kind::Site, site)) {
            let sites = catalog.sites.keys().map(String::as_str);
            let message = index.not_defined(Kind::Site, site, sites);
            r.at(&file, &id, site.pos, "spec.site", message);
        }
        super::fields::check_revision(r, &file, &id, &release.spec.revision);
    }
}

/// A Site's `spec.release` names one of that site's Releases (unless broken).
pub(super) fn check_release_of(
    r: &mut Reporter,
    site: &super::SiteRef,
    catalog: &Catalog,
    index: &Index,
) {
    let release: &Located<String> = &site.spec.release;
    if catalog
        .releases
        .contains_key(&(site.name.to_string(), release.value.clone()))
        || index
            .broken
            .contains(&(Kind::Release, release.value.clone()))
    {
        return;
    }
    let elsewhere = catalog
        .releases
        .iter()
        .find(|((_, name), _)| *name == release.value);
    let message = match elsewhere {
        Some(((owner, name), _)) => format!(
            "this site has no Release `{name}`: the Release `{name}` at {} belongs to Site `{owner}` (a Release serves the site its `spec.site` names)",
            place(
                &index.file_of(&ObjectKey::release(owner, name)),
                catalog.releases[&(owner.clone(), name.clone())]
                    .metadata
                    .name
                    .pos
            ),
        ),
        None => {
            let own = catalog
                .releases
                .keys()
                .filter(|(owner, _)| owner == site.name)
                .map(|(_, name)| name.as_str());
            index.not_defined(Kind::Release, release, own)
        }
    };
    r.at(&site.file, &site.id, release.pos, "spec.release", message);
}
