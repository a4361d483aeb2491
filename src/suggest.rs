//! "Did you mean": the closest names to a misspelt one, shared by the rules compiler and the pipeline
//! validator so that both suggest alike.

/// Up to `limit` candidates closest to `word` by edit distance, nearest first (ties in text order),
/// among those differing by at most half the longer length (at least one edit) and not equal to it,
/// and keeping at least one of its characters (an emoji is not "one edit" from an apostrophe).
pub fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>, limit: usize) -> Vec<&'a str> {
    let mut scored: Vec<(usize, &str)> = candidates
        .map(|c| (strsim::levenshtein(word, c), c))
        .filter(|&(d, c)| {
            let length = word.chars().count();
            d > 0 && d < length && d <= (length.max(c.chars().count()) / 2).max(1)
        })
        .collect();
    scored.sort();
    scored.dedup();
    scored.into_iter().take(limit).map(|(_, c)| c).collect()
}

#[cfg(test)]
mod tests {
    use super::closest;

    #[test]
    fn nearest_names_come_first_and_far_ones_not_at_all() {
        let names = ["steps", "seed", "batch_size", "seeds"];
        assert_eq!(closest("stpes", names.into_iter(), 1), ["steps"]);
        assert_eq!(closest("sed", names.into_iter(), 2), ["seed", "seeds"]);
        assert!(closest("learning_rate", names.into_iter(), 3).is_empty());
        assert!(closest("seed", names.into_iter(), 3).iter().all(|c| *c != "seed"));
    }
}
