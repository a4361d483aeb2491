//! Corpora and tokenizers: WikiText-style directories read by path, and the bundled generated corpus.

pub mod corpus;
pub mod generator;
pub mod tokenizer;

pub use corpus::{load_splits, Splits};
pub use tokenizer::{TokenizerKind, Vocabulary};
