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
    fn a_file_instead_of_a_directory_is_explained() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = load_splits(file.path()).unwrap_err().to_string();
        assert!(err.contains("is not a directory"), "{err}");
    }
}
