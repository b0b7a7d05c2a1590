//! "Did you mean …?" for a misspelt name: the nearest of the valid names by edit distance, when
//! it is near enough to be a typo rather than a different word.

/// The valid name nearest to `bad`, if within a typo's distance (2 edits, plus one per 4
/// characters).
pub fn nearest<'a>(bad: &str, valid: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    valid
        .into_iter()
        .map(|v| (edit_distance(bad, v), v))
        .min()
        .filter(|(d, _)| *d <= 2 + bad.len() / 4)
        .map(|(_, v)| v)
}

/// Levenshtein distance: single-character insertions, deletions and substitutions.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            let next = (row[j] + 1).min(row[j + 1] + 1).min(prev + cost);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("lerning_rate", "learning_rate"), 1);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn nearest_suggests_typos_only() {
        let valid = ["lora_rank", "lora_alpha", "learning_rate"];
        assert_eq!(nearest("lora_rnak", valid), Some("lora_rank"));
        assert_eq!(nearest("temperature", valid), None);
    }
}
