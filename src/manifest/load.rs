//! Reading manifests from disk: files, `---`-separated documents, kinds, and located
//! parse errors. Each document is parsed on its own, so one broken document never hides
//! the problems of the others. Cross-object rules are `validate`'s job, not this one's.
//!
//! Reading is bounded: only regular files are read (a symlink to `/dev/zero` or a FIFO is an
//! error, never a hang), symlinks must stay inside the manifest root, and a file may hold at
//! most [`MAX_FILE_BYTES`]. The daemon reads manifests on its control loop, so a read that
//! could block or grow without bound would stall every site.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_saphyr::MessageFormatter;

use super::diagnostic::Diagnostic;
use super::located::{Located, Pos, with_line_offset};
use super::types::*;

/// One parsed manifest object of any kind.
#[derive(Debug, Clone)]
pub enum AnyObject {
    Site(Box<Object<SiteSpec>>),
    ServerGroup(Object<ServerGroupSpec>),
    Release(Object<ReleaseSpec>),
    Notification(Object<NotificationSpec>),
}

impl AnyObject {
    pub fn kind(&self) -> Kind {
        match self {
            AnyObject::Site(_) => Kind::Site,
            AnyObject::ServerGroup(_) => Kind::ServerGroup,
            AnyObject::Release(_) => Kind::Release,
            AnyObject::Notification(_) => Kind::Notification,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            AnyObject::Site(o) => &o.metadata,
            AnyObject::ServerGroup(o) => &o.metadata,
            AnyObject::Release(o) => &o.metadata,
            AnyObject::Notification(o) => &o.metadata,
        }
    }
}

/// An object and the file it came from.
#[derive(Debug, Clone)]
pub struct Sourced {
    pub file: Arc<str>,
    pub object: AnyObject,
}

