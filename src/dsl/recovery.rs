//! Reading past syntax errors, and saying what went wrong where it went wrong.
//!
//! pest reports the furthest point it reached, with every alternative it tried there. For a domain
//! expert that is often the wrong place (a trailing comma is reported on the next line, where the
//! next statement was read as one more word of the list) and the wrong words (eleven alternatives).
//! So a failing file is cut into statements at lines that start with a statement keyword, each is
//! parsed on its own, and a failure is explained by looking at the text around it: the comma before
//! it, a `#` that started a comment, a fraction where a whole number belongs, a misspelt keyword.

use std::ops::Range;

use super::syntax::{describe, Located, Member, ParseFailure, Query, Rule, RuleBody, Span, Statement, Target};
use crate::suggest::closest;

/// The keywords that begin a statement; after a syntax error, reading resumes at the next line that
/// starts with one of them.
const STATEMENT_KEYWORDS: [&str; 4] = ["block", "rule", "include", "recruitable"];

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Byte ranges of the comments in `text`: from a `#` outside quoted text to the end of its line.
/// Quoted text never spans lines, so a line-by-line scan that tracks quotes and escapes is exact.
pub fn comment_ranges(text: &str) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let mut in_quotes = false;
        let mut escaped = false;
        for (i, c) in line.char_indices() {
            if in_quotes {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => in_quotes = false,
                    _ => {}
                }
            } else if c == '"' {
                in_quotes = true;
            } else if c == '#' {
                let end = line.trim_end_matches(['\n', '\r']).len();
                ranges.push(offset + i..offset + end.max(i + 1));
                break;
            }
        }
        offset += line.len();
    }
    ranges
}

/// The statements of a file that does not parse as a whole: byte ranges that each start at a line
/// whose first word is a statement keyword followed by a space or a quote, as a statement's is (so
/// that `rule,` or `block.size` inside a list of words does not split it; the text before the first
/// one is a range of its own).
pub fn statement_chunks(source: &str) -> Vec<Range<usize>> {
    let mut starts = vec![0];
    let mut offset = 0;
    for line in source.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let starts_statement = STATEMENT_KEYWORDS
            .iter()
            .any(|keyword| trimmed.strip_prefix(keyword).is_some_and(|rest| rest.starts_with([' ', '\t', '"'])));
        if starts_statement && offset + indent > 0 {
            starts.push(offset + indent);
        }
        offset += line.len();
    }
    starts.push(source.len());
    starts.windows(2).map(|w| w[0]..w[1]).filter(|r| !r.is_empty()).collect()
}

fn shift_span(span: &mut Span, by: usize) {
    *span = span.start + by..span.end + by;
}

fn shift_located<T>(located: &mut Located<T>, by: usize) {
    shift_span(&mut located.span, by);
}

fn shift_target(target: &mut Target, by: usize) {
    match target {
        Target::Block(name) | Target::AnchorsOf(name) => shift_located(name, by),
        Target::OwnBlock(span) | Target::Previous(span) | Target::Continuation(span) => shift_span(span, by),
    }
}

fn shift_query(query: &mut Query, by: usize) {
    match query {
        Query::Any(span) => shift_span(span, by),
        Query::Block(name) => shift_located(name, by),
    }
}

/// `statement` as read from a piece of the file that starts `by` bytes in: every span moved there.
pub fn shifted(mut statement: Statement, by: usize) -> Statement {
    if by == 0 {
        return statement;
    }
    match &mut statement {
        Statement::Include(path) => shift_located(path, by),
        Statement::Block(block) => {
            shift_located(&mut block.name, by);
            shift_span(&mut block.span, by);
            for member in &mut block.members {
                match member {
                    Member::Word(word) | Member::Pattern(word) => shift_located(word, by),
                }
            }
            block.anchors.iter_mut().for_each(|anchor| shift_located(anchor, by));
        }
        Statement::Rule(rule) => {
            shift_located(&mut rule.name, by);
            shift_span(&mut rule.span, by);
            match &mut rule.body {
                RuleBody::Attend { query, target } | RuleBody::Copy { query, source: target } => {
                    shift_query(query, by);
                    shift_target(target, by);
                }
                RuleBody::Pair { open, close } => {
                    shift_located(open, by);
                    shift_located(close, by);
                }
            }
            rule.options.shift(by);
        }
    }
    statement
}

/// The name a statement that failed to parse declares, when it is a block: rules that name it are
/// then not also reported as naming an undeclared block.
pub fn declared_block_name(chunk: &str) -> Option<String> {
    let mut words = chunk.split_whitespace();
    let mut first = words.next()?;
    if first == "recruitable" {
        first = words.next()?;
    }
    if first != "block" {
        return None;
    }
    let name: String = words.next()?.chars().take_while(|&c| is_name_char(c)).collect();
    (!name.is_empty()).then_some(name)
}

