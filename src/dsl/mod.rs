//! The `.rules` language (grammar in `grammar/rules.pest`, documented in `rules/README.md`): loading
//! with includes, compilation to a [`RuleSpec`] and a [`RuleSet`] with rustc-style diagnostics, and the
//! canonical formatting of `ailla fmt`.

pub mod anchors;
mod compile;
pub mod cost;
pub mod format;
mod members;
pub mod recovery;
mod render;
pub mod source;
pub mod syntax;

use std::path::{Path, PathBuf};

use codespan_reporting::diagnostic::{Diagnostic, Label, Severity};
use codespan_reporting::files::SimpleFiles;

use crate::data::Vocabulary;
use crate::suggest::closest;
use syntax::Statement;

pub use compile::{compile, compile_with, CompileOptions, Compiled, ModelLayout};

/// Every file read (the root and its includes) and the statements in the order they take effect.
pub struct Loaded {
    pub files: SimpleFiles<String, String>,
    pub statements: Vec<(usize, Statement)>,
    pub diagnostics: Vec<Diagnostic<usize>>,
    /// File id of the root.
    pub root: usize,
    /// Blocks whose declarations have syntax errors (already reported).
    pub unreadable_blocks: Vec<String>,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity >= Severity::Error)
    }

    /// Diagnostics as text, in the style of rustc, without colour; long lines are clipped around
    /// the spot.
    pub fn render(&self, diagnostics: &[Diagnostic<usize>]) -> String {
        render::render(&self.files, diagnostics)
    }
}

/// A rules file compiled as `ailla check` compiles it, with the diagnostics of loading and compiling
/// together: what `ailla check`, `ailla anchors` and `ailla trial --rules` report on a file.
pub struct Checked {
    pub loaded: Loaded,
    pub compiled: Compiled,
    pub diagnostics: Vec<Diagnostic<usize>>,
}

impl Checked {
    pub fn new(loaded: Loaded, vocabulary: Option<&Vocabulary>) -> Self {
        Self::with_options(loaded, vocabulary, CompileOptions::default())
    }

    /// As [`Checked::new`], with the checks `options` asks for (the model's layout, every warning).
    pub fn with_options(loaded: Loaded, vocabulary: Option<&Vocabulary>, options: CompileOptions) -> Self {
        let compiled = compile_with(&loaded, vocabulary, options);
        let mut diagnostics = loaded.diagnostics.clone();
        diagnostics.extend(compiled.diagnostics.iter().cloned());
        Checked { loaded, compiled, diagnostics }
    }

    /// Every diagnostic, rendered as rustc renders its own.
    pub fn render(&self) -> String {
        self.loaded.render(&self.diagnostics)
    }

    /// `PATH: N errors found`, when the diagnostics hold errors.
    pub fn errors_found(&self, path: &Path) -> Option<String> {
        let errors = self.diagnostics.iter().filter(|d| d.severity >= Severity::Error).count();
        (errors > 0).then(|| format!("{}: {errors} error{} found", path.display(), if errors == 1 { "" } else { "s" }))
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// Reads a rules file and, recursively, the files it includes (relative to the including file).
/// An unreadable root is an error; everything else becomes a diagnostic.
pub fn load(path: &Path) -> crate::Result<Loaded> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            crate::Error::Config { path: path.to_path_buf(), message: "no such rules file".into() }
        }
        _ => crate::Error::io(path, e),
    })?;
    let source = rules_text(bytes).map_err(|message| crate::Error::Config { path: path.to_path_buf(), message })?;
    load_source(path, source)
}

/// A rules file's bytes as text: a leading byte-order mark is dropped (editors on Windows write
/// one), and bytes that are not UTF-8 are reported by line, column and byte offset.
pub fn rules_text(bytes: Vec<u8>) -> std::result::Result<String, String> {
    let bytes = match bytes.strip_prefix(b"\xEF\xBB\xBF") {
        Some(rest) => rest.to_vec(),
        None => bytes,
    };
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let line = bytes[..offset].iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = bytes[..offset].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&bytes[line_start..offset]).chars().count() + 1;
        format!(
            "line {line}, column {column} (byte offset {offset}): byte 0x{:02X} is not UTF-8 text; save the file as \
             UTF-8 (a Latin-1 or Windows-1252 file must be converted, e.g. `iconv -f latin1 -t utf-8`)",
            bytes[offset]
        )
    })
}

