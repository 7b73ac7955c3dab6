//! Unit tests of the value rules and of path overlap; the whole validation is tested
//! against golden files in `tests/integration/validate_tests.rs`.

use super::fields::{is_path_char, path_form_problem};
use super::paths::path_overlap;
use super::*;
use crate::manifest::located::Located;
use proptest::prelude::*;

#[test]
fn dns_labels() {
    for ok in ["a", "web1", "jobs-manager", &"a".repeat(63)] {
        assert!(is_dns_label(ok), "{ok}");
    }
    for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64), "ü"] {
        assert!(!is_dns_label(bad), "{bad}");
    }
    assert!(is_dns_subdomain("r2026-11-24.1"));
    assert!(!is_dns_subdomain("r1..2"));
    assert!(!is_dns_subdomain(".r1"));
}

#[test]
fn site_paths_overlap_by_components_not_by_text() {
    assert!(path_overlap("/srv/app", "/srv/app", "a", "h").is_some());
    assert!(path_overlap("/srv/app/releases/legacy", "/srv/app", "a", "h").is_some());
    assert!(path_overlap("/srv/app", "/srv/app/releases/legacy", "a", "h").is_some());
    assert_eq!(path_overlap("/srv/app2", "/srv/app", "a", "h"), None);
    assert_eq!(path_overlap("/srv/app", "/srv/app2", "a", "h"), None);
    assert_eq!(path_overlap("/srv/a", "/srv/b", "a", "h"), None);
}

#[test]
fn path_normal_form() {
    assert_eq!(path_form_problem("/srv/app"), None);
    assert_eq!(
        path_form_problem("media/"),
        Some("it has an empty component (`//` or a trailing `/`)")
    );
    assert_eq!(
        path_form_problem("/srv/./app"),
        Some("it has a `.` or `..` component")
    );
    assert_eq!(
        path_form_problem("/srv//app"),
        Some("it has an empty component (`//` or a trailing `/`)")
    );
}

proptest! {
    /// Whatever passes the path rules contains nothing a shell would interpret.
    #[test]
    fn accepted_paths_are_shell_inert(path in "/[a-zA-Z0-9 ./_$;`'\"\\-]{1,20}") {
        let mut r = Reporter { diagnostics: vec![] };
        let file: Arc<str> = Arc::from("f.yaml");
        check_absolute_path(&mut r, &file, "Site/x", "spec.path", &Located::new(path.clone(), Pos::default()));
        if r.diagnostics.is_empty() {
            prop_assert!(path.chars().all(is_path_char));
            prop_assert!(!path.contains("..") || path.split('/').all(|p| p != ".."));
        }
    }
}
