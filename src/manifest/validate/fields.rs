//! The rules of single values: names, labels, paths, commands, words passed to ssh or git,
//! and the settings of one object read on their own. One table of checks per object kind;
//! rules that relate objects to each other are in `mod.rs`. Reports, never fixes.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Reporter;
use crate::manifest::located::Located;
use crate::manifest::types::*;

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

pub(super) fn check_name(
    r: &mut Reporter,
    file: &Arc<str>,
    id: &str,
    kind: Kind,
    name: &Located<String>,
) {
    let ok = match kind {
        Kind::Release => is_dns_subdomain(name),
        _ => is_dns_label(name),
    };
    if !ok {
        let rule = match kind {
            Kind::Release => {
                "a release id must be lowercase letters, digits, `-` and `.` (DNS-1123 subdomain, e.g. `r2026-11-24.1`)"
            }
            _ => {
                "a name must be lowercase letters, digits and `-`, start and end with a letter or digit, at most 63 characters (DNS-1123 label)"
            }
        };
        r.at(
            file,
            id,
            name.pos,
            "metadata.name",
            format!("invalid name `{}`: {rule}", name.value),
        );
    }
}

pub(super) fn check_dns_label(
    r: &mut Reporter,
    file: &Arc<str>,
    id: &str,
    field: &str,
    value: &Located<String>,
    what: &str,
) {
    if !is_dns_label(value) {
        r.at(file, id, value.pos, field, format!("invalid {what} `{}`: use lowercase letters, digits and `-`, starting and ending with a letter or digit, at most 63 characters", value.value));
    }
}

pub(super) fn check_labels(
    r: &mut Reporter,
    file: &Arc<str>,
    id: &str,
    field: &str,
    labels: &BTreeMap<String, Located<String>>,
) {
    // Kubernetes label syntax: `[prefix/]name`, name and value 1-63 of `[A-Za-z0-9._-]`,
    // starting and ending alphanumeric (a value may also be empty).
    fn is_label_name(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    }
    for (key, value) in labels {
        let key_ok = match key.split_once('/') {
            Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
            None => is_label_name(key),
        };
        if !key_ok {
            r.at(file, id, value.pos, format!("{field}.{key}"), format!("invalid label key `{key}`: use letters, digits, `-`, `_` and `.`, optionally after a `prefix/`"));
        }
        if !(value.is_empty() || is_label_name(value)) {
            r.at(file, id, value.pos, format!("{field}.{key}"), format!("invalid label value `{}`: at most 63 letters, digits, `-`, `_` and `.`, starting and ending with a letter or digit", value.value));
        }
    }
}

/// Characters allowed in paths that reach a remote shell: no quoting subtleties at all.
pub(super) fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | '@')
}

/// Why a path is not in normal form, if it is not (`//`, `.`, `..`, trailing `/`).
pub(super) fn path_form_problem(path: &str) -> Option<&'static str> {
    let body = path.strip_prefix('/').unwrap_or(path);
    if body.split('/').any(|part| part == "." || part == "..") {
        return Some("it has a `.` or `..` component");
    }
    if body.split('/').any(|part| part.is_empty()) {
        return Some("it has an empty component (`//` or a trailing `/`)");
    }
    None
}

/// What is wrong with a path's characters or form, whether absolute or relative.
fn path_text_problem(path: &str) -> Option<String> {
    if let Some(bad) = path.chars().find(|c| !is_path_char(*c)) {
        return Some(format!(
            "character {bad:?} is not allowed (use letters, digits and `/._-+@`)"
        ));
    }
    path_form_problem(path).map(|p| format!("{p}; write it in normal form"))
}

pub(super) fn check_absolute_path(
    r: &mut Reporter,
    file: &Arc<str>,
    id: &str,
    field: &str,
    path: &Located<String>,
) {
    let problem = if !path.starts_with('/') {
        Some("it must be absolute (start with `/`)".to_string())
    } else if path.value == "/" {
        Some("it cannot be `/` itself".to_string())
    } else {
        path_text_problem(path)
    };
    if let Some(problem) = problem {
        r.at(
            file,
            id,
            path.pos,
            field,
            format!("invalid path `{}`: {problem}", path.value),
        );
    }
}

