//! Block members checked against each other and against a vocabulary, in time linear in the words
//! (hash maps, never a scan per word) and with bounded output: a 5 MB gazetteer with thousands of
//! unknown words prints a handful of them in full and a count for the rest.

use std::collections::{HashMap, HashSet};

use codespan_reporting::diagnostic::{Diagnostic, Label};

use super::syntax::{BlockDecl, Located, Member, Span};
use crate::data::Vocabulary;
use crate::locality::rules::MemberResolver;
use crate::suggest::closest;

/// How many diagnostics of one kind are shown in full before the rest are counted.
pub const SHOWN_PER_KIND: usize = 5;

fn quoted(words: &[&str]) -> String {
    words.iter().map(|w| format!("`{w}`")).collect::<Vec<_>>().join(", ")
}

/// Vocabulary entries a misspelt word may have meant: other casings first (`Publius.` → `PUBLIUS.`),
/// then the closest by edit distance.
fn suggestions<'v>(
    word: &str,
    resolver: &MemberResolver,
    folded: &FoldedVocabulary,
    vocabulary: &'v Vocabulary,
) -> Vec<&'v str> {
    let mut found: Vec<&str> =
        resolver.word(word, true).into_iter().map(|id| vocabulary.tokens[id as usize].as_str()).collect();
    found.retain(|t| *t != word);
    found.truncate(3);
    if found.len() < 3 {
        // then by edit distance with case ignored, so `Publius` still finds `PUBLIUS.`
        for candidate in closest(&word.to_lowercase(), folded.keys.iter().copied(), 6) {
            for &id in folded.ids.get(candidate).copied().unwrap_or_default() {
                let token = vocabulary.tokens[id as usize].as_str();
                if found.len() < 3 && !found.contains(&token) && token != word {
                    found.push(token);
                }
            }
        }
    }
    found
}

/// The vocabulary's lowercased entries, sorted (so that ties come in a fixed order), with the ids of
/// their casings: built once per check, only when a missing word is shown.
struct FoldedVocabulary<'r> {
    keys: Vec<&'r str>,
    ids: HashMap<&'r str, &'r [u32]>,
}

impl<'r> FoldedVocabulary<'r> {
    fn new(resolver: &'r MemberResolver) -> Self {
        let ids: HashMap<&str, &[u32]> = resolver.lowercase_entries().collect();
        let mut keys: Vec<&str> = ids.keys().copied().collect();
        keys.sort_unstable();
        FoldedVocabulary { keys, ids }
    }
}

/// Diagnostics of one kind, of which only the first [`SHOWN_PER_KIND`] are built in full (building
/// one can cost a scan of the vocabulary); the rest are counted in one note.
pub(super) struct Bounded<T> {
    pub(super) entries: Vec<T>,
}

impl<T> Bounded<T> {
    pub(super) fn new() -> Self {
        Bounded { entries: Vec::new() }
    }

    pub(super) fn emit(
        self,
        all: bool,
        diagnostics: &mut Vec<Diagnostic<usize>>,
        mut build: impl FnMut(&T) -> Diagnostic<usize>,
        rest: impl FnOnce(usize) -> String,
    ) {
        let shown = if all { self.entries.len() } else { SHOWN_PER_KIND.min(self.entries.len()) };
        for entry in &self.entries[..shown] {
            diagnostics.push(build(entry));
        }
        let hidden = self.entries.len() - shown;
        if hidden > 0 {
            diagnostics.push(Diagnostic::note().with_message(rest(hidden)));
        }
    }
}

pub(super) fn count(n: usize, one: &str, many: &str) -> String {
    let number = super::syntax::thousands(n as i128);
    format!("{number} {}", if n == 1 { one } else { many })
}

/// Who first claimed a word or a token: the file, the block's name and the member's span.
#[derive(Clone)]
struct Claim<'a> {
    file: usize,
    block: &'a str,
    span: Span,
}

/// Claims `ids` for a member; returns those another block claimed first, with that block's claim.
fn claim_tokens<'a>(ids: Vec<u32>, claim: Claim<'a>, owners: &mut HashMap<u32, Claim<'a>>) -> Vec<(u32, Claim<'a>)> {
    let mut taken = Vec::new();
    for id in ids {
        match owners.get(&id) {
            Some(first) if first.block != claim.block => taken.push((id, first.clone())),
            Some(_) => {}
            None => {
                owners.insert(id, claim.clone());
            }
        }
    }
    taken
}

