//! One located problem in the manifests, printed like a compiler message:
//! `file:line:column: Kind/name: field.path: message`.

use std::fmt;

use super::located::Pos;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    /// The file as the operator named it (relative stays relative).
    pub file: String,
    /// 0:0 when the problem is the file itself (unreadable, empty).
    pub pos: Pos,
    /// `Kind/name` of the object, when known.
    pub object: Option<String>,
    /// Dotted path inside the object, e.g. `spec.stages[1].group`.
    pub field: Option<String>,
    pub message: String,
}

impl Diagnostic {
    pub fn file_level(file: &str, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_string(),
            pos: Pos::default(),
            object: None,
            field: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.pos != Pos::default() {
            write!(f, ":{}", self.pos)?;
        }
        if let Some(object) = &self.object {
            write!(f, ": {object}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one load, sorted by file and position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        let n = self.0.len();
        write!(
            f,
            "{n} error{}: manifests are invalid; nothing was changed on any host",
            if n == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for Diagnostics {}
