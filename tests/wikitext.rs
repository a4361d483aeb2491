//! Checks on the real corpora in `../shared/data`; skipped with a message where that folder is absent.

use std::path::PathBuf;

use ailla::data::{load_splits, TokenizerKind, Vocabulary};

fn shared(name: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data").join(name);
    if path.is_dir() {
        Some(path)
    } else {
        eprintln!("skipped: {} is absent (the shared corpora are not on this machine)", path.display());
        None
    }
}

#[test]
fn wikitext2_word_counts_match_the_published_statistics() {
    let Some(dir) = shared("wikitext-2") else {
        return;
    };
    let splits = load_splits(&dir).unwrap();
    let vocab = Vocabulary::build(TokenizerKind::Word, &splits.train, 1_000_000);
    // shared/data/README.md: with <eos> per line, 2,088,628 / 217,646 / 245,569 tokens, vocabulary 33,278
    assert_eq!(vocab.len(), 33_278);
    assert_eq!(vocab.encode(&splits.train).len(), 2_088_628);
    assert_eq!(vocab.encode(&splits.valid).len(), 217_646);
    assert_eq!(vocab.encode(&splits.test).len(), 245_569);
    // WikiText-2 is closed-vocabulary: every valid and test word occurs in train (rare ones are `<unk>`)
    let unseen = splits.valid.split_whitespace().chain(splits.test.split_whitespace()).find(|w| vocab.id(w).is_none());
    assert_eq!(unseen, None);
}