/// The keyword a grammar rule stands for, where it is one word.
fn keyword_of(grammar_rule: Rule) -> Option<&'static str> {
    Some(match grammar_rule {
        Rule::kw_include | Rule::include => "include",
        Rule::kw_block | Rule::block => "block",
        Rule::kw_recruitable | Rule::recruitable_block => "recruitable",
        Rule::kw_rule | Rule::rule => "rule",
        Rule::kw_anchors | Rule::anchors | Rule::anchors_of => "anchors",
        Rule::kw_pattern | Rule::pattern => "pattern",
        Rule::kw_seeded => "seeded",
        Rule::kw_by => "by",
        Rule::kw_ignoring | Rule::ignoring_case => "ignoring",
        Rule::kw_case => "case",
        Rule::kw_pair | Rule::pair => "pair",
        Rule::kw_and => "and",
        Rule::kw_attends => "attends",
        Rule::kw_attend | Rule::attend => "attend",
        Rule::kw_to => "to",
        Rule::kw_any | Rule::any_token => "any",
        Rule::kw_token => "token",
        Rule::kw_of => "of",
        Rule::kw_own | Rule::own_block => "own",
        Rule::kw_previous | Rule::previous => "previous",
        Rule::kw_occurrence => "occurrence",
        Rule::kw_continuation | Rule::continuation => "continuation",
        Rule::kw_within | Rule::within => "within",
        Rule::kw_in | Rule::layers | Rule::heads => "in",
        Rule::kw_layers => "layers",
        Rule::kw_heads => "heads",
        Rule::kw_strength | Rule::strength => "strength",
        Rule::kw_priority | Rule::priority => "priority",
        Rule::kw_from | Rule::from_step => "from",
        Rule::kw_until | Rule::until_step => "until",
        Rule::kw_step => "step",
        Rule::kw_copy | Rule::copy_from => "copy",
        Rule::kw_copies | Rule::copies => "copies",
        _ => return None,
    })
}

/// What was expected, in at most a few phrases: the statement keywords and the rule options each
/// collapse into one phrase, since listing all eleven alternatives helps nobody.
fn expected_phrase(positives: &[Rule]) -> String {
    const STATEMENTS: [&str; 4] = ["`include`", "`block`", "`recruitable block`", "`rule`"];
    const OPTIONS: [&str; 8] =
        ["`within`", "`in layers`", "`in heads`", "`strength`", "`priority`", "`from step`", "`until step`", "`from`"];
    let mut phrases: Vec<&str> = Vec::new();
    for &grammar_rule in positives {
        let phrase = describe(grammar_rule);
        if !phrases.contains(&phrase) {
            phrases.push(phrase);
        }
    }
    let mut grouped: Vec<String> = Vec::new();
    let option_count = phrases.iter().filter(|p| OPTIONS.contains(p) || **p == "`in layers` or `in heads`").count();
    let statement_count = phrases.iter().filter(|p| STATEMENTS.contains(p)).count();
    let mut said_options = false;
    let mut said_statement = false;
    for phrase in phrases {
        let is_option = OPTIONS.contains(&phrase) || phrase == "`in layers` or `in heads`";
        if is_option && option_count > 2 {
            if !said_options {
                grouped.push("a rule option (`within`, `strength`, …)".into());
                said_options = true;
            }
        } else if STATEMENTS.contains(&phrase) && statement_count > 2 {
            if !said_statement {
                grouped.push("the next statement".into());
                said_statement = true;
            }
        } else if phrase == "the end of the file" && statement_count > 2 {
            // the next statement covers it
        } else {
            grouped.push(phrase.to_string());
        }
    }
    match grouped.len() {
        0 => "something else".into(),
        1 => grouped.remove(0),
        n => format!("{} or {}", grouped[..n - 1].join(", "), grouped[n - 1]),
    }
}

/// The last character before `position` that is neither whitespace nor in a comment, with its offset.
fn significant_before(text: &str, comments: &[Range<usize>], position: usize) -> Option<(usize, char)> {
    let mut end = position;
    loop {
        let (index, c) = text[..end].char_indices().next_back()?;
        if let Some(comment) = comments.iter().find(|r| r.contains(&index)) {
            end = comment.start;
        } else if c.is_whitespace() {
            end = index;
        } else {
            return Some((index, c));
        }
    }
}

/// The bare word that ends at byte `end` of `text`, and where it starts.
fn word_ending_at(text: &str, end: usize) -> (usize, &str) {
    let start = text[..end]
        .rfind(|c: char| !is_name_char(c))
        .map_or(0, |i| i + text[i..].chars().next().map_or(1, char::len_utf8));
    (start, &text[start..end])
}

