//! "Did you mean": the candidate closest to a misspelt name, when one is close enough to be
//! a likely typo. Used for unknown fields and for references to other objects by name.

/// The candidate within a small edit distance of `word` (a typo, a swapped pair of
/// letters), the closest one, alphabetically first on a tie. `None` when nothing is close:
/// a far-fetched suggestion misleads more than none.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|candidate| (strsim::damerau_levenshtein(word, candidate), candidate))
        .filter(|(distance, candidate)| *distance > 0 && *distance <= budget(word, candidate))
        .min()
        .map(|(_, candidate)| candidate)
}

/// One edit per three characters of the shorter name, at least one.
fn budget(a: &str, b: &str) -> usize {
    (a.chars().count().min(b.chars().count()) / 3).max(1)
}

#[cfg(test)]
mod tests {
    use super::closest;

    #[test]
    fn typos_find_their_name_and_strangers_find_none() {
        let groups = ["web", "worker", "uat-frontend"];
        assert_eq!(closest("wbe", groups), Some("web"));
        assert_eq!(closest("webb", groups), Some("web"));
        assert_eq!(closest("uat-frotnend", groups), Some("uat-frontend"));
        assert_eq!(closest("database", groups), None);
        assert_eq!(closest("web", groups), None, "an exact name is no typo");
        assert_eq!(closest("x", Vec::<&str>::new()), None);
        assert_eq!(closest("relase", ["release", "revision"]), Some("release"));
        assert_eq!(
            closest("r2026-11-28.2", ["r2026-11-28.1", "r2026-11-27.2"]),
            Some("r2026-11-27.2")
        );
    }
}