/// Tokens of one member already claimed by other blocks: one error per (member, other block), not
/// one per token, since it is one mistake.
fn report_taken(
    file: usize,
    name: &str,
    member: &Located<String>,
    taken: Vec<(u32, Claim)>,
    what: &str,
    vocabulary: Option<&Vocabulary>,
    diagnostics: &mut Vec<Diagnostic<usize>>,
) {
    let mut by_block: Vec<(Claim, Vec<u32>)> = Vec::new();
    for (id, claim) in taken {
        match by_block.iter_mut().find(|(c, _)| c.block == claim.block) {
            Some((_, ids)) => ids.push(id),
            None => by_block.push((claim, vec![id])),
        }
    }
    for (claim, ids) in by_block {
        let tokens: Vec<&str> =
            ids.iter().take(8).map(|&id| vocabulary.map_or("", |v| v.tokens[id as usize].as_str())).collect();
        let more = if ids.len() > 8 { format!(" and {} more", ids.len() - 8) } else { String::new() };
        let message = if ids.len() == 1 {
            format!("`{}` is in two blocks", tokens[0])
        } else {
            format!("{} are in two blocks", count(ids.len(), "token", "tokens"))
        };
        diagnostics.push(
            Diagnostic::error()
                .with_message(message)
                .with_labels(vec![
                    Label::primary(file, member.span.clone())
                        .with_message(format!("this {what} in `{name}` matches {}{more}", quoted(&tokens))),
                    Label::secondary(claim.file, claim.span.clone())
                        .with_message(format!("already in `{}`", claim.block)),
                ])
                .with_notes(vec!["a token belongs to at most one block".into()]),
        );
    }
}

/// The members of every declared block, checked. Returns the names of the blocks without anchors.
pub(super) fn check_members<'a>(
    declared: &[(usize, &'a BlockDecl)],
    vocabulary: Option<&Vocabulary>,
    all: bool,
    diagnostics: &mut Vec<Diagnostic<usize>>,
) -> Vec<&'a str> {
    let resolver = vocabulary.map(MemberResolver::new);
    let mut word_owner: HashMap<String, Claim> = HashMap::new();
    let mut token_owner: HashMap<u32, Claim> = HashMap::new();
    let mut missing: Bounded<(usize, Located<String>)> = Bounded::new();
    let mut case_only: Bounded<(usize, Located<String>, Vec<u32>)> = Bounded::new();
    let mut spaced: Bounded<(usize, Located<String>)> = Bounded::new();
    let mut unmatched: Bounded<(usize, Span)> = Bounded::new();
    let mut anchorless = Vec::new();

    for &(file, block) in declared {
        let name = block.name.value.as_str();
        let mut resolved_any = false;
        for member in &block.members {
            match member {
                Member::Word(word) => {
                    let key = if block.ignore_case { word.value.to_lowercase() } else { word.value.clone() };
                    if let Some(first) = word_owner.get(&key) {
                        resolved_any = true; // reported here, so the block is not also called empty
                        if first.block != name {
                            diagnostics.push(
                                Diagnostic::error()
                                    .with_message(format!("`{}` is in two blocks", word.value))
                                    .with_labels(vec![
                                        Label::primary(file, word.span.clone())
                                            .with_message(format!("listed in `{name}`")),
                                        Label::secondary(first.file, first.span.clone())
                                            .with_message(format!("already listed in `{}`", first.block)),
                                    ])
                                    .with_notes(vec!["a word belongs to at most one block".into()]),
                            );
                        }
                        continue;
                    }
                    word_owner.insert(key, Claim { file, block: name, span: word.span.clone() });
                    if word.value.chars().count() > 1 && word.value.chars().any(char::is_whitespace) {
                        spaced.entries.push((file, word.clone()));
                        resolved_any = true;
                        continue;
                    }
                    let Some(resolver) = &resolver else { continue };
                    let ids = resolver.word(&word.value, block.ignore_case);
                    if ids.is_empty() {
                        missing.entries.push((file, word.clone()));
                        continue;
                    }
                    if block.ignore_case && vocabulary.is_some_and(|v| v.id(&word.value).is_none()) {
                        case_only.entries.push((file, word.clone(), ids.clone()));
                    }
                    resolved_any = true;
                    let taken =
                        claim_tokens(ids, Claim { file, block: name, span: word.span.clone() }, &mut token_owner);
                    report_taken(file, name, word, taken, "word", vocabulary, diagnostics);
                }
                Member::Pattern(pattern) => {
                    let matched = match &resolver {
                        Some(resolver) => resolver.pattern(&pattern.value),
                        None => regex::Regex::new(&pattern.value).map(|_| Vec::new()).map_err(|e| e.to_string()),
                    };
                    match matched {
                        Err(e) => {
                            resolved_any = true; // reported here, so not also an empty block
                            diagnostics.push(
                                Diagnostic::error()
                                    .with_message("this pattern is not a valid regular expression")
                                    .with_labels(vec![Label::primary(file, pattern.span.clone())
                                        .with_message(e.lines().last().unwrap_or("invalid").trim().to_string())]),
                            )
                        }
                        Ok(ids) if ids.is_empty() && resolver.is_some() => {
                            unmatched.entries.push((file, pattern.span.clone()))
                        }
                        Ok(ids) => {
                            resolved_any |= !ids.is_empty();
                            let claim = Claim { file, block: name, span: pattern.span.clone() };
                            let taken = claim_tokens(ids, claim, &mut token_owner);
                            report_taken(file, name, pattern, taken, "pattern", vocabulary, diagnostics);
                        }
                    }
                }
            }
        }
        if vocabulary.is_some() && !resolved_any {
            diagnostics.push(Diagnostic::error().with_message(format!("block `{name}` is empty")).with_labels(
                vec![Label::primary(
                    file,
                    block.name.span.clone(),
                )
                .with_message("none of its words occurs in the vocabulary")],
            ));
        }
        check_anchors(file, block, resolver.as_ref(), &token_owner, diagnostics);
        if block.anchors.is_empty() {
            anchorless.push(name);
        }
    }

    if let (Some(resolver), Some(vocabulary)) = (&resolver, vocabulary) {
        let folded = (!missing.entries.is_empty()).then(|| FoldedVocabulary::new(resolver));
        missing.emit(
            all,
            diagnostics,
            |(file, word)| {
                let mut diagnostic = Diagnostic::warning()
                    .with_message(format!("`{}` is not in the vocabulary", word.value))
                    .with_labels(vec![Label::primary(*file, word.span.clone())
                        .with_message("this word never occurs, so it is left out of the block")]);
                let near = folded.as_ref().map_or_else(Vec::new, |f| suggestions(&word.value, resolver, f, vocabulary));
                if !near.is_empty() {
                    diagnostic = diagnostic.with_notes(vec![format!("closest entries: {}", quoted(&near))]);
                }
                diagnostic
            },
            |hidden| {
                format!(
                    "and {} not in the vocabulary; `ailla check --all` lists them",
                    count(hidden, "more word", "more words")
                )
            },
        );
        case_only.emit(
            all,
            diagnostics,
            |(file, word, ids)| {
                let variants: Vec<&str> =
                    ids.iter().take(4).map(|&id| vocabulary.tokens[id as usize].as_str()).collect();
                Diagnostic::warning()
                    .with_message(format!("`{}` occurs only in another casing", word.value))
                    .with_labels(vec![Label::primary(*file, word.span.clone())
                        .with_message(format!("matches only {}", quoted(&variants)))])
                    .with_notes(vec![
                        "the block ignores case, so it takes these tokens; check that they are the ones meant".into(),
                    ])
            },
            |hidden| {
                format!(
                    "and {} that occur only in another casing; `ailla check --all` lists them",
                    count(hidden, "more word", "more words")
                )
            },
        );
    }
    unmatched.emit(
        all,
        diagnostics,
        |(file, span)| {
            Diagnostic::warning()
                .with_message("this pattern matches no vocabulary entry")
                .with_labels(vec![Label::primary(*file, span.clone())])
        },
        |hidden| {
            format!(
                "and {} that match nothing; `ailla check --all` lists them",
                count(hidden, "more pattern", "more patterns")
            )
        },
    );
    spaced.emit(
        all,
        diagnostics,
        |(file, word)| {
            Diagnostic::warning()
                .with_message(format!("`{}` contains whitespace, so it can never match a token", word.value))
                .with_labels(vec![Label::primary(*file, word.span.clone()).with_message("no token holds a space")])
                .with_notes(vec!["list each word on its own: `new, york`; a block's members are single tokens".into()])
        },
        |hidden| {
            format!("and {} with whitespace; `ailla check --all` lists them", count(hidden, "more word", "more words"))
        },
    );
    anchorless
}

