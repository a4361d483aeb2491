//! What checking a large rules file costs (`ailla bench --rules-check`): a generated gazetteer of a
//! given size, loaded and compiled against a vocabulary in which most of its words are missing (the
//! case that once printed a warning per word and compared every word with every other).

use std::path::Path;
use std::time::Instant;

use crate::data::{TokenizerKind, Vocabulary};

/// The timings of one check, with a reference measured in the same run.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct RulesCheckCost {
    /// Size of the generated rules file, in bytes.
    pub bytes: usize,
    /// Blocks and member words in it.
    pub blocks: usize,
    pub words: usize,
    /// Seconds to parse, compile against the vocabulary and render every diagnostic, as `ailla check`.
    pub check_seconds: f64,
    /// Seconds to build a word vocabulary from the same bytes: one hash-map pass, the reference.
    pub reference_seconds: f64,
    /// `check_seconds / reference_seconds`.
    pub ratio: f64,
    /// Diagnostics printed (bounded: a few per kind, then a count).
    pub diagnostics: usize,
    /// Characters of rendered diagnostics.
    pub rendered_chars: usize,
}

/// A gazetteer of about `bytes` bytes: blocks of 40 quoted names each, the first of each present in the
/// vocabulary, and a rule between the first two blocks.
pub fn gazetteer(bytes: usize) -> (String, String) {
    let mut text = String::with_capacity(bytes + 1024);
    let mut corpus = String::new();
    let (mut block, mut word) = (0usize, 0usize);
    while text.len() < bytes {
        text.push_str(&format!("block place_{block}:\n    "));
        for i in 0..40 {
            let name = format!("{}{word}", ["north", "south", "east", "west"][word % 4]);
            if i == 0 {
                corpus.push_str(&name);
                corpus.push(' ');
            }
            text.push_str(&format!("\"{name}\"{}", if i < 39 { ",\n    " } else { "\n" }));
            word += 1;
        }
        block += 1;
    }
    text.push_str("rule \"near\": place_0 attend to place_1 within 8\n");
    (text, corpus)
}

/// Times `ailla check` on a generated file of about `bytes` bytes.
pub fn rules_check_cost(bytes: usize) -> crate::Result<RulesCheckCost> {
    let (text, corpus) = gazetteer(bytes);
    let vocabulary = Vocabulary::build(TokenizerKind::Word, &corpus, 1_000_000);
    let started = Instant::now();
    let loaded = super::load_source(Path::new("gazetteer.rules"), text.clone())?;
    let checked = super::Checked::new(loaded, Some(&vocabulary));
    let rendered = checked.render();
    let check_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let reference = Vocabulary::build(TokenizerKind::Word, &text, usize::MAX);
    let reference_seconds = started.elapsed().as_secs_f64().max(1e-9);
    let blocks = checked.compiled.spec.blocks.len();
    let words = checked.compiled.spec.blocks.iter().map(|b| b.words.len()).sum();
    std::hint::black_box(reference.len());
    Ok(RulesCheckCost {
        bytes: text.len(),
        blocks,
        words,
        check_seconds,
        reference_seconds,
        ratio: check_seconds / reference_seconds,
        diagnostics: checked.diagnostics.len(),
        rendered_chars: rendered.chars().count(),
    })
}
