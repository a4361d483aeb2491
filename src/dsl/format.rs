//! `ailla fmt`: one canonical layout for a `.rules` file. Comments on lines of their own stay with
//! the statement below them; formatting then parsing gives the same rules.

use super::syntax::{self, BlockDecl, Member, ParseFailure, Query, RuleBody, RuleDecl, Statement, Target, KEYWORDS};

const WIDTH: usize = 100;
const INDENT: &str = "    ";

/// A word as the grammar reads it back: bare when it can be, quoted otherwise.
pub fn word(text: &str) -> String {
    let bare = !text.is_empty()
        && !text.chars().any(|c| c.is_whitespace() || matches!(c, ',' | '"' | '#' | '\\'))
        && !KEYWORDS.contains(&text);
    if bare {
        text.to_string()
    } else {
        quote(text)
    }
}

/// Quoted text that [`super::syntax`] unquotes back to `text`: backslashes are doubled only where the
/// parser would otherwise read them as an escape (before a quote, a backslash or the end).
pub fn quote(text: &str) -> String {
    let mut out = String::from("\"");
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' if matches!(chars.get(i + 1), None | Some('"') | Some('\\')) => out.push_str("\\\\"),
            other => out.push(other),
        }
    }
    out.push('"');
    out
}

/// `head` followed by comma-separated items, wrapped at [`WIDTH`] with continuation lines indented.
fn list(head: &str, items: &[String], indent: &str) -> String {
    let mut out = head.to_string();
    let mut line_len = out.chars().count();
    for (index, item) in items.iter().enumerate() {
        let piece = if index + 1 < items.len() { format!("{item},") } else { item.clone() };
        let needed = piece.chars().count() + 1;
        if index > 0 && line_len + needed > WIDTH {
            out.push('\n');
            out.push_str(indent);
            out.push_str(INDENT);
            line_len = indent.len() + INDENT.len();
        } else {
            out.push(' ');
            line_len += 1;
        }
        out.push_str(&piece);
        line_len += piece.chars().count();
    }
    out
}

/// A block statement from its parts, already rendered as words.
pub fn render_block(
    name: &str,
    ignore_case: bool,
    recruitable: bool,
    members: &[String],
    anchors: &[String],
) -> String {
    let case = if ignore_case { " ignoring case" } else { "" };
    if recruitable {
        return list(&format!("recruitable block {name}{case} seeded by"), anchors, INDENT);
    }
    let mut out = list(&format!("block {name}{case}:"), members, INDENT);
    if !anchors.is_empty() {
        out.push('\n');
        out.push_str(&list(&format!("{INDENT}anchors"), anchors, INDENT));
    }
    out
}

fn block(b: &BlockDecl) -> String {
    let members: Vec<String> = b
        .members
        .iter()
        .map(|m| match m {
            Member::Word(w) => word(&w.value),
            Member::Pattern(p) => format!("pattern {}", quote(&p.value)),
        })
        .collect();
    let anchors: Vec<String> = b.anchors.iter().map(|a| word(&a.value)).collect();
    render_block(&b.name.value, b.ignore_case, b.recruitable, &members, &anchors)
}

/// A compiled block written back as a statement (what `ailla anchors --snippet` prints).
pub fn block_spec(b: &crate::locality::rules::BlockSpec) -> String {
    let mut members: Vec<String> = b.words.iter().map(|w| word(w)).collect();
    members.extend(b.patterns.iter().map(|p| format!("pattern {}", quote(p))));
    let anchors: Vec<String> = b.anchors.iter().map(|a| word(a)).collect();
    render_block(&b.name, b.ignore_case, b.recruitable, &members, &anchors)
}

fn numbers(values: &[usize]) -> String {
    values.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
}