/// Nothing but whitespace and comments from `position` to the end of `text`.
fn only_trivia_after(text: &str, comments: &[Range<usize>], position: usize) -> bool {
    let mut index = position;
    while index < text.len() {
        if let Some(comment) = comments.iter().find(|r| r.start == index) {
            index = comment.end;
            continue;
        }
        let Some(c) = text[index..].chars().next() else { break };
        if !c.is_whitespace() {
            return false;
        }
        index += c.len_utf8();
    }
    true
}

/// A pest failure inside `chunk` (which starts `offset` bytes into the file) in the language's words,
/// blamed on the spot that needs the fix.
pub fn explain(error: pest::error::Error<Rule>, chunk: &str, offset: usize) -> ParseFailure {
    let position = match error.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((a, _)) => a,
    };
    let positives: Vec<Rule> = match &error.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => positives.clone(),
        pest::error::ErrorVariant::CustomError { .. } => Vec::new(),
    };
    let at = |range: Range<usize>| range.start + offset..range.end + offset;
    let comments = comment_ranges(chunk);
    let rest = &chunk[position..];
    let found_word: String = rest.split_whitespace().next().map(|w| w.chars().take(24).collect()).unwrap_or_default();
    let found_name: &str = &rest[..rest.find(|c: char| !is_name_char(c)).unwrap_or(rest.len())];
    let at_end = only_trivia_after(chunk, &comments, position);
    let before = significant_before(chunk, &comments, position);
    let expected = expected_phrase(&positives);
    let wants_word = positives.iter().any(|r| matches!(r, Rule::word | Rule::bare_word | Rule::members | Rule::words));

    // a fraction where a whole number belongs: `within 2.5`, `priority 1.5`
    if rest.starts_with('.') && rest[1..].starts_with(|c: char| c.is_ascii_digit()) {
        if let Some((digit_end, _)) = before.filter(|(i, c)| c.is_ascii_digit() && i + 1 == position) {
            let start = chunk[..digit_end + 1].rfind(|c: char| !c.is_ascii_digit()).map_or(0, |i| i + 1);
            let end = position + 1 + rest[1..].find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len() - 1);
            let (_, clause) = word_ending_at(chunk, chunk[..start].trim_end().len());
            return ParseFailure::syntax(at(start..end), format!("`{}` is not a whole number", &chunk[start..end]))
                .with_note(format!(
                    "`{clause}` takes a whole number; only `strength` takes a fraction, such as `strength 1.5`"
                ));
        }
    }

    // a negative number, or a fraction without its leading 0, where a number belongs
    let wants_number = positives.iter().any(|r| matches!(r, Rule::count | Rule::counts | Rule::number | Rule::signed));
    if wants_number
        && (rest.starts_with('-') || rest.starts_with('.'))
        && rest[1..].starts_with(|c: char| c.is_ascii_digit())
    {
        let end = position + 1 + rest[1..].find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len() - 1);
        let number = &chunk[position..end];
        let (_, clause) = word_ending_at(chunk, chunk[..position].trim_end().len());
        let note = if number.starts_with('.') {
            format!("write it with its leading zero: `0{number}`")
        } else if clause == "priority" {
            "a priority may be negative, but not a fraction".to_string()
        } else {
            format!("`{clause}` cannot be negative; only `priority` can")
        };
        return ParseFailure::syntax(at(position..end), format!("`{number}` cannot stand here")).with_note(note);
    }
    // a quote that is never closed on its line
    if rest.starts_with('"') {
        let line = &rest[..rest.find('\n').unwrap_or(rest.len())];
        let mut escaped = false;
        let closed = line[1..].chars().any(|c| {
            let close = c == '"' && !escaped;
            escaped = c == '\\' && !escaped;
            close
        });
        if !closed {
            return ParseFailure::syntax(at(position..position + 1), "this quote is never closed")
                .with_note("quoted text ends with a `\"` on the same line");
        }
    }

    // `#` where a word was expected: the rest of the line became a comment
    if let Some((separator, c)) = before {
        if c == ',' || c == ':' || wants_word {
            let comment = comments.iter().find(|r| r.start > separator && r.start <= position);
            if let Some(comment) = comment.filter(|r| !chunk[separator..r.start].contains('\n')) {
                let text = &chunk[comment.clone()];
                if text[1..].starts_with(|c: char| !c.is_whitespace()) {
                    let word_end =
                        comment.start + text.find(|c: char| c.is_whitespace() || c == ',').unwrap_or(text.len());
                    let word = &chunk[comment.start..word_end];
                    return ParseFailure::syntax(
                        at(comment.start..word_end),
                        format!("`#` starts a comment, so `{word}` and the rest of the line are not read"),
                    )
                    .with_note(format!("to use it as a word, quote it: \"{word}\""));
                }
            }
        }
    }

    if let Some((comma, ',')) = before {
        // a list that ends with a comma
        if at_end {
            return ParseFailure::syntax(at(comma..comma + 1), "nothing follows this comma")
                .with_note("remove the trailing comma, or write the item that is missing after it");
        }
    }
    // a keyword read as one more word of a list because of the comma before it: `…, anchors x`
    if let Some((last, c)) = before {
        let (word_start, word) = word_ending_at(chunk, last + c.len_utf8());
        if super::syntax::KEYWORDS.contains(&word) {
            if let Some((comma, ',')) = significant_before(chunk, &comments, word_start) {
                return ParseFailure::syntax(
                    at(comma..comma + 1),
                    format!("this comma makes `{word}` one more word of the list"),
                )
                .with_note(format!(
                    "remove the comma to start `{word}` here; to list the word `{word}` itself, quote it: \"{word}\""
                ));
            }
        }
    }

    // a comma inside what was meant as one word: `pair a,b and c`
    if rest.starts_with(',') && before.is_some_and(|(i, c)| i + c.len_utf8() == position && c != ',') {
        // the grammar's whitespace is ASCII: a no-break space is part of a word
        let word_start = chunk[..position].rfind([' ', '\t', '\r', '\n']).map_or(0, |i| i + 1);
        let word_end = position + rest.find([' ', '\t', '\r', '\n']).unwrap_or(rest.len());
        if word_end > position + 1 {
            return ParseFailure::syntax(at(position..position + 1), format!("expected {expected}, found a comma"))
                .with_note(format!(
                    "a comma separates words; a word that contains one must be quoted: \"{}\"",
                    &chunk[word_start..word_end]
                ));
        }
    }

    let found_span = if at_end {
        // just after the last word, on its line, rather than at the start of the next statement
        let end = before.map_or(position, |(i, c)| i + c.len_utf8());
        end..end
    } else {
        position..position + found_word.len()
    };
    let label = if at_end {
        format!("expected {expected}, found the end of the statement")
    } else {
        format!("expected {expected}, found `{found_word}`")
    };
    let mut failure = ParseFailure::syntax(at(found_span), label);

    if !found_name.is_empty() && positives.contains(&Rule::block_name) && super::syntax::KEYWORDS.contains(&found_name)
    {
        failure.span = at(position..position + found_name.len());
        return failure
            .with_note(format!("`{found_name}` is a keyword of the rules language, so it cannot name a block"))
            .with_note(format!("choose another name, such as `{found_name}s` or `{found_name}_block`"));
    }
    let previous_word = before.map(|(i, c)| word_ending_at(chunk, i + c.len_utf8()).1).unwrap_or("");
    if positives.contains(&Rule::text) && previous_word == "rule" {
        let name = if found_name.is_empty() { "its name" } else { found_name };
        return failure.with_note(format!("a rule's name is quoted: rule \"{name}\":"));
    }
    let touching = before.is_some_and(|(i, c)| i + c.len_utf8() == position && is_name_char(c));
    if touching && rest.starts_with(|c: char| !c.is_ascii()) {
        return failure.with_note("a block name is made of ASCII letters, digits, `_` and `-`");
    }
    let spaced = before.is_some_and(|(i, c)| {
        i + c.len_utf8() < position && !chunk[i..position].contains('\n') && c != ',' && c != ':'
    });
    if spaced && positives.contains(&Rule::comma) && !found_name.is_empty() {
        return failure
            .with_note("words are separated by commas; a quoted word with a space in it never matches a token");
    }
    let keywords: Vec<&str> = positives.iter().filter_map(|&r| keyword_of(r)).collect();
    if !found_name.is_empty() && !keywords.contains(&found_name) {
        if let Some(keyword) = closest(found_name, keywords.iter().copied(), 1).first() {
            failure = failure.with_note(format!("did you mean `{keyword}`?"));
        }
    }
    failure
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_start_outside_quotes_only() {
        let text = "block a: \"#x\", b  # note\n# whole line\nrule \"r\\\"#\": a attend to a\n";
        let found: Vec<&str> = comment_ranges(text).into_iter().map(|r| &text[r]).collect();
        assert_eq!(found, ["# note", "# whole line"]);
    }

    #[test]
    fn statements_start_at_lines_that_begin_with_a_statement_keyword() {
        let text = "# header\nblock a: x,\n  rules\nrule \"r\": a attend to a\n  blocked\ninclude \"b\"\n";
        let chunks: Vec<&str> = statement_chunks(text).into_iter().map(|r| &text[r]).collect();
        assert_eq!(
            chunks,
            ["# header\n", "block a: x,\n  rules\n", "rule \"r\": a attend to a\n  blocked\n", "include \"b\"\n"]
        );
    }
}
