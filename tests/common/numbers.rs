//! Snapshots that hold on every CPU: the *form* of an output is compared exactly, its *numbers* within
//! tolerances that say what they are.
//!
//! OpenBLAS chooses its sgemm kernel by CPU family (Haswell/Zen on AVX2 machines, SkylakeX on AVX-512
//! ones), and the kernels sum in different orders, so the last bits of a product differ between
//! machines and a few dozen training steps carry that into the fourth digit of a figure. A rounded
//! figure compared as a string then fails whenever it straddles a rounding boundary. Instead:
//!
//! - the form — every word, label, column, unit and integer (counts, steps, indices) — goes to an insta
//!   snapshot with each decimal number replaced by `{f}`;
//! - the decimal numbers go to a golden file `tests/golden/NAME.numbers`, one `line:column value` per
//!   line, and are compared by a [`Tolerance`].
//!
//! `AILLA_BLESS=1 cargo test …` rewrites the golden files (read the diff before committing it).

use std::path::{Path, PathBuf};

/// `|got − want| ≤ absolute + relative·|want|`.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    pub absolute: f64,
    pub relative: f64,
}

impl Tolerance {
    pub fn admits(&self, got: f64, want: f64) -> bool {
        if got.is_nan() || want.is_nan() {
            return got.is_nan() && want.is_nan();
        }
        (got - want).abs() <= self.absolute + self.relative * want.abs()
    }
}

/// One decimal number of an output, where it stands and as it was printed.
#[derive(Clone, Debug)]
pub struct Number {
    /// Where it is: `line:column` for text, a JSON path for JSON.
    pub at: String,
    pub text: String,
    pub value: f64,
    /// The text before it on its line (for text) or its key path (for JSON): what a tolerance policy
    /// looks at to decide which kind of figure this is.
    pub context: String,
}

/// The form of a text (decimal numbers replaced by `{f}`) and the numbers taken out of it.
///
/// A number is a run `-?digits.digits(e±digits)?` that stands alone: not inside a word or a hash
/// (`637b4a…`), not part of a version (`0.1.0`) or a path. Integers stay in the form: they are counts,
/// steps and indices, which do not depend on the CPU.
pub fn split_text(text: &str) -> (String, Vec<Number>) {
    let mut form = String::with_capacity(text.len());
    let mut numbers = Vec::new();
    for (line_index, line) in text.split_inclusive('\n').enumerate() {
        let bytes = line.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let starts_word = i == 0 || !is_word_byte(bytes[i - 1]);
            let sign = usize::from(bytes[i] == b'-');
            if starts_word && bytes.get(i + sign).is_some_and(u8::is_ascii_digit) {
                if let Some(end) = decimal_end(bytes, i + sign) {
                    let token = &line[i..end];
                    numbers.push(Number {
                        at: format!("{}:{}", line_index + 1, line[..i].chars().count() + 1),
                        text: token.to_string(),
                        value: token.parse().unwrap_or(f64::NAN),
                        context: line[..i].to_string(),
                    });
                    form.push_str("{f}");
                    i = end;
                    continue;
                }
                // an integer or a word that starts with digits: copy the whole run
                let mut end = i + sign;
                while end < bytes.len() && is_word_byte(bytes[end]) {
                    end += 1;
                }
                form.push_str(&line[i..end]);
                i = end;
                continue;
            }
            let ch = line[i..].chars().next().unwrap_or(' ');
            form.push(ch);
            i += ch.len_utf8();
        }
    }
    (form, numbers)
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'/' || b >= 0x80
}

/// The end of a decimal number starting with a digit at `start`, if the run there is one.
fn decimal_end(bytes: &[u8], start: usize) -> Option<usize> {
    let digits = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let mut end = digits(start);
    if bytes.get(end) != Some(&b'.') || !bytes.get(end + 1).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    end = digits(end + 1);
    if matches!(bytes.get(end), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(bytes.get(end + 1), Some(b'+' | b'-')));
        if bytes.get(end + 1 + sign).is_some_and(u8::is_ascii_digit) {
            end = digits(end + 1 + sign);
        }
    }
    // `0.1.0` is a version and `1.5x` a word, not numbers; a full stop after a number ends a sentence
    match bytes.get(end) {
        Some(b'.') if bytes.get(end + 1).is_some_and(u8::is_ascii_digit) => None,
        Some(&b) if b != b'.' && is_word_byte(b) => None,
        _ => Some(end),
    }
}

/// The form of a JSON value (every non-integer number replaced by the string `"{f}"`) and its numbers,
/// each at its path (`groups[0].lambdas[2].fidelity`).
pub fn split_json(value: &serde_json::Value) -> (serde_json::Value, Vec<Number>) {
    let mut numbers = Vec::new();
    let form = walk(value, String::new(), &mut numbers);
    (form, numbers)
}

fn walk(value: &serde_json::Value, path: String, numbers: &mut Vec<Number>) -> serde_json::Value {
    match value {
        serde_json::Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            numbers.push(Number { at: path.clone(), text: n.to_string(), value: x, context: path });
            serde_json::Value::String("{f}".into())
        }
        serde_json::Value::Array(items) => serde_json::Value::Array(
            items.iter().enumerate().map(|(i, item)| walk(item, format!("{path}[{i}]"), numbers)).collect(),
        ),
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .map(|(key, item)| {
                    let at = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                    (key.clone(), walk(item, at, numbers))
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The line of a text number's `line:column` (a JSON path as it is). Columns are not compared: a
/// number's column moves with the digits of the numbers before it on its line (`156.2302438491089`
/// on one CPU, `156.23024384910892` on another), while the form snapshot already fixes how many
/// numbers each line holds and in what order.
fn line_of(at: &str) -> &str {
    at.split_once(':').map_or(at, |(line, _)| line)
}

fn golden_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{name}.numbers"))
}

/// Compares `numbers` with the golden file `tests/golden/NAME.numbers` (written when `AILLA_BLESS` is
/// set), each within the tolerance `policy` gives it, and lists every number that is out.
pub fn assert_numbers(name: &str, numbers: &[Number], policy: impl Fn(&Number) -> Tolerance) {
    let path = golden_path(name);
    if std::env::var_os("AILLA_BLESS").is_some() {
        let text: String = numbers.iter().map(|n| format!("{} {}\n", n.at, n.text)).collect();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        return;
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; write it with AILLA_BLESS=1 and read it", path.display()));
    let expected: Vec<(&str, f64)> = golden
        .lines()
        .map(|line| {
            let (at, value) = line.rsplit_once(' ').unwrap_or((line, "NaN"));
            (at, value.parse().unwrap_or(f64::NAN))
        })
        .collect();
    assert_eq!(
        numbers.len(),
        expected.len(),
        "{}: {} numbers, the golden file has {} (the form snapshot says where)",
        path.display(),
        numbers.len(),
        expected.len()
    );
    let mut out = Vec::new();
    for (got, (at, want)) in numbers.iter().zip(&expected) {
        let tolerance = policy(got);
        if line_of(&got.at) != line_of(at) || !tolerance.admits(got.value, *want) {
            out.push(format!(
                "  {} = {} (golden {} at {}; tolerance: absolute {:e} + relative {:e})",
                got.at, got.text, want, at, tolerance.absolute, tolerance.relative
            ));
        }
    }
    assert!(
        out.is_empty(),
        "{}: {} of {} numbers out of tolerance:\n{}",
        path.display(),
        out.len(),
        numbers.len(),
        out.join("\n")
    );
}
