//! Text corpora by path: a directory with `train`, `valid` and `test` splits in WikiText's layout.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The three splits of a corpus and where they came from.
#[derive(Clone, Debug)]
pub struct Splits {
    pub train: String,
    pub valid: String,
    pub test: String,
    /// Files read, in split order; empty for the generated corpus.
    pub files: Vec<PathBuf>,
    /// A short human-readable name ("bundled pharmacy corpus", a directory path).
    pub name: String,
}

/// File names accepted for each split, first match wins: the plain names of the shared copy and of
/// PyTorch's example, then the names of the original WikiText archive.
const SPLIT_NAMES: [(&str, [&str; 2]); 3] = [
    ("train", ["train.txt", "wiki.train.tokens"]),
    ("valid", ["valid.txt", "wiki.valid.tokens"]),
    ("test", ["test.txt", "wiki.test.tokens"]),
];

pub fn load_splits(dir: &Path) -> Result<Splits> {
    if !dir.is_dir() {
        return Err(Error::Corpus {
            path: dir.to_path_buf(),
            message: "is not a directory; a corpus directory holds train.txt, valid.txt and test.txt".into(),
        });
    }
    let has_splits = SPLIT_NAMES[0].1.iter().any(|n| dir.join(n).is_file());
    if !has_splits {
        if let Some(single) = single_text_file(dir) {
            return split_single_file(&single);
        }
    }
    let mut texts = Vec::with_capacity(3);
    let mut files = Vec::with_capacity(3);
    for (split, names) in SPLIT_NAMES {
        let path = names.iter().map(|n| dir.join(n)).find(|p| p.is_file()).ok_or_else(|| Error::Corpus {
            path: dir.to_path_buf(),
            message: format!("no {split} split: expected {} or {}", names[0], names[1]),
        })?;
        texts.push(read_text(&path)?);
        files.push(path);
    }
    let test = texts.pop().unwrap_or_default();
    let valid = texts.pop().unwrap_or_default();
    let train = texts.pop().unwrap_or_default();
    Ok(Splits { train, valid, test, files, name: dir.display().to_string() })
}

/// The one `.txt` file of a directory without split files (Tiny Shakespeare's `input.txt`).
pub fn single_text_file(dir: &Path) -> Option<std::path::PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut texts: Vec<std::path::PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "txt"))
        .collect();
    (texts.len() == 1).then(|| texts.remove(0))
}

/// A corpus shipped as one file: its lines split in order, the first 90 % for training, the next 5 %
/// for validation and the last 5 % for testing (contiguous, so no passage leaks across splits).
pub fn split_single_file(path: &Path) -> Result<Splits> {
    split_text(path, &read_text(path)?, None)
}

/// [`split_single_file`] on `text` read from `path`, keeping only lines `first..=last` (1-based) when a
/// range is given (to leave out a licence header or footer).
pub fn split_text(path: &Path, text: &str, range: Option<(usize, usize)>) -> Result<Splits> {
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    if let Some((first, last)) = range {
        if first == 0 || first > last || last > lines.len() {
            return Err(Error::Corpus {
                path: path.to_path_buf(),
                message: format!("lines {first}–{last} are not within its {} lines", lines.len()),
            });
        }
        lines = lines[first - 1..last].to_vec();
    }
    let (train_end, valid_end) = (lines.len() * 90 / 100, lines.len() * 95 / 100);
    if train_end == 0 || valid_end == train_end || valid_end == lines.len() {
        return Err(Error::Corpus {
            path: path.to_path_buf(),
            message: format!("{} lines are too few to split into train, valid and test (90/5/5 %)", lines.len()),
        });
    }
    Ok(Splits {
        train: lines[..train_end].concat(),
        valid: lines[train_end..valid_end].concat(),
        test: lines[valid_end..].concat(),
        files: vec![path.to_path_buf()],
        name: match range {
            Some((first, last)) => format!("{} (lines {first}–{last}, split 90/5/5 %)", path.display()),
            None => format!("{} (lines split 90/5/5 %)", path.display()),
        },
    })
}

/// Reads a UTF-8 text file that must contain at least one non-blank character.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let before = &e.as_bytes()[..valid];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = valid - before.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1) + 1;
        Error::Corpus {
            path: path.to_path_buf(),
            message: format!("line {line}, column {column}: not valid UTF-8 (byte offset {valid})"),
        }
    })?;
    if text.trim().is_empty() {
        return Err(Error::Corpus {
            path: path.to_path_buf(),
            message: "the file is empty; a corpus split needs text".into(),
        });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_empty_and_invalid_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_splits(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no train split") && err.contains("train.txt"), "{err}");

        std::fs::write(dir.path().join("train.txt"), "a b\n").unwrap();
        std::fs::write(dir.path().join("valid.txt"), "  \n").unwrap();
        std::fs::write(dir.path().join("test.txt"), "c\n").unwrap();
        let err = load_splits(dir.path()).unwrap_err().to_string();
        assert!(err.contains("valid.txt") && err.contains("empty"), "{err}");

        std::fs::write(dir.path().join("valid.txt"), b"ok\nab\xffcd\n").unwrap();
        let err = load_splits(dir.path()).unwrap_err().to_string();
        assert!(err.contains("valid.txt") && err.contains("line 2, column 3"), "{err}");

        std::fs::write(dir.path().join("valid.txt"), "fine\n").unwrap();
        let splits = load_splits(dir.path()).unwrap();
        assert_eq!((splits.train.as_str(), splits.valid.as_str()), ("a b\n", "fine\n"));
    }

    #[test]
    fn a_directory_with_one_text_file_is_split_by_lines_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(dir.path().join("input.txt"), &text).unwrap();
        let splits = load_splits(dir.path()).unwrap();
        assert!(splits.train.starts_with("line 0\n") && splits.train.ends_with("line 89\n"));
        assert_eq!(splits.valid.lines().count(), 5);
        assert!(splits.test.ends_with("line 99\n"));
        assert_eq!(format!("{}{}{}", splits.train, splits.valid, splits.test), text);
        std::fs::write(dir.path().join("input.txt"), "one\ntwo\n").unwrap();
        assert!(load_splits(dir.path()).unwrap_err().to_string().contains("too few"));
    }

    #[test]
    fn a_file_instead_of_a_directory_is_explained() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = load_splits(file.path()).unwrap_err().to_string();
        assert!(err.contains("is not a directory"), "{err}");
    }
}
