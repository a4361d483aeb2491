//! Dotted paths (`train.optim.learning_rate`): reading and writing them in a JSON value (sweeps), and
//! finding them in YAML text (line and column for messages).

use serde_json::Value;

pub fn get<'a>(value: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().try_fold(value, |v, k| v.get(*k))
}

/// Sets a path, creating objects along it where a section was left out (it then takes defaults).
pub fn set(value: &mut Value, keys: &[&str], new: Value) {
    let Some((last, parents)) = keys.split_last() else { return };
    let mut current = value;
    for key in parents {
        if !current.get(*key).is_some_and(Value::is_object) {
            current[*key] = Value::Object(Default::default());
        }
        current = &mut current[*key];
    }
    current[*last] = new;
}

/// Every path to a scalar (or list) field, for suggestions.
pub fn field_paths(value: &Value) -> Vec<String> {
    fn walk(value: &Value, prefix: &str, out: &mut Vec<String>) {
        if let Value::Object(map) = value {
            for (k, v) in map {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                walk(v, &path, out);
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(value, "", &mut out);
    out
}

/// Line and column (1-based) of the deepest key of `path` found in block-style YAML, nesting by
/// indentation; `None` when not even the first key is there. Keys written in flow style
/// (`{ a: 1 }`) are found on their line too.
pub fn position(text: &str, path: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = None;
    // the line and indentation of the key found last: its children follow it, more indented
    let mut parent: Option<(usize, usize)> = None;
    let mut from_line = 0;
    for key in path.split('.').filter(|k| !k.is_empty()) {
        let pattern = format!("{key}:");
        let mut hit = None;
        for (index, line) in lines.iter().enumerate().skip(from_line) {
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let indent = line.len() - line.trim_start().len();
            if parent.is_some_and(|(line_index, parent_indent)| index > line_index && indent <= parent_indent) {
                break;
            }
            let content = line.trim_start().trim_start_matches("- ");
            let block_style = parent.is_none_or(|(line_index, _)| index > line_index) && content.starts_with(&pattern);
            let column = if block_style {
                Some(line.len() - content.len())
            } else {
                line.find(&format!("{{ {pattern}"))
                    .map(|c| c + 2)
                    .or_else(|| line.find(&format!(", {pattern}")).map(|c| c + 2))
            };
            if let Some(column) = column {
                hit = Some((index, column, indent));
                break;
            }
        }
        let Some((index, column, indent)) = hit else { break };
        // the byte offset as a character column, as the YAML parser counts its columns
        found = Some((index + 1, lines[index][..column].chars().count() + 1));
        parent = Some((index, indent));
        from_line = index;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_count_characters_as_the_yaml_parser_does() {
        // "é" is two bytes: the key after it starts at character 19, byte 20
        let text = "model: { name: é, d_model: 8 }\n";
        assert_eq!(position(text, "model.d_model"), Some((1, 19)));
        let range = super::super::diagnostics::token_at_for_tests(text, 1, 19);
        assert_eq!(&text[range], "d_model");
    }

    #[test]
    fn positions_follow_nesting() {
        let text =
            "name: x\ntrain:\n  steps: 10\n  optim:\n    learning_rate: 0.1\nmodel: { d_model: 8, n_heads: 2 }\n";
        assert_eq!(position(text, "train.optim.learning_rate"), Some((5, 5)));
        assert_eq!(position(text, "train.steps"), Some((3, 3)));
        assert_eq!(position(text, "model.n_heads"), Some((6, 22)));
        assert_eq!(position(text, "absent"), None);
    }

    #[test]
    fn set_creates_missing_sections() {
        let mut v = serde_json::json!({"train": {"seed": 1}});
        set(&mut v, &["train", "seed"], serde_json::json!(7));
        set(&mut v, &["locality", "epsilon"], serde_json::json!(0.1));
        assert_eq!(v, serde_json::json!({"train": {"seed": 7}, "locality": {"epsilon": 0.1}}));
        assert_eq!(get(&v, &["train", "seed"]), Some(&serde_json::json!(7)));
    }
}
