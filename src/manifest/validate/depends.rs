//! `spec.dependsOn`: each entry names another existing Site (a typo gets a "did you mean"),
//! at most once, and the sites never depend on each other in a circle: a cycle would hold
//! every site in it forever. A cycle is one error naming all its sites, at the `dependsOn`
//! of the first of them by name.

use std::collections::{BTreeMap, BTreeSet};

use super::refs::{Index, ObjectKey};
use super::{Catalog, Reporter};
use crate::manifest::types::Kind;

/// Every Site's `dependsOn`: names, duplicates, itself, and cycles.
pub(super) fn check_depends_on(r: &mut Reporter, catalog: &Catalog, index: &Index) {
    let mut edges: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, site) in &catalog.sites {
        let Some(depends_on) = &site.spec.depends_on else {
            continue;
        };
        let file = index.file_of(&ObjectKey::named(Kind::Site, name));
        let id = format!("Site/{name}");
        let mut seen = BTreeSet::new();
        for (i, entry) in depends_on.iter().enumerate() {
            let field = format!("spec.dependsOn[{i}]");
            let problem = if entry.value == *name {
                Some("a site cannot depend on itself".to_string())
            } else if !seen.insert(entry.value.as_str()) {
                Some(format!("site `{}` is listed twice", entry.value))
            } else if !index.exists(&ObjectKey::named(Kind::Site, entry)) {
                let sites = catalog.sites.keys().map(String::as_str);
                Some(index.not_defined(Kind::Site, entry, sites))
            } else {
                None
            };
            match problem {
                Some(message) => r.at(&file, &id, entry.pos, field, message),
                None if catalog.sites.contains_key(&entry.value) => {
                    edges.entry(name).or_default().push(&entry.value);
                }
                None => {}
            }
        }
    }
    for cycle in cycles(&edges) {
        let (first, next) = (cycle[0], circle(&cycle, &edges)[1]);
        let file = index.file_of(&ObjectKey::named(Kind::Site, first));
        // At the entry that leads into the circle: the line to edit.
        let entries = catalog.sites[first]
            .spec
            .depends_on
            .iter()
            .flat_map(|d| d.iter());
        let Some((i, entry)) = entries.enumerate().find(|(_, e)| e.value == next) else {
            continue;
        };
        r.at(
            &file,
            &format!("Site/{first}"),
            entry.pos,
            format!("spec.dependsOn[{i}]"),
            cycle_message(&cycle, &edges),
        );
    }
}

/// "`dependsOn` cycle: a → b → c → a; ...", naming every site of the cycle.
fn cycle_message(cycle: &[&str], edges: &BTreeMap<&str, Vec<&str>>) -> String {
    let path = circle(cycle, edges);
    let circle = path.join(" → ");
    let what = if path.len() - 1 == cycle.len() {
        format!("`dependsOn` cycle: {circle}")
    } else {
        format!("`dependsOn` cycle among {} ({circle})", cycle.join(", "))
    };
    format!("{what}: none of these sites could ever switch; remove one of the dependencies")
}

/// From the cycle's first site, the first edge that stays in the cycle, until a site comes
/// round again: for a simple circle, every site and back to the first.
fn circle<'a>(cycle: &[&'a str], edges: &BTreeMap<&'a str, Vec<&'a str>>) -> Vec<&'a str> {
    let members: BTreeSet<&str> = cycle.iter().copied().collect();
    let mut path = vec![cycle[0]];
    let mut at = cycle[0];
    while let Some(next) = edges[at].iter().copied().find(|n| members.contains(n)) {
        path.push(next);
        if path[..path.len() - 1].contains(&next) {
            break;
        }
        at = next;
    }
    path
}

/// The strongly connected components of more than one site (Tarjan), each sorted by name,
/// in name order. Self-references are reported per entry, not here.
fn cycles<'a>(edges: &BTreeMap<&'a str, Vec<&'a str>>) -> Vec<Vec<&'a str>> {
    struct Walk<'a, 'e> {
        edges: &'e BTreeMap<&'a str, Vec<&'a str>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<&'a str>>,
    }
    impl<'a> Walk<'a, '_> {
        fn visit(&mut self, site: &'a str) {
            let n = self.index.len();
            self.index.insert(site, n);
            self.low.insert(site, n);
            self.stack.push(site);
            self.on_stack.insert(site);
            for &next in self.edges.get(site).into_iter().flatten() {
                if next == site {
                    continue;
                }
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[site].min(self.low[next]);
                    self.low.insert(site, low);
                } else if self.on_stack.contains(next) {
                    let low = self.low[site].min(self.index[next]);
                    self.low.insert(site, low);
                }
            }
            if self.low[site] == self.index[site] {
                let mut component = vec![];
                while let Some(top) = self.stack.pop() {
                    self.on_stack.remove(top);
                    component.push(top);
                    if top == site {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort_unstable();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: vec![],
        on_stack: BTreeSet::new(),
        found: vec![],
    };
    for &site in edges.keys() {
        if !walk.index.contains_key(site) {
            walk.visit(site);
        }
    }
    walk.found.sort();
    walk.found
}

#[cfg(test)]
mod tests {
    use super::*;

    type Graph<'a> = BTreeMap<&'a str, Vec<&'a str>>;

    fn graph<'a>(pairs: &[(&'a str, &[&'a str])]) -> Graph<'a> {
        pairs.iter().map(|(s, d)| (*s, d.to_vec())).collect()
    }

    #[test]
    fn every_circle_is_found_once_with_all_its_sites() {
        // (graph, cycles)
        let rows: Vec<(Graph, Vec<Vec<&str>>)> = vec![
            (graph(&[("b", &["a"]), ("c", &["a", "b"])]), vec![]),
            (
                graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])]),
                vec![vec!["a", "b", "c"]],
            ),
            (
                graph(&[("a", &["b"]), ("b", &["a"]), ("c", &["d"]), ("d", &["c"])]),
                vec![vec!["a", "b"], vec!["c", "d"]],
            ),
            // A site depending on a cycle is not part of it.
            (
                graph(&[("x", &["a"]), ("a", &["b"]), ("b", &["a"])]),
                vec![vec!["a", "b"]],
            ),
        ];
        for (edges, expected) in rows {
            assert_eq!(cycles(&edges), expected, "{edges:?}");
        }
    }

    #[test]
    fn the_message_walks_the_circle_or_names_the_tangle() {
        let circle = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])]);
        assert_eq!(
            cycle_message(&["a", "b", "c"], &circle),
            "`dependsOn` cycle: a → b → c → a: none of these sites could ever switch; remove one of the dependencies"
        );
        let tangle = graph(&[("a", &["b"]), ("b", &["a", "c"]), ("c", &["b"])]);
        assert!(
            cycle_message(&["a", "b", "c"], &tangle)
                .starts_with("`dependsOn` cycle among a, b, c (a → b → a)"),
        );
    }

    #[test]
    fn a_long_chain_is_no_cycle_and_does_not_overflow() {
        let names: Vec<String> = (0..2000).map(|i| format!("s{i:05}")).collect();
        let edges: BTreeMap<&str, Vec<&str>> = names
            .windows(2)
            .map(|w| (w[1].as_str(), vec![w[0].as_str()]))
            .collect();
        assert!(cycles(&edges).is_empty());
    }
}
