//! The archive a build uploads: the operator's `.tar.gz` as is, or a directory packed once
//! per build round into a private temporary file. Streamed from disk to every host, so
//! memory stays flat whatever its size.

/// An archive ready to upload, on disk: each host's upload streams it from the file, so
/// memory stays flat whatever its size and however many hosts receive it.
pub enum Archive {
    /// The operator's `.tar.gz`, as is.
    Given(std::path::PathBuf),
    /// A directory packed once for this build round; removed when dropped.
    Packed(std::path::PathBuf),
}

impl Archive {
    pub fn path(&self) -> &std::path::Path {
        match self {
            Archive::Given(path) | Archive::Packed(path) => path,
        }
    }
}

impl Drop for Archive {
    fn drop(&mut self) {
        if let Archive::Packed(path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The archive to upload: a `.tar.gz` file as is, or a directory packed with `tar` into a
/// private temporary file (`$TMPDIR`), once for all hosts.
/// `{release}` in the path is replaced by the release id. The path must still resolve inside
/// one of `roots` (a link made after validation must not ship the controller's own files).
pub async fn pack_archive(
    path: &str,
    roots: &[std::path::PathBuf],
    release: &str,
) -> Result<Archive, String> {
    let path = path.replace("{release}", release);
    let target = crate::manifest::validate::resolve_existing(std::path::Path::new(&path));
    if !roots.iter().any(|root| target.starts_with(root)) {
        return Err(format!(
            "refused to upload archive `{path}`: it resolves to `{}`, outside the directories archives may come from",
            target.display()
        ));
    }
    let meta = tokio::fs::metadata(&target)
        .await
        .map_err(|e| format!("failed to read archive `{path}`: {e}"))?;
    if meta.is_file() {
        // The resolved path, so a link swapped after the check cannot redirect the upload.
        return Ok(Archive::Given(target));
    }
    use std::os::unix::fs::OpenOptionsExt;
    static PACKED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let file_name = format!(
        "convoy-archive-{}-{}-{}.tar.gz",
        std::process::id(),
        PACKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let temp = std::env::temp_dir().join(file_name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(|e| {
            format!(
                "failed to create `{}` to pack `{path}`: {e}",
                temp.display()
            )
        })?;
    // From here on, the guard removes the file whatever happens.
    let archive = Archive::Packed(temp);
    let out = tokio::process::Command::new("tar")
        .arg("-C")
        .arg(&target)
        .args(["-czf", "-", "."])
        .stdout(file)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        // Not `output()`: tokio's would replace the file with a pipe on stdout.
        .spawn()
        .map_err(|e| format!("failed to run tar on `{path}`: {e}"))?
        .wait_with_output()
        .await
        .map_err(|e| format!("failed to run tar on `{path}`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "failed to pack `{path}`: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(archive)
}