/// Anchors are members of their block; a stray one is offered the closest member.
fn check_anchors(
    file: usize,
    block: &BlockDecl,
    resolver: Option<&MemberResolver>,
    token_owner: &HashMap<u32, Claim>,
    diagnostics: &mut Vec<Diagnostic<usize>>,
) {
    if block.anchors.is_empty() {
        return;
    }
    let fold = |w: &str| if block.ignore_case { w.to_lowercase() } else { w.to_string() };
    let member_words: Vec<&str> = block
        .members
        .iter()
        .filter_map(|m| if let Member::Word(w) = m { Some(w.value.as_str()) } else { None })
        .collect();
    let members: HashSet<String> = member_words.iter().map(|w| fold(w)).collect();
    let has_patterns = block.members.iter().any(|m| matches!(m, Member::Pattern(_)));
    for anchor in &block.anchors {
        let is_member = members.contains(&fold(&anchor.value));
        let by_pattern = has_patterns
            && resolver.is_some_and(|r| {
                let ids = r.word(&anchor.value, block.ignore_case);
                !ids.is_empty() && ids.iter().all(|id| token_owner.get(id).is_some_and(|c| c.block == block.name.value))
            });
        if is_member || by_pattern {
            continue;
        }
        let mut notes = vec!["an anchor is one of the block's own words".to_string()];
        let by_case = member_words.iter().find(|w| w.to_lowercase() == anchor.value.to_lowercase());
        if let Some(near) =
            by_case.copied().or_else(|| closest(&anchor.value, member_words.iter().copied(), 1).first().copied())
        {
            notes.push(format!("did you mean `{near}`?"));
        }
        diagnostics.push(
            Diagnostic::error()
                .with_message(format!("anchor `{}` is not a member of block `{}`", anchor.value, block.name.value))
                .with_labels(vec![Label::primary(file, anchor.span.clone())])
                .with_notes(notes),
        );
    }
}
