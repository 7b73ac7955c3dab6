//! Unit tests of the host scripts: each runs the real script text under dash and, when
//! installed, busybox sh (busybox applets first on PATH) on a scratch site directory. One
//! file per operation family; `support.rs` holds the shells and fixtures, some of which
//! `host::observe`'s tests use too.

mod build;
mod cleanup;
mod fetch;
mod lease;
mod once;
mod process;
mod support;
mod switch;

pub(crate) use support::{TempDir, lease, make_release, ok, shells, site};

use std::path::Path;

use super::*;
use support::*;

#[test]
fn busybox_shell_and_applets_are_really_used() {
    for sh in shells().into_iter().filter(|s| s.name == "busybox") {
        let out = ok(&sh, "readlink /proc/$$/exe; command -v mv".to_string());
        assert!(out.contains("busybox"), "{out}");
        assert!(out.contains("convoy-busybox"), "{out}");
    }
}

#[test]
fn quote_is_one_word() {
    assert_eq!(quote(""), "''");
    assert_eq!(quote("a b"), "'a b'");
    assert_eq!(quote("it's"), "'it'\\''s'");
    let f = Fence {
        holder: "h".into(),
        generation: 1,
    };
    let script = Script::new("/x").prepare("a").switch("a", &f).observe();
    assert_eq!(script.planned_steps(), ["prepare", "switch", "observe"]);
    for sh in shells() {
        for v in [
            "",
            "a b",
            "it's",
            "\"q\"",
            "$(echo no)",
            "`echo no`",
            "a\nb\n",
            "\\n *",
        ] {
            let out = ok(&sh, format!("printf '%s' {}", quote(v)));
            assert_eq!(out, v, "[{}]", sh.name);
        }
    }
}

#[test]
fn preamble_is_the_sh_files_with_the_once_wrapper_quoted() {
    let wrapper = include_str!("../../sh/once_wrapper.sh");
    assert!(
        !wrapper.contains('\''),
        "once_wrapper.sh must hold no single quote"
    );
    assert!(PREAMBLE.contains(&format!("\nCV_ONCE_WRAPPER='{wrapper}'\n")));
    assert!(PREAMBLE.starts_with(include_str!("../../sh/lib.sh")));
    assert!(PREAMBLE.ends_with(include_str!("../../sh/lease.sh")));
}

#[test]
fn failed_write_leaves_no_temp_file() {
    for sh in shells() {
        let tmp = TempDir::new("write");
        let p = site(&tmp);
        std::fs::create_dir_all(format!("{p}/w")).unwrap();
        // the target is a directory holding a non-empty directory named like the
        // temporary file: the final `mv` fails, even as root
        let out = ok(
            &sh,
            raw(
                &p,
                None,
                r#"mkdir -p "$P/w/target/target.tmp.$$/sub" || exit 9
cv_write "$P/w/target" hello; echo "moved=$?"
cv_write "$P/nodir/x" hello 2>/dev/null; echo "created=$?"
cv_write "$P/w/ok" hello; echo "ok=$?"
echo "pid=$$""#,
            ),
        );
        let get = |k: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("{k} missing: {out}"))
                .to_string()
        };
        assert_ne!(get("moved"), "0", "[{}] {out}", sh.name);
        assert_ne!(get("created"), "0", "[{}] {out}", sh.name);
        assert_eq!(get("ok"), "0", "[{}] {out}", sh.name);
        let pid = get("pid");
        let mut names: Vec<String> = std::fs::read_dir(format!("{p}/w"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["ok", "target"], "[{}]", sh.name);
        let inside: Vec<String> = std::fs::read_dir(format!("{p}/w/target"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(inside, [format!("target.tmp.{pid}")]);
        assert!(Path::new(&format!("{p}/w/target/target.tmp.{pid}/sub")).is_dir());
        assert_eq!(
            std::fs::read_to_string(format!("{p}/w/ok")).unwrap(),
            "hello\n"
        );
        assert!(!Path::new(&format!("{p}/nodir")).exists());
    }
}