/// As [`load`], for text already in memory (tests, the bundled rules).
pub fn load_source(path: &Path, source: String) -> crate::Result<Loaded> {
    let source = match source.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => source,
    };
    let mut loaded = Loaded {
        files: SimpleFiles::new(),
        statements: Vec::new(),
        diagnostics: Vec::new(),
        root: 0,
        unreadable_blocks: Vec::new(),
    };
    let root = loaded.files.add(display(path), source);
    loaded.root = root;
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mut seen = vec![canonical.clone()];
    read_statements(&mut loaded, root, path, &mut vec![canonical], &mut seen);
    Ok(loaded)
}

fn read_statements(loaded: &mut Loaded, file: usize, path: &Path, stack: &mut Vec<PathBuf>, seen: &mut Vec<PathBuf>) {
    let source = match loaded.files.get(file) {
        Ok(f) => f.source().clone(),
        Err(_) => return,
    };
    let parsed = syntax::parse_all(&source);
    for failure in parsed.failures {
        loaded.diagnostics.push(
            Diagnostic::error()
                .with_message(failure.heading)
                .with_labels(vec![Label::primary(file, failure.span).with_message(failure.message)])
                .with_notes(failure.notes),
        );
    }
    loaded.unreadable_blocks.extend(parsed.unreadable_blocks);
    let statements = parsed.statements;
    for statement in statements {
        let Statement::Include(target) = &statement else {
            loaded.statements.push((file, statement));
            continue;
        };
        let included = path.parent().unwrap_or(Path::new(".")).join(&target.value);
        let canonical = included.canonicalize().unwrap_or_else(|_| included.clone());
        if let Some(start) = stack.iter().position(|p| *p == canonical) {
            let chain: Vec<String> =
                stack[start..].iter().chain(std::iter::once(&canonical)).map(|p| file_name(p)).collect();
            loaded.diagnostics.push(
                Diagnostic::error()
                    .with_message("these files include each other in a circle")
                    .with_labels(vec![Label::primary(file, target.span.clone())
                        .with_message(format!("the circle: {}", chain.join(" → ")))]),
            );
            continue;
        }
        if seen.contains(&canonical) {
            continue; // included twice along different paths: its blocks are already declared
        }
        let text = std::fs::read(&included).map_err(|e| include_problem(&included, &e)).and_then(rules_text);
        match text {
            Ok(text) => {
                let id = loaded.files.add(display(&included), text);
                stack.push(canonical.clone());
                seen.push(canonical);
                read_statements(loaded, id, &included, stack, seen);
                stack.pop();
            }
            Err(problem) => {
                let mut diagnostic = Diagnostic::error()
                    .with_message(format!("cannot read the included file {}", display(&included)))
                    .with_labels(vec![Label::primary(file, target.span.clone()).with_message(problem)]);
                if !included.exists() {
                    if let Some(note) = sibling_suggestion(&included) {
                        diagnostic = diagnostic.with_notes(vec![note]);
                    }
                }
                loaded.diagnostics.push(diagnostic);
            }
        }
    }
}

/// Why an included file cannot be read, in words rather than an OS error code.
fn include_problem(path: &Path, error: &std::io::Error) -> String {
    let directory = path.parent().filter(|p| !p.as_os_str().is_empty()).map_or_else(|| ".".to_string(), display);
    match error.kind() {
        std::io::ErrorKind::NotFound => {
            format!("no file `{}` in {directory} (an include is read relative to the including file)", file_name(path))
        }
        std::io::ErrorKind::PermissionDenied => "this file may not be read (permission denied)".into(),
        _ if path.is_dir() => "this is a directory, not a rules file".into(),
        _ => format!("it cannot be read: {error}"),
    }
}

/// "did you mean" among the files beside a missing include.
fn sibling_suggestion(path: &Path) -> Option<String> {
    let wanted = path.file_name()?.to_string_lossy().into_owned();
    let directory = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let names: Vec<String> = std::fs::read_dir(directory)
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().is_file())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    let by_case = names.iter().find(|n| n.to_lowercase() == wanted.to_lowercase() && **n != wanted);
    let suggestion = by_case
        .map(String::as_str)
        .or_else(|| closest(&wanted, names.iter().map(String::as_str), 1).first().copied())?;
    Some(format!("did you mean `{suggestion}`?"))
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| display(path))
}