fn check_relative_path(
    r: &mut Reporter,
    file: &Arc<str>,
    id: &str,
    field: &str,
    path: &Located<String>,
) {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    let problem = if path.starts_with('/') {
        Some("it must be relative to the release directory".to_string())
    } else if trimmed.is_empty() {
        Some("it is empty".to_string())
    } else {
        path_text_problem(trimmed)
    };
    if let Some(problem) = problem {
        r.at(
            file,
            id,
            path.pos,
            field,
            format!("invalid shared path `{}`: {problem}", path.value),
        );
    }
}

pub(super) fn check_commands(
    r: &mut Reporter,
    file: &Arc<str>,
    id: &str,
    field: &str,
    commands: &[Located<String>],
) {
    for (i, command) in commands.iter().enumerate() {
        if command.trim().is_empty() {
            r.at(
                file,
                id,
                command.pos,
                format!("{field}[{i}]"),
                "empty command",
            );
        } else if command.contains('\0') {
            r.at(
                file,
                id,
                command.pos,
                format!("{field}[{i}]"),
                "a command cannot contain a NUL character",
            );
        }
    }
}

/// A value passed as one word to ssh or git: no leading `-` (it would become an option).
fn check_word(
    r: &mut Reporter,
    file: &Arc<str>,
    id: &str,
    field: &str,
    value: &Located<String>,
    what: &str,
    extra: &str,
) {
    let allowed = |c: char| {
        c.is_ascii_alphanumeric()
            || matches!(c, '.' | '_' | '-' | '/' | '~' | '+' | '@' | ':')
            || extra.contains(c)
    };
    if value.is_empty() {
        r.at(file, id, value.pos, field, format!("{what} is empty"));
    } else if value.starts_with('-') {
        r.at(
            file,
            id,
            value.pos,
            field,
            format!("invalid {what} `{}`: it cannot start with `-`", value.value),
        );
    } else if let Some(bad) = value.chars().find(|c| !allowed(*c)) {
        r.at(
            file,
            id,
            value.pos,
            field,
            format!(
                "invalid {what} `{}`: character {bad:?} is not allowed",
                value.value
            ),
        );
    }
}

pub(super) fn check_revision(
    r: &mut Reporter,
    file: &Arc<str>,
    id: &str,
    revision: &Located<String>,
) {
    check_word(r, file, id, "spec.revision", revision, "revision", "");
    if revision.contains("..")
        || revision.contains(':')
        || revision.contains('~')
        || revision.ends_with(['/', '.'])
    {
        r.at(
            file,
            id,
            revision.pos,
            "spec.revision",
            format!(
                "invalid revision `{}`: not a valid git commit, tag or branch name",
                revision.value
            ),
        );
    }
}

pub(super) fn check_group(r: &mut Reporter, file: &Arc<str>, id: &str, spec: &ServerGroupSpec) {
    if let Some(n) = &spec.max_parallel
        && n.value == 0
    {
        r.at(file, id, n.pos, "spec.maxParallel", "must be at least 1");
    }
    if spec.hosts.is_empty() {
        r.at(
            file,
            id,
            spec.hosts.pos,
            "spec.hosts",
            "a server group needs at least one host",
        );
    }
    let ssh = &spec.ssh;
    if let Some(user) = &ssh.user {
        check_word(r, file, id, "spec.ssh.user", user, "user", "");
    }
    if let Some(port) = &ssh.port
        && port.value == 0
    {
        r.at(
            file,
            id,
            port.pos,
            "spec.ssh.port",
            "port must be between 1 and 65535",
        );
    }
    if let Some(f) = &ssh.identity_file {
        check_word(r, file, id, "spec.ssh.identityFile", f, "identity file", "");
    }
    if let Some(f) = &ssh.config_file {
        check_word(r, file, id, "spec.ssh.configFile", f, "config file", "");
    }
    if let Some(t) = &ssh.connect_timeout
        && t.as_std() < std::time::Duration::from_secs(1)
    {
        r.at(
            file,
            id,
            t.pos,
            "spec.ssh.connectTimeout",
            "must be at least 1s (ssh counts whole seconds)",
        );
    }
}

