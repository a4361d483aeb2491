//! Diagnostics rendered as rustc renders its own, with long source lines clipped around the spot:
//! a gazetteer written on one 5 MB line must not print 5 MB per warning.

use std::ops::Range;

use codespan_reporting::diagnostic::Diagnostic;
use codespan_reporting::files::{Error, Files, SimpleFiles};

/// Lines longer than this (in characters) are shown as a window around the label.
const LONGEST_LINE: usize = 160;
/// Characters kept on each side of a label in a clipped line.
const CONTEXT: usize = 60;
/// File ids from here on are clipped views, not files.
const FIRST_VIEW: usize = usize::MAX / 2;

/// One line shown in part: `…` + a window of it + `…`, numbered as in the file.
struct View {
    name: String,
    text: String,
    line_number: usize,
    /// Characters of the line hidden before the window, less the leading ellipsis.
    column_offset: usize,
}

struct Clipped<'a> {
    files: &'a SimpleFiles<String, String>,
    views: Vec<View>,
}

impl<'a> Files<'a> for Clipped<'a> {
    type FileId = usize;
    type Name = String;
    type Source = &'a str;

    fn name(&'a self, id: usize) -> Result<String, Error> {
        match id.checked_sub(FIRST_VIEW) {
            Some(view) => self.views.get(view).map(|v| v.name.clone()).ok_or(Error::FileMissing),
            None => self.files.name(id),
        }
    }

    fn source(&'a self, id: usize) -> Result<&'a str, Error> {
        match id.checked_sub(FIRST_VIEW) {
            Some(view) => self.views.get(view).map(|v| v.text.as_str()).ok_or(Error::FileMissing),
            None => self.files.source(id),
        }
    }

    fn line_index(&'a self, id: usize, byte_index: usize) -> Result<usize, Error> {
        match id.checked_sub(FIRST_VIEW) {
            Some(_) => Ok(0),
            None => self.files.line_index(id, byte_index),
        }
    }

    fn line_number(&'a self, id: usize, line_index: usize) -> Result<usize, Error> {
        match id.checked_sub(FIRST_VIEW) {
            Some(view) => self.views.get(view).map(|v| v.line_number).ok_or(Error::FileMissing),
            None => Ok(line_index + 1),
        }
    }

    fn column_number(&'a self, id: usize, line_index: usize, byte_index: usize) -> Result<usize, Error> {
        let source = self.source(id)?;
        let range = self.line_range(id, line_index)?;
        let column = codespan_reporting::files::column_index(source, range, byte_index) + 1;
        match id.checked_sub(FIRST_VIEW) {
            Some(view) => self.views.get(view).map(|v| column + v.column_offset).ok_or(Error::FileMissing),
            None => Ok(column),
        }
    }

    fn line_range(&'a self, id: usize, line_index: usize) -> Result<Range<usize>, Error> {
        match id.checked_sub(FIRST_VIEW) {
            Some(view) => self.views.get(view).map(|v| 0..v.text.len()).ok_or(Error::FileMissing),
            None => self.files.line_range(id, line_index),
        }
    }
}

/// The byte offset `count` characters before (negative) or after `from` in `text`, clamped to it.
fn chars_from(text: &str, from: usize, count: isize) -> usize {
    if count < 0 {
        text[..from].char_indices().rev().nth((-count - 1) as usize).map_or(0, |(i, _)| i)
    } else {
        text[from..].char_indices().nth(count as usize).map_or(text.len(), |(i, _)| from + i)
    }
}

/// `diagnostic` with every label on an over-long line moved to a clipped view of that line.
fn clip(
    files: &SimpleFiles<String, String>,
    views: &mut Vec<View>,
    mut diagnostic: Diagnostic<usize>,
) -> Diagnostic<usize> {
    for label in &mut diagnostic.labels {
        let Ok(file) = files.get(label.file_id) else { continue };
        let source = file.source().as_str();
        let (Ok(line), Ok(end_line)) =
            (files.line_index(label.file_id, label.range.start), files.line_index(label.file_id, label.range.end))
        else {
            continue;
        };
        let Ok(range) = files.line_range(label.file_id, line) else { continue };
        let line_text = source[range.clone()].trim_end_matches(['\n', '\r']);
        if line != end_line || line_text.chars().count() <= LONGEST_LINE {
            continue;
        }
        let line_end = range.start + line_text.len();
        let start = chars_from(source, label.range.start.max(range.start), -(CONTEXT as isize)).max(range.start);
        let end = chars_from(source, label.range.end.min(line_end), CONTEXT as isize).min(line_end);
        let (prefix, suffix) = (if start > range.start { "…" } else { "" }, if end < line_end { "…" } else { "" });
        let hidden = source[range.start..start].chars().count();
        views.push(View {
            name: file.name().clone(),
            text: format!("{prefix}{}{suffix}", &source[start..end]),
            line_number: line + 1,
            column_offset: hidden - prefix.chars().count(),
        });
        let shift = |byte: usize| byte - start + prefix.len();
        label.range = shift(label.range.start.max(start))..shift(label.range.end.min(end));
        label.file_id = FIRST_VIEW + views.len() - 1;
    }
    diagnostic
}

/// Every diagnostic as text, in the style of rustc, without colour, long lines clipped.
pub fn render(files: &SimpleFiles<String, String>, diagnostics: &[Diagnostic<usize>]) -> String {
    let config = codespan_reporting::term::Config::default();
    let mut views = Vec::new();
    let clipped: Vec<Diagnostic<usize>> = diagnostics.iter().map(|d| clip(files, &mut views, d.clone())).collect();
    let all = Clipped { files, views };
    clipped
        .iter()
        .map(|d| codespan_reporting::term::emit_into_string(&config, &all, d).unwrap_or_else(|e| e.to_string()))
        .collect()
}