/// Everything read from a manifest directory, valid or not.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The manifest directory (`-f`, or the folder of a single `-f` file): relative paths
    /// in manifests may not lead out of it. `None` when parsed from memory.
    pub root: Option<PathBuf>,
    pub files: usize,
    pub objects: Vec<Sourced>,
    /// Objects whose header named them but whose body failed to parse: references to them
    /// are not reported again as "not found".
    pub broken: BTreeSet<(Kind, String)>,
    pub diagnostics: Vec<Diagnostic>,
    /// Files or folders that could not be read because of an I/O error (too many open
    /// files, a dangling link, a file that vanished mid-read), as opposed to content that is
    /// wrong: reading again later may succeed without anyone changing the manifests.
    pub unreadable: usize,
}

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
    let mut loaded = Loaded::default();
    let shown = root.display().to_string();
    loaded.root = Some(if root.is_file() {
        match root.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        }
    } else {
        root.to_path_buf()
    });
    let meta = match fs::metadata(root) {
        Ok(meta) => meta,
        Err(e) => {
            loaded.unreadable += 1;
            loaded.diagnostics.push(Diagnostic::file_level(
                &shown,
                format!("failed to read manifests: {e}"),
            ));
            return loaded;
        }
    };
    let mut files = Vec::new();
    // Symlinks under a manifest directory must resolve inside it; a single file named by
    // the operator is trusted wherever it points (it is still read with the same bounds).
    let mut inside = None;
    if meta.is_file() {
        files.push(root.to_path_buf());
    } else if !meta.is_dir() {
        loaded.diagnostics.push(Diagnostic::file_level(
            &shown,
            format!(
                "failed to read manifests: not a regular file or directory (a {})",
                kind_of(&meta.file_type())
            ),
        ));
        return loaded;
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
                return loaded;
            }
        }
    }
    files.sort();
    if files.is_empty() && loaded.diagnostics.is_empty() {
        loaded.diagnostics.push(Diagnostic::file_level(
            &shown,
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

/// Parses the bytes of one file (shown to the operator as `file`). Never panics.
pub fn parse_file_into(file: &str, bytes: &[u8], loaded: &mut Loaded) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        loaded
            .diagnostics
            .push(Diagnostic::file_level(file, "file is not valid UTF-8"));
        return;
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let file: Arc<str> = Arc::from(file);
    let mut documents = 0;
    for chunk in split_documents(text) {
        if chunk.is_blank() {
            continue;
        }
        documents += 1;
        parse_document(&file, &chunk, loaded);
    }
    if documents == 0 {
        loaded.diagnostics.push(Diagnostic::file_level(
            &file,
            "file holds no manifest (it is empty or only comments); remove it or add a document",
        ));
    }
}

/// A `---`-separated document and the 1-based line it starts on in its file.
struct Chunk {
    first_line: u32,
    text: String,
}

impl Chunk {
    fn is_blank(&self) -> bool {
        self.text.lines().all(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#') || is_marker(l, "---") || is_marker(l, "...")
        })
    }

    /// Converts a position inside the chunk to one inside the file.
    fn pos(&self, line: u64, column: u64) -> Pos {
        if line == 0 {
            return self.start();
        }
        Pos::new(self.first_line + line as u32 - 1, column as u32)
    }

    /// The first line with content: where "missing field" errors point.
    fn start(&self) -> Pos {
        let offset = self
            .text
            .lines()
            .position(|l| {
                let t = l.trim();
                !(t.is_empty() || t.starts_with('#') || is_marker(l, "---"))
            })
            .unwrap_or(0);
        Pos::new(self.first_line + offset as u32, 1)
    }
}

/// A line that is exactly a YAML document marker, maybe followed by a comment.
fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

/// Splits a YAML stream at `---` lines. A `---` in column 0 always starts a new document in
/// YAML (even inside a block scalar), so this split agrees with the parser's.
fn split_documents(text: &str) -> Vec<Chunk> {
    let mut chunks = vec![Chunk {
        first_line: 1,
        text: String::new(),
    }];
    for (index, line) in text.lines().enumerate() {
        if is_marker(line, "---") && index > 0 {
            chunks.push(Chunk {
                first_line: index as u32 + 1,
                text: String::new(),
            });
        }
        let chunk = chunks.last_mut().expect("never empty");
        chunk.text.push_str(line);
        chunk.text.push('\n');
    }
    chunks
}

/// Best-effort `kind` and `metadata.name` of a document the parser rejected, read line by
/// line, so that references to it are not reported a second time as "not defined".
fn guess_identity(text: &str) -> Option<(Kind, String)> {
    let word = |s: &str| s.trim().trim_matches(['"', '\'']).to_string();
    let mut kind = None;
    let mut name = None;
    let mut in_metadata = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("kind:") {
            kind = Kind::parse(&word(rest));
        } else if let Some(rest) = line.strip_prefix("metadata:") {
            in_metadata = true;
            if let Some(inline) = rest.split("name:").nth(1) {
                name = Some(word(inline.split([',', '}']).next().unwrap_or("")));
            }
        } else if in_metadata && line.starts_with([' ', '\t']) {
            if let Some(rest) = line.trim_start().strip_prefix("name:") {
                name.get_or_insert_with(|| word(rest));
            }
        } else if !line.trim().is_empty() {
            in_metadata = false;
        }
    }
    Some((kind?, name?))
}

/// Just enough of a document to know what it is, read leniently.
#[derive(Deserialize)]
struct Header {
    #[serde(rename = "apiVersion")]
    api_version: Option<Located<String>>,
    kind: Option<Located<String>>,
    metadata: Option<HeaderMeta>,
}

#[derive(Deserialize)]
struct HeaderMeta {
    name: Option<String>,
}