pub(super) fn check_host(
    r: &mut Reporter,
    file: &Arc<str>,
    id: &str,
    field: &str,
    host: &HostSpec,
) {
    check_dns_label(
        r,
        file,
        id,
        &format!("{field}.name"),
        &host.name,
        "host name",
    );
    let local = host.address.value == "local";
    if !local {
        check_word(
            r,
            file,
            id,
            &format!("{field}.address"),
            &host.address,
            "address",
            "[]",
        );
    }
    if let Some(port) = &host.port
        && port.value == 0
    {
        r.at(
            file,
            id,
            port.pos,
            format!("{field}.port"),
            "port must be between 1 and 65535",
        );
    }
    if let Some(user) = &host.user {
        check_word(r, file, id, &format!("{field}.user"), user, "user", "");
    }
    if let Some(f) = &host.identity_file {
        check_word(
            r,
            file,
            id,
            &format!("{field}.identityFile"),
            f,
            "identity file",
            "",
        );
    }
    if let Some(root) = &host.root {
        if local {
            check_absolute_path(r, file, id, &format!("{field}.root"), root);
        } else {
            r.at(
                file,
                id,
                root.pos,
                format!("{field}.root"),
                "`root` is only allowed for `address: local` hosts",
            );
        }
    }
    check_labels(r, file, id, &format!("{field}.labels"), &host.labels);
}

/// The settings of one Site read on their own: fetch, build, shared paths, environment,
/// health check, rollout and kept releases.
pub(super) fn check_site_settings(r: &mut Reporter, file: &Arc<str>, id: &str, spec: &SiteSpec) {
    match (&spec.fetch.git, &spec.fetch.archive) {
        (Some(git), None) => check_word(
            r,
            file,
            id,
            "spec.fetch.git.repository",
            &git.repository,
            "repository",
            "%=",
        ),
        (None, Some(archive)) => check_word(
            r,
            file,
            id,
            "spec.fetch.archive.path",
            &archive.path,
            "archive path",
            "{}",
        ),
        _ => r.at(
            file,
            id,
            spec.fetch.pos,
            "spec.fetch",
            "set exactly one of `git` or `archive`",
        ),
    }
    check_commands(r, file, id, "spec.build", &spec.build);
    for (i, shared) in spec.shared.iter().enumerate() {
        check_relative_path(r, file, id, &format!("spec.shared[{i}]"), shared);
    }
    check_env(r, file, id, &spec.env);
    if let Some(health) = &spec.health {
        check_health(r, file, id, health);
    }
    check_rollout(r, file, id, spec);
}

/// `spec.env`: shell variable names, none of convoy's own, no NUL in a value.
fn check_env(r: &mut Reporter, file: &Arc<str>, id: &str, env: &BTreeMap<String, Located<String>>) {
    for (key, value) in env {
        let field = format!("spec.env.{key}");
        let valid_key = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key {
            r.at(file, id, value.pos, &field, format!("invalid variable name `{key}`: use letters, digits and `_`, not starting with a digit"));
        } else if key.starts_with("CONVOY_") {
            r.at(
                file,
                id,
                value.pos,
                &field,
                format!("`{key}` is reserved: convoy sets the CONVOY_* variables itself"),
            );
        }
        if value.contains('\0') {
            r.at(
                file,
                id,
                value.pos,
                &field,
                "a value cannot contain a NUL character",
            );
        }
    }
}

/// `spec.health`: a command to run and a timeout that leaves it time to.
fn check_health(r: &mut Reporter, file: &Arc<str>, id: &str, health: &Health) {
    if health.command.trim().is_empty() {
        r.at(
            file,
            id,
            health.command.pos,
            "spec.health.command",
            "empty command",
        );
    }
    if health.timeout.as_std().is_zero() {
        r.at(
            file,
            id,
            health.command.pos,
            "spec.health.timeout",
            "must be greater than 0s",
        );
    }
}

/// `spec.rollout` and `spec.keepReleases`. `rollout.maxFailed`'s range (a count >= 0, or
/// `0%`..`100%`) is the schema's, checked when the document loads.
fn check_rollout(r: &mut Reporter, file: &Arc<str>, id: &str, spec: &SiteSpec) {
    let rollout = &spec.rollout;
    if rollout.max_parallel.value == 0 {
        r.at(
            file,
            id,
            rollout.max_parallel.pos,
            "spec.rollout.maxParallel",
            "must be at least 1",
        );
    }
    if rollout.failure_retries.value == 0 {
        r.at(
            file,
            id,
            rollout.failure_retries.pos,
            "spec.rollout.failureRetries",
            "must be at least 1",
        );
    }
    if spec.keep_releases.value < 2 {
        r.at(
            file,
            id,
            spec.keep_releases.pos,
            "spec.keepReleases",
            format!(
                "must be at least 2 (got {}): the previous release must stay for rollback",
                spec.keep_releases.value
            ),
        );
    }
}
