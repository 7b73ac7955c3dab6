//! `convoy validate` and `convoy crds`: the commands that only read manifests (or the types
//! behind them). Nothing here touches the state dir or a host.

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;

use super::load;
use crate::exit_code;
use crate::manifest::{LoadOptions, crd, types::Kind};

pub(super) fn validate(
    path: &Path,
    archive_roots: &[std::path::PathBuf],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    let options = LoadOptions {
        archive_roots: archive_roots.to_vec(),
    };
    let Some(catalog) = load(path, &options, err)? else {
        return Ok(exit_code::INVALID);
    };
    writeln!(out, "{}: valid", catalog.summary())?;
    Ok(exit_code::OK)
}

pub(super) fn crds(out_dir: Option<&Path>, out: &mut dyn Write) -> anyhow::Result<u8> {
    match out_dir {
        None => out.write_all(crd::all_yaml().as_bytes())?,
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("failed to create `{}`", dir.display()))?;
            for kind in Kind::ALL {
                let path = dir.join(crd::file_name(kind));
                std::fs::write(&path, crd::to_yaml(kind))
                    .with_context(|| format!("failed to write `{}`", path.display()))?;
            }
        }
    }
    Ok(exit_code::OK)
}
