//! The desired state: manifest types, loading with located errors, validation, CRDs.
//! Nothing here touches a host; an invalid desired state stops at this module.

pub mod crd;
pub mod diagnostic;
pub mod duration;
pub mod load;
pub mod located;
pub mod schema;
pub mod suggest;
pub mod types;
pub mod validate;

use std::path::{Path, PathBuf};

pub use diagnostic::{Diagnostic, Diagnostics};
pub use duration::Duration;
pub use located::{Located, Pos};
pub use validate::Catalog;

/// What the operator allows beyond the manifests themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Directories an absolute `fetch.archive.path` may lie under (`--archive-root`). A
    /// relative one must stay inside the manifest directory; anything else could ship
    /// controller files (the state dir, SSH keys) to the hosts.
    pub archive_roots: Vec<PathBuf>,
}

/// Loads and validates every manifest under `path` (a directory or one file).
pub fn load(path: &Path) -> Result<Catalog, Diagnostics> {
    load_with(path, &LoadOptions::default())
}

/// [`load`] with the operator's allowances.
pub fn load_with(path: &Path, options: &LoadOptions) -> Result<Catalog, Diagnostics> {
    load_classified(path, options).map_err(|e| e.diagnostics)
}

/// Why the manifests could not be loaded.
#[derive(Debug)]
pub struct LoadFailure {
    pub diagnostics: Diagnostics,
    /// Some file or folder could not be read (an I/O error such as "Too many open files",
    /// not wrong content): the same manifests may load when read again.
    pub read_failed: bool,
}

/// [`load_with`], telling read failures (worth retrying) from invalid content.
pub fn load_classified(path: &Path, options: &LoadOptions) -> Result<Catalog, LoadFailure> {
    let loaded = load::load_path(path);
    let read_failed = loaded.unreadable > 0;
    validate::validate(loaded, options).map_err(|diagnostics| LoadFailure {
        diagnostics,
        read_failed,
    })
}
