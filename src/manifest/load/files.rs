//! Finding and reading manifest files. Reading is bounded: only regular files are read (a
//! symlink to `/dev/zero` or a FIFO is an error, never a hang), symlinks must stay inside
//! the manifest root, and a file may hold at most [`MAX_FILE_BYTES`]. The daemon reads
//! manifests on its control loop, so a read that could block or grow without bound would
//! stall every site. Parsing is `mod.rs`'s.

use std::fs;
use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use super::{Loaded, parse_file_into};
use crate::manifest::diagnostic::Diagnostic;

/// Largest manifest file convoy reads: far above any real manifest, small enough that a
/// runaway file cannot exhaust the controller's memory.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Why one file could not be read.
enum ReadError {
    /// The file is not something convoy reads (special file, too large, link out of root).
    Refused(String),
    /// The read itself failed: may succeed later.
    Io(std::io::Error),
}

/// Reads every `.yaml`/`.yml` file under `root` (or `root` itself if it is a file).
/// Hidden files and folders (`.git`) are skipped; files are read in sorted order.
pub fn load_path(root: &Path) -> Loaded {
    let mut loaded = Loaded {
        root: Some(manifest_dir(root)),
        ..Loaded::default()
    };
    let Some((mut files, inside)) = find_files(root, &mut loaded) else {
        return loaded;
    };
    files.sort();
    if files.is_empty() && loaded.diagnostics.is_empty() {
        loaded.diagnostics.push(Diagnostic::file_level(
            &root.display().to_string(),
            "no manifests found (looked for *.yaml and *.yml files, recursively)",
        ));
    }
    for file in files {
        let shown = file.display().to_string();
        loaded.files += 1;
        match read_manifest(&file, inside.as_deref()) {
            Ok(bytes) => parse_file_into(&shown, &bytes, &mut loaded),
            Err(ReadError::Refused(why)) => loaded.diagnostics.push(Diagnostic::file_level(
                &shown,
                format!("failed to read manifest: {why}"),
            )),
            Err(ReadError::Io(e)) => {
                loaded.unreadable += 1;
                loaded.diagnostics.push(Diagnostic::file_level(
                    &shown,
                    format!("failed to read manifest: {e}"),
                ));
            }
        }
    }
    loaded
}

/// The manifest directory `-f ROOT` names: ROOT itself, or the folder of a single file.
fn manifest_dir(root: &Path) -> PathBuf {
    if root.is_file() {
        match root.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        }
    } else {
        root.to_path_buf()
    }
}

/// The manifest files `root` stands for, with the canonical directory their symlinks must
/// resolve into (none for a single file). `None` when there is nothing to read at all;
/// every problem is reported in `loaded`.
fn find_files(root: &Path, loaded: &mut Loaded) -> Option<(Vec<PathBuf>, Option<PathBuf>)> {
    let shown = root.display().to_string();
    let meta = match fs::metadata(root) {
        Ok(meta) => meta,
        Err(e) => {
            loaded.unreadable += 1;
            loaded.diagnostics.push(Diagnostic::file_level(
                &shown,
                format!("failed to read manifests: {e}"),
            ));
            return None;
        }
    };
    let mut files = Vec::new();
    // Symlinks under a manifest directory must resolve inside it; a single file named by
    // the operator is trusted wherever it points (it is still read with the same bounds).
    let mut inside = None;
    if meta.is_file() {
        loaded.single_file = true;
        files.push(root.to_path_buf());
    } else if !meta.is_dir() {
        loaded.diagnostics.push(Diagnostic::file_level(
            &shown,
            format!(
                "failed to read manifests: not a regular file or directory (a {})",
                kind_of(&meta.file_type())
            ),
        ));
        return None;
    } else if let Err((path, e)) = collect_yaml_files(root, &mut files) {
        loaded.unreadable += 1;
        loaded.diagnostics.push(Diagnostic::file_level(
            &path.display().to_string(),
            format!("failed to read manifest directory: {e}"),
        ));
    } else {
        match fs::canonicalize(root) {
            Ok(canonical) => inside = Some(canonical),
            Err(e) => {
                loaded.unreadable += 1;
                loaded.diagnostics.push(Diagnostic::file_level(
                    &shown,
                    format!("failed to read manifest directory: {e}"),
                ));
                return None;
            }
        }
    }
    Some((files, inside))
}

/// Reads one manifest file with every bound applied. `root`: the canonical manifest
/// directory a symlink must resolve into, if any.
fn read_manifest(file: &Path, root: Option<&Path>) -> Result<Vec<u8>, ReadError> {
    if let Some(root) = root {
        let link = fs::symlink_metadata(file).map_err(ReadError::Io)?;
        if link.file_type().is_symlink() {
            let target = fs::canonicalize(file).map_err(ReadError::Io)?;
            if !target.starts_with(root) {
                return Err(ReadError::Refused(format!(
                    "it is a symlink to `{}`, outside the manifest directory `{}`; only links that stay inside it are followed",
                    target.display(),
                    root.display()
                )));
            }
        }
    }
    // Checked before opening: opening a device or FIFO can block or have side effects.
    let meta = fs::metadata(file).map_err(ReadError::Io)?;
    check_regular(&meta)?;
    // O_NONBLOCK: if a FIFO is swapped in between the check and the open, the open
    // returns at once instead of waiting for a writer; the fstat below then refuses it.
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(file)
        .map_err(ReadError::Io)?;
    check_regular(&opened.metadata().map_err(ReadError::Io)?)?;
    let mut bytes = Vec::new();
    opened
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    Ok(bytes)
}

fn check_regular(meta: &fs::Metadata) -> Result<(), ReadError> {
    if !meta.is_file() {
        return Err(ReadError::Refused(format!(
            "not a regular file (a {}); manifests must be regular files",
            kind_of(&meta.file_type())
        )));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    Ok(())
}

fn too_large() -> ReadError {
    ReadError::Refused(format!(
        "file is larger than the limit of {} MiB for one manifest file; split it",
        MAX_FILE_BYTES / (1024 * 1024)
    ))
}

/// What a non-regular file is, in words.
fn kind_of(file_type: &fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "directory"
    } else if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_block_device() {
        "block device"
    } else if file_type.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

fn collect_yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), (PathBuf, std::io::Error)> {
    let entries = fs::read_dir(dir).map_err(|e| (dir.to_path_buf(), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| (dir.to_path_buf(), e))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        // file_type() does not follow symlinks, so a symlinked folder cannot loop us.
        let file_type = entry.file_type().map_err(|e| (path.clone(), e))?;
        if file_type.is_dir() {
            collect_yaml_files(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
    Ok(())
}
