//! Reading manifests: files (`files.rs`), `---`-separated documents, kinds, and located
//! parse errors. Each document is parsed on its own, so one broken document never hides
//! the problems of the others, and is first read as a located tree (`tree.rs`) and checked
//! against its kind's schema (`shape.rs`), so every problem of one document is reported at
//! once; only a document without any is parsed into its type. Cross-object rules are
//! `validate`'s job, not this one's.

mod files;
mod shape;
mod tree;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_saphyr::MessageFormatter;

use super::diagnostic::Diagnostic;
use super::located::{Located, Pos, with_line_offset};
use super::types::*;
pub use files::{MAX_FILE_BYTES, load_path};
use tree::{Node, Value};

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
    /// `-f` named one file rather than a directory: references resolve within it alone.
    pub single_file: bool,
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

/// A document: its tree, its envelope, every duplicate key and shape problem at once, and
/// only when there are none the typed object.
fn parse_document(file: &Arc<str>, chunk: &Chunk, loaded: &mut Loaded) {
    let tree = match parse_tree(chunk) {
        Ok(tree) => tree,
        Err(e) => {
            envelope_problem(loaded, file, e.pos, None, e.message);
            if let Some(identity) = guess_identity(&chunk.text) {
                loaded.broken.insert(identity);
            }
            return;
        }
    };
    let Some((kind, name)) = read_envelope(file, chunk, &tree, loaded) else {
        return;
    };
    let object = name.as_ref().map(|n| format!("{}/{n}", kind.as_str()));
    let mut problems: Vec<Diagnostic> = tree::duplicates(&tree)
        .into_iter()
        .map(|d| {
            let message = format!(
                "duplicate key `{}`: already written at line {}; each key may appear once",
                d.key.value, d.first_line
            );
            diag(file, d.key.pos, object.clone(), Some(d.field), message)
        })
        .collect();
    problems.extend(
        shape::check(kind, &tree)
            .into_iter()
            .map(|p| diag(file, p.pos, object.clone(), p.field, p.message)),
    );
    if problems.is_empty() {
        let parsed = match kind {
            Kind::Site => parse_tracked(chunk).map(|o| AnyObject::Site(Box::new(o))),
            Kind::ServerGroup => parse_tracked(chunk).map(AnyObject::ServerGroup),
            Kind::Release => parse_tracked(chunk).map(AnyObject::Release),
            Kind::Notification => parse_tracked(chunk).map(AnyObject::Notification),
        };
        match parsed {
            Ok(parsed) => {
                return loaded.objects.push(Sourced {
                    file: file.clone(),
                    object: parsed,
                });
            }
            Err(e) => problems.push(diag(file, e.pos, object, e.field, e.message)),
        }
    }
    loaded.diagnostics.extend(problems);
    if let Some(name) = name {
        loaded.broken.insert((kind, name));
    }
}

/// A problem found in `file`. Field and message may quote what the file holds: control
/// characters are escaped.
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
        object: object.map(|o| sanitize(&o)),
        field: field.map(|f| sanitize(&f)),
        message: sanitize(&message),
    }
}

/// The document's envelope: its kind and name, once `apiVersion` and `kind` are known to be
/// convoy's. `None` after reporting why not; an object that names itself but cannot be used
/// is remembered as broken, so references to it are not reported again.
fn read_envelope(
    file: &Arc<str>,
    chunk: &Chunk,
    tree: &Node,
    loaded: &mut Loaded,
) -> Option<(Kind, Option<String>)> {
    let Value::Mapping(_) = &tree.value else {
        let message = "expected a mapping of `key: value` pairs".into();
        envelope_problem(loaded, file, chunk.start(), None, message);
        return None;
    };
    let text = |node: &Node| node.value.scalar_text().unwrap_or_default();
    let name = match tree.value.get("metadata").and_then(|m| m.value.get("name")) {
        Some(Located {
            value: Value::String(name),
            ..
        }) => Some(name.clone()),
        _ => None,
    };
    let kind_node = tree.value.get("kind");
    let Some(api_version) = tree.value.get("apiVersion") else {
        let message = "missing field `apiVersion` (expected `convoy.dev/v1alpha1`)".into();
        envelope_problem(loaded, file, chunk.start(), None, message);
        return None;
    };
    if text(api_version) != API_VERSION {
        if let (Some(kind), Some(name)) = (kind_node.and_then(|k| Kind::parse(&text(k))), &name) {
            loaded.broken.insert((kind, name.clone()));
        }
        let message = format!(
            "unsupported apiVersion `{}`: this convoy understands `{API_VERSION}`",
            text(api_version)
        );
        let field = Some("apiVersion".into());
        envelope_problem(loaded, file, api_version.pos, field, message);
        return None;
    }
    let Some(kind_node) = kind_node else {
        let message =
            "missing field `kind` (one of Site, ServerGroup, Release, Notification)".into();
        envelope_problem(loaded, file, chunk.start(), None, message);
        return None;
    };
    let Some(kind) = Kind::parse(&text(kind_node)) else {
        let message = format!(
            "unknown kind `{}`: expected one of Site, ServerGroup, Release, Notification",
            text(kind_node)
        );
        envelope_problem(loaded, file, kind_node.pos, Some("kind".into()), message);
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

/// Reads a chunk as a tree. Keys written twice are kept (the caller reports them all);
/// only YAML that cannot be read at all fails here.
fn parse_tree(chunk: &Chunk) -> Result<Node, ParseError> {
    let mut options = yaml_options();
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::PassThrough;
    with_line_offset(chunk.first_line - 1, || {
        serde_saphyr::from_str_with_options::<Node>(&chunk.text, options)
    })
    .map_err(|e| parse_error(chunk, &e, String::new()))
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
        parse_error(chunk, &e, path)
    })
}

/// A parser error at its place in the file, in an operator's words.
fn parse_error(chunk: &Chunk, e: &serde_saphyr::Error, path: String) -> ParseError {
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