fn parse_document(file: &Arc<str>, chunk: &Chunk, loaded: &mut Loaded) {
    let diag =
        |pos: Pos, object: Option<String>, field: Option<String>, message: String| Diagnostic {
            file: file.to_string(),
            pos,
            object,
            field,
            message,
        };
    let header: Header = match parse_tracked(chunk) {
        Ok(header) => header,
        Err(e) => {
            // Only the envelope fields are meaningful paths here; anything else was a syntax
            // error that happened to occur under some key.
            let field = e.field.filter(|f| {
                ["apiVersion", "kind", "metadata"]
                    .iter()
                    .any(|k| f.starts_with(k))
            });
            loaded.diagnostics.push(diag(e.pos, None, field, e.message));
            if let Some(identity) = guess_identity(&chunk.text) {
                loaded.broken.insert(identity);
            }
            return;
        }
    };
    let name = header.metadata.and_then(|m| m.name);
    let Some(api_version) = header.api_version else {
        let message = "missing field `apiVersion` (expected `convoy.dev/v1alpha1`)".into();
        loaded
            .diagnostics
            .push(diag(chunk.start(), None, None, message));
        return;
    };
    if api_version.value != API_VERSION {
        if let (Some(kind), Some(name)) = (header.kind.as_ref().and_then(|k| Kind::parse(k)), &name)
        {
            loaded.broken.insert((kind, name.clone()));
        }
        let message = format!(
            "unsupported apiVersion `{}`: this convoy understands `{API_VERSION}`",
            api_version.value
        );
        loaded.diagnostics.push(diag(
            api_version.pos,
            None,
            Some("apiVersion".into()),
            message,
        ));
        return;
    }
    let Some(kind_text) = header.kind else {
        let message =
            "missing field `kind` (one of Site, ServerGroup, Release, Notification)".into();
        loaded
            .diagnostics
            .push(diag(chunk.start(), None, None, message));
        return;
    };
    let Some(kind) = Kind::parse(&kind_text) else {
        let message = format!(
            "unknown kind `{}`: expected one of Site, ServerGroup, Release, Notification",
            kind_text.value
        );
        loaded
            .diagnostics
            .push(diag(kind_text.pos, None, Some("kind".into()), message));
        return;
    };
    let object = match kind {
        Kind::Site => parse_tracked(chunk).map(|o| AnyObject::Site(Box::new(o))),
        Kind::ServerGroup => parse_tracked(chunk).map(AnyObject::ServerGroup),
        Kind::Release => parse_tracked(chunk).map(AnyObject::Release),
        Kind::Notification => parse_tracked(chunk).map(AnyObject::Notification),
    };
    match object {
        Ok(object) => loaded.objects.push(Sourced {
            file: file.clone(),
            object,
        }),
        Err(e) => {
            let object = name.as_ref().map(|n| format!("{}/{n}", kind.as_str()));
            loaded
                .diagnostics
                .push(diag(e.pos, object, e.field, e.message));
            if let Some(name) = name {
                loaded.broken.insert((kind, name));
            }
        }
    }
}

struct ParseError {
    pos: Pos,
    field: Option<String>,
    message: String,
}

fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    options
}

/// Deserializes a chunk, remembering the field path where a failure happened.
fn parse_tracked<T: DeserializeOwned>(chunk: &Chunk) -> Result<T, ParseError> {
    let mut track = serde_path_to_error::Track::new();
    let result = with_line_offset(chunk.first_line - 1, || {
        serde_saphyr::with_deserializer_from_str_with_options(&chunk.text, yaml_options(), |de| {
            T::deserialize(serde_path_to_error::Deserializer::new(de, &mut track))
        })
    });
    result.map_err(|e| {
        // `Located` reads through serde-saphyr's `Spanned`, whose inner field is `value`.
        let path = track
            .path()
            .to_string()
            .replace(".value.", ".")
            .replace(".value[", "[");
        let path = path.strip_suffix(".value").unwrap_or(&path).to_string();
        let pos = match e.location() {
            Some(at) => chunk.pos(at.line(), at.column()),
            None => chunk.start(),
        };
        let message = serde_saphyr::DefaultMessageFormatter.format_message(e.without_snippet());
        ParseError {
            pos,
            field: (path != "." && !path.is_empty()).then_some(path),
            message: sanitize(&humanize(&message)),
        }
    })
}

/// Control characters from hostile input must never reach the operator's terminal.
pub(crate) fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Rewords the parser's terse messages into what an operator needs to hear.
fn humanize(message: &str) -> String {
    let fixed = match message {
        "invalid u8" => "expected a whole number from 0 to 255",
        "invalid u16" => "expected a whole number from 0 to 65535",
        "invalid u32" => "expected a whole number from 0 to 4294967295",
        "invalid u64" => "expected a whole number of 0 or more",
        "invalid boolean" => "expected `true` or `false`",
        "expected sequence start" => "expected a list",
        "expected mapping start" => "expected a mapping of `key: value` pairs",
        _ => "",
    };
    if !fixed.is_empty() {
        return fixed.to_string();
    }
    if let Some(rest) = message.strip_prefix("duplicate mapping key: ") {
        let key = rest
            .split(", set DuplicateKeyPolicy")
            .next()
            .unwrap_or(rest);
        return format!("duplicate key `{key}`: each key may appear once");
    }
    message.to_string()
}
