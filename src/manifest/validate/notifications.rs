//! Notification objects: the sites they name exist, each event is named once, and the URL's
//! source is exactly one of an environment variable (a valid name) or a file. Whether that
//! variable is set or that file readable is checked when convoy starts sending
//! (`notify::resolve`), not here: `convoy validate` runs in CI, where the secret is absent.

use std::collections::BTreeSet;

use super::refs::{Index, ObjectKey};
use super::{Catalog, Reporter};
use crate::manifest::types::Kind;

/// Every Notification of the catalog.
pub(super) fn check_notifications(r: &mut Reporter, catalog: &Catalog, index: &Index) {
    for (name, notification) in &catalog.notifications {
        let file = index.file_of(&ObjectKey::named(Kind::Notification, name));
        let id = format!("Notification/{name}");
        let spec = &notification.spec;
        for (i, site) in spec.sites.iter().enumerate() {
            if !index.exists(&ObjectKey::named(Kind::Site, site)) {
                let sites = catalog.sites.keys().map(String::as_str);
                let message = index.not_defined(Kind::Site, site, sites);
                r.at(&file, &id, site.pos, format!("spec.sites[{i}]"), message);
            }
        }
        let mut seen = BTreeSet::new();
        for event in spec.events.iter() {
            if !seen.insert(*event) {
                let message = format!("event `{}` is listed twice", event.as_str());
                r.at(&file, &id, spec.events.pos, "spec.events", message);
            }
        }
        let url_from = &spec.webhook.url_from;
        let field = "spec.webhook.urlFrom";
        match (&url_from.env, &url_from.file) {
            (Some(env), None) if !is_env_name(env) => r.at(
                &file,
                &id,
                env.pos,
                format!("{field}.env"),
                format!(
                    "`{}` is not an environment variable name: letters, digits and `_`, not starting with a digit",
                    env.value
                ),
            ),
            (None, Some(path)) if path.trim().is_empty() => {
                r.at(&file, &id, path.pos, format!("{field}.file"), "the file path is empty");
            }
            (Some(_), None) | (None, Some(_)) => {}
            _ => r.at(
                &file,
                &id,
                url_from.pos,
                field,
                "set exactly one of `env` or `file` (the URL is a secret: it never appears in a manifest)",
            ),
        }
    }
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::is_env_name;

    #[test]
    fn environment_variable_names_are_portable_shell_names() {
        for (name, ok) in [
            ("CHAT_WEBHOOK_URL", true),
            ("_x1", true),
            ("1X", false),
            ("", false),
            ("A-B", false),
            ("A B", false),
            ("é", false),
        ] {
            assert_eq!(is_env_name(name), ok, "{name:?}");
        }
    }
}
