//! Reading manifests: files (`files.rs`), `---`-separated documents, kinds, and located
//! parse errors. Each document is parsed on its own, so one broken document never hides
//! the problems of the others. Cross-object rules are `validate`'s job, not this one's.

mod files;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_saphyr::MessageFormatter;

use super::diagnostic::Diagnostic;
use super::located::{Located, Pos, with_line_offset};
use super::types::*;
pub use files::{MAX_FILE_BYTES, load_path};

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
    let Some((kind, name)) = parse_header(file, chunk, loaded) else {
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
                .push(diag(file, e.pos, object, e.field, e.message));
            if let Some(name) = name {
                loaded.broken.insert((kind, name));
            }
        }
    }
}

/// A problem found in `file`.
fn diag(
    file: &Arc<str>,
    pos: Pos,
    object: Option<String>,
    field: Option<String>,
    message: String,
) -> Diagnostic {
    Diagnostic {
        file: file.to_string(),
        pos,
        object,
        field,
        message,
    }
}

/// The document's envelope: its kind and name, once `apiVersion` and `kind` are known to be
/// convoy's. `None` after reporting why not; an object that names itself but cannot be used
/// is remembered as broken, so references to it are not reported again.
fn parse_header(
    file: &Arc<str>,
    chunk: &Chunk,
    loaded: &mut Loaded,
) -> Option<(Kind, Option<String>)> {
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
            envelope_problem(loaded, file, e.pos, field, e.message);
            if let Some(identity) = guess_identity(&chunk.text) {
                loaded.broken.insert(identity);
            }
            return None;
        }
    };
    let name = header.metadata.and_then(|m| m.name);
    let Some(api_version) = header.api_version else {
        let message = "missing field `apiVersion` (expected `convoy.dev/v1alpha1`)".into();
        envelope_problem(loaded, file, chunk.start(), None, message);
        return None;
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
        envelope_problem(
            loaded,
            file,
            api_version.pos,
            Some("apiVersion".into()),
            message,
        );
        return None;
    }
    let Some(kind_text) = header.kind else {
        let message =
            "missing field `kind` (one of Site, ServerGroup, Release, Notification)".into();
        envelope_problem(loaded, file, chunk.start(), None, message);
        return None;
    };
    let Some(kind) = Kind::parse(&kind_text) else {
        let message = format!(
            "unknown kind `{}`: expected one of Site, ServerGroup, Release, Notification",
            kind_text.value
        );
        envelope_problem(loaded, file, kind_text.pos, Some("kind".into()), message);
        return None;
    };
    Some((kind, name))
}

/// Reports a problem of the document's envelope: no object is known yet.
fn envelope_problem(
    loaded: &mut Loaded,
    file: &Arc<str>,
    pos: Pos,
    field: Option<String>,
    message: String,
) {
    loaded
        .diagnostics
        .push(diag(file, pos, None, field, message));
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