fn rule(r: &RuleDecl) -> String {
    let body = match &r.body {
        RuleBody::Pair { open, close } => format!("pair {} and {}", word(&open.value), word(&close.value)),
        RuleBody::Attend { query, target } => {
            let (query, verb) = match query {
                Query::Any(_) => ("any token".to_string(), "attends to"),
                Query::Block(name) => (name.value.clone(), "attend to"),
            };
            let target = match target {
                Target::Block(name) => name.value.clone(),
                Target::AnchorsOf(name) => format!("anchors of {}", name.value),
                Target::OwnBlock(_) => "own block".into(),
                Target::Previous(_) => "previous occurrence".into(),
                Target::Continuation(_) => "continuation of previous occurrence".into(),
            };
            format!("{query} {verb} {target}")
        }
        // canonical: `any token copies from B` is written `copy from B`
        RuleBody::Copy { query, source } => match (query, source) {
            (Query::Any(_), Target::Block(name)) => format!("copy from {}", name.value),
            (query, source) => {
                let query = match query {
                    Query::Any(_) => "any token".to_string(),
                    Query::Block(name) => name.value.clone(),
                };
                let source = match source {
                    Target::Block(name) | Target::AnchorsOf(name) => format!("from {}", name.value),
                    Target::Continuation(_) => "continuation of previous occurrence".into(),
                    Target::Previous(_) | Target::OwnBlock(_) => "previous occurrence".into(),
                };
                format!("{query} copies {source}")
            }
        },
    };
    let o = &r.options;
    let mut options = Vec::new();
    if let Some(n) = &o.within {
        options.push(format!("within {}", n.value));
    }
    if let Some(layers) = &o.layers {
        options.push(format!("in layers {}", numbers(&layers.value)));
    }
    if let Some(heads) = &o.heads {
        options.push(format!("in heads {}", numbers(&heads.value)));
    }
    if let Some(strength) = &o.strength {
        options.push(format!("strength {}", strength.value));
    }
    if let Some(priority) = &o.priority {
        options.push(format!("priority {}", priority.value));
    }
    if let Some(from) = &o.from_step {
        options.push(format!("from step {}", from.value));
    }
    if let Some(until) = &o.until_step {
        options.push(format!("until step {}", until.value));
    }
    let mut out = format!("rule {}:\n{INDENT}{body}", quote(&r.name.value));
    if !options.is_empty() {
        out.push_str(&format!("\n{INDENT}{}", options.join(" ")));
    }
    out
}

/// Full-line comments with the byte offsets where their lines start and end.
fn comments(source: &str) -> Vec<(usize, usize, &str)> {
    let mut offset = 0;
    let mut found = Vec::new();
    for line in source.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed.starts_with('#') {
            found.push((offset, offset + line.len(), trimmed));
        }
        offset += line.len();
    }
    found
}

/// The canonical text of a rules file.
pub fn format(source: &str) -> Result<String, ParseFailure> {
    let statements = syntax::parse(source)?;
    let comments = comments(source);
    let mut next_comment = 0;
    let mut out = String::new();
    let mut previous_kind: Option<std::mem::Discriminant<Statement>> = None;
    for statement in &statements {
        let start = match statement {
            Statement::Include(path) => path.span.start,
            other => other.span().start,
        };
        let mut leading = Vec::new();
        let mut leading_end = 0;
        while next_comment < comments.len() && comments[next_comment].0 < start {
            leading.push(comments[next_comment].2);
            leading_end = comments[next_comment].1;
            next_comment += 1;
        }
        // a comment block set off by a blank line (a file header) stays set off
        let set_off = !leading.is_empty() && source[leading_end..start].lines().any(|l| l.trim().is_empty());
        let kind = std::mem::discriminant(statement);
        // consecutive includes stay together; everything else is separated by a blank line
        let tight = previous_kind == Some(kind) && matches!(statement, Statement::Include(_)) && leading.is_empty();
        if previous_kind.is_some() {
            out.push_str(if tight { "\n" } else { "\n\n" });
        }
        for comment in leading {
            out.push_str(comment);
            out.push('\n');
        }
        if set_off {
            out.push('\n');
        }
        out.push_str(&match statement {
            Statement::Include(path) => format!("include {}", quote(&path.value)),
            Statement::Block(b) => block(b),
            Statement::Rule(r) => rule(r),
        });
        previous_kind = Some(kind);
    }
    let trailing: Vec<&str> = comments[next_comment..].iter().map(|(_, _, c)| *c).collect();
    if !trailing.is_empty() {
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(&trailing.join("\n"));
    }
    out.push('\n');
    Ok(out)
}
