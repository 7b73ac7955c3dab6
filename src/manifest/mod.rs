//! The desired state: manifest types, loading with located errors, validation, CRDs.
//! Nothing here touches a host; an invalid desired state stops at this module.

pub mod crd;
pub mod diagnostic;
pub mod duration;
pub mod load;
pub mod located;
pub mod types;
pub mod validate;

use std::path::Path;

pub use diagnostic::{Diagnostic, Diagnostics};
pub use duration::Duration;
pub use located::{Located, Pos};
pub use validate::Catalog;

/// Loads and validates every manifest under `path` (a directory or one file).
pub fn load(path: &Path) -> Result<Catalog, Diagnostics> {
    validate::validate(load::load_path(path))
}
