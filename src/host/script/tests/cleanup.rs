//! Tests of removing old releases.

use super::super::*;
use super::support::*;

#[test]
fn remove_releases_keeps_current_previous_and_protected() {
    for sh in shells() {
        let tmp = TempDir::new("cleanup");
        let p = site(&tmp);
        for id in ["r1", "r2", "r3", "r4", "r5", "r6"] {
            make_release(&sh, &p, id);
        }
        std::fs::create_dir_all(format!("{p}/releases/half")).unwrap();
        std::fs::create_dir_all(format!("{p}/releases/r9")).unwrap(); // desired, building
        std::fs::create_dir_all(format!("{p}/releases/bad name")).unwrap();
        let f = lease(&sh, &p, "ctl-a");
        ok(
            &sh,
            Script::new(&p).switch("r2", &f).switch("r1", &f).finish(),
        ); // current r1, previous r2
        let remove = s(&[
            "r1", "r2", "r3", "r4", "half", "r9", "bad name", "..", "gone",
        ]);
        let protect = s(&["r3", "r9"]);
        let out = ok(
            &sh,
            Script::new(&p).remove_releases(&remove, &protect).finish(),
        );
        let mut left: Vec<String> = std::fs::read_dir(format!("{p}/releases"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec!["bad name", "r1", "r2", "r3", "r5", "r6", "r9"],
            "{out}"
        );
        assert!(out.contains("@@convoy removed=r4\n"), "{out}");
        assert!(out.contains("@@convoy removed=half\n"), "{out}");
        let before = snapshot(tmp.path());
        let script = Script::new(&p).remove_releases(&s(&["r4", "half"]), &protect);
        let out = ok(&sh, script.finish());
        assert_eq!(snapshot(tmp.path()), before);
        assert!(out.contains("step=cleanup status=0"), "{out}");
    }
}
