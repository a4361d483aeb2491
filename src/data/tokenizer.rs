//! Character- and word-level tokenizers. The vocabulary is part of the model: it is stored in the
//! checkpoint, and evaluation text is encoded with the stored vocabulary, never a rebuilt one.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    /// One token per Unicode scalar value, newline included.
    Char,
    /// Whitespace-separated words with `<eos>` closing every line, as the WikiText language-modelling
    /// setup counts them.
    Word,
}

impl TokenizerKind {
    pub fn name(self) -> &'static str {
        match self {
            TokenizerKind::Char => "char",
            TokenizerKind::Word => "word",
        }
    }
}

pub const UNK: &str = "<unk>";
pub const EOS: &str = "<eos>";

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Vocabulary {
    pub kind: TokenizerKind,
    /// Token strings by id.
    pub tokens: Vec<String>,
    #[serde(skip)]
    index: HashMap<String, u32>,
}

impl PartialEq for Vocabulary {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.tokens == other.tokens
    }
}

impl Vocabulary {
    /// Builds the vocabulary of `text`: specials first, then tokens by descending frequency (ties in
    /// byte order, so the result never depends on hash order), up to `cap` entries in all. Tokens beyond
    /// the cap become `<unk>`.
    pub fn build(kind: TokenizerKind, text: &str, cap: usize) -> Self {
        let mut counts: HashMap<String, usize> = HashMap::new();
        match kind {
            TokenizerKind::Char => {
                for ch in text.chars() {
                    *counts.entry(ch.to_string()).or_default() += 1;
                }
            }
            TokenizerKind::Word => {
                for word in text.split_whitespace() {
                    *counts.entry(word.to_string()).or_default() += 1;
                }
            }
        }
        let specials: &[&str] = match kind {
            TokenizerKind::Char => &[UNK],
            TokenizerKind::Word => &[UNK, EOS],
        };
        for special in specials {
            counts.remove(*special);
        }
        let mut ranked: Vec<(String, usize)> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut tokens: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
        let room = cap.max(tokens.len()) - tokens.len();
        tokens.extend(ranked.into_iter().take(room).map(|(t, _)| t));
        Self::from_tokens(kind, tokens)
    }

    pub fn from_tokens(kind: TokenizerKind, tokens: Vec<String>) -> Self {
        let index = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        Vocabulary { kind, tokens, index }
    }

    /// Restores the lookup table after deserialisation.
    pub fn reindex(self) -> Self {
        Self::from_tokens(self.kind, self.tokens)
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn id(&self, token: &str) -> Option<u32> {
        self.index.get(token).copied()
    }

    fn unk(&self) -> u32 {
        self.id(UNK).unwrap_or(0)
    }

    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_noting_unknown(text, |_, _| {})
    }

    /// [`encode`](Self::encode), calling `unknown(position, piece)` for every piece of the text that is
    /// not in the vocabulary and so became `<unk>` (a literal `<unk>` in the text is not reported):
    /// an explanation must say that the model read something other than what was written.
    pub fn encode_noting_unknown(&self, text: &str, mut unknown: impl FnMut(usize, &str)) -> Vec<u32> {
        let unk = self.unk();
        let capacity = if self.kind == TokenizerKind::Char { text.len() } else { text.len() / 5 };
        let mut ids = Vec::with_capacity(capacity);
        let mut push = |ids: &mut Vec<u32>, piece: &str| {
            let id = self.id(piece).unwrap_or_else(|| {
                unknown(ids.len(), piece);
                unk
            });
            ids.push(id);
        };
        match self.kind {
            TokenizerKind::Char => {
                let mut buf = [0u8; 4];
                for c in text.chars() {
                    push(&mut ids, c.encode_utf8(&mut buf));
                }
            }
            TokenizerKind::Word => {
                let eos = self.id(EOS).unwrap_or(unk);
                for line in text.lines() {
                    for word in line.split_whitespace() {
                        push(&mut ids, word);
                    }
                    ids.push(eos);
                }
            }
        }
        ids
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        let token = |id: u32| self.tokens.get(id as usize).map(String::as_str).unwrap_or(UNK);
        match self.kind {
            TokenizerKind::Char => ids.iter().map(|&i| token(i)).collect(),
            TokenizerKind::Word => {
                let mut out = String::new();
                for &id in ids {
                    let t = token(id);
                    if t == EOS {
                        out.push('\n');
                    } else {
                        if !out.is_empty() && !out.ends_with('\n') {
                            out.push(' ');
                        }
                        out.push_str(t);
                    }
                }
                out
            }
        }
    }
}

/// Entropy in nats of the unigram distribution of `ids` over a vocabulary of `size`: the loss of the
/// best model that ignores context, and so the bar a trained model must clear.
pub fn unigram_entropy(ids: &[u32], size: usize) -> f64 {
    let mut counts = vec![0usize; size];
    for &i in ids {
        if let Some(c) = counts.get_mut(i as usize) {
            *c += 1;
        }
    }
    let n = ids.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_vocabulary_ranks_by_frequency_caps_and_closes_lines() {
        let text = "b a a\nc a b\n\nd\n";
        let vocab = Vocabulary::build(TokenizerKind::Word, text, 4);
        assert_eq!(vocab.tokens, vec!["<unk>", "<eos>", "a", "b"]);
        let ids = vocab.encode(text);
        // four lines, the empty one included, each closed by <eos>; c and d are beyond the cap
        assert_eq!(ids, vec![3, 2, 2, 1, 0, 2, 3, 1, 1, 0, 1]);
        assert_eq!(vocab.decode(&ids), "b a a\n<unk> a b\n\n<unk>\n");
    }

    #[test]
    fn wikitext_unk_is_the_unknown_token_not_a_word() {
        let vocab = Vocabulary::build(TokenizerKind::Word, "the <unk> the cat", 10);
        assert_eq!(vocab.tokens.iter().filter(|t| *t == UNK).count(), 1);
        assert_eq!(vocab.encode("<unk> dog"), vec![0, 0, 1]);
    }

    #[test]
    fn char_vocabulary_round_trips_unicode() {
        let text = "héllo\nwörld\n";
        let vocab = Vocabulary::build(TokenizerKind::Char, text, 100);
        let ids = vocab.encode(text);
        assert_eq!(ids.len(), text.chars().count());
        assert_eq!(vocab.decode(&ids), text);
        assert_eq!(vocab.encode("z"), vec![0]);
    }

    #[test]
    fn vocabulary_survives_serialisation() {
        let vocab = Vocabulary::build(TokenizerKind::Word, "x y z y", 10);
        let json = serde_json::to_string(&vocab).unwrap();
        let back: Vocabulary = serde_json::from_str::<Vocabulary>(&json).unwrap().reindex();
        assert_eq!(back, vocab);
        assert_eq!(back.encode("y"), vocab.encode("y"));
    }

    #[test]
    fn unigram_entropy_of_a_uniform_stream_is_log_of_its_support() {
        let ids: Vec<u32> = (0..400).map(|i| i % 4).collect();
        assert!((unigram_entropy(&ids, 10) - 4f64.ln()).abs() < 1e-12);
    }
}
