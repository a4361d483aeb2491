//! Pipeline problems drawn as the rules language draws its errors (codespan): the message once, the
//! file, line and column once, the line itself with a caret under the field, and help as notes.

use std::path::Path;

use codespan_reporting::diagnostic::{Diagnostic, Label};
use codespan_reporting::files::SimpleFiles;

use super::Problem;

/// Every problem of `text` (the pipeline file at `path`), as one block of text.
pub fn render(path: &Path, text: &str, problems: &[Problem]) -> String {
    let mut files = SimpleFiles::new();
    let file = files.add(path.display().to_string(), text);
    let config = codespan_reporting::term::Config::default();
    problems
        .iter()
        .map(|problem| {
            let diagnostic = diagnostic(file, path, text, problem);
            codespan_reporting::term::emit_into_string(&config, &files, &diagnostic).unwrap_or_else(|e| e.to_string())
        })
        .collect()
}

fn diagnostic(file: usize, path: &Path, text: &str, problem: &Problem) -> Diagnostic<usize> {
    let (headline, rest) = problem.message.split_once('\n').unwrap_or((&problem.message, ""));
    let mut notes = Vec::new();
    if rest.lines().any(|l| l.trim_start().starts_with("--> ")) {
        // the YAML parser's own snippet of the line: the label below draws it, its help stays
        notes.extend(rest.lines().filter_map(|l| l.trim().strip_prefix("help: ")).map(str::to_string));
    } else if !rest.trim().is_empty() {
        notes.push(rest.trim_end().to_string());
    }
    let field = if problem.field.is_empty() { String::new() } else { format!("`{}`: ", problem.field) };
    let diagnostic = Diagnostic::error().with_notes(notes);
    match (problem.line, problem.column) {
        (Some(line), Some(column)) => {
            let range = token_at(text, line, column);
            diagnostic.with_message(format!("{field}{headline}")).with_labels(vec![Label::primary(file, range)])
        }
        // a problem of the whole file (a sweep too large, a file that is not YAML at all)
        _ => diagnostic.with_message(format!("{}: {field}{headline}", path.display())),
    }
}

/// The bytes of the word at 1-based `line` and `column`: up to the next space or `:`, at least one
/// character, clamped to the text.
fn token_at(text: &str, line: usize, column: usize) -> std::ops::Range<usize> {
    let line_start: usize = text.split_inclusive('\n').take(line.saturating_sub(1)).map(str::len).sum();
    let line_text = text[line_start.min(text.len())..].lines().next().unwrap_or("");
    let start_in_line = line_text.char_indices().nth(column.saturating_sub(1)).map_or(line_text.len(), |(i, _)| i);
    let word = &line_text[start_in_line..];
    let length = word.find(|c: char| c.is_whitespace() || c == ':').unwrap_or(word.len());
    let start = (line_start + start_in_line).min(text.len());
    let end = (start + length.max(1)).min(text.len());
    start..end.max(start)
}

#[cfg(test)]
pub(super) fn token_at_for_tests(text: &str, line: usize, column: usize) -> std::ops::Range<usize> {
    token_at(text, line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caret_covers_the_word_at_the_position() {
        let text = "name: x\ntrain:\n  stpes: 10\n";
        assert_eq!(&text[token_at(text, 3, 3)], "stpes");
        assert_eq!(&text[token_at(text, 1, 1)], "name");
        // a position past the end of the file is clamped rather than a panic
        assert_eq!(token_at(text, 9, 9), text.len()..text.len());
    }
}
