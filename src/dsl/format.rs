//! `ailla fmt`: one canonical layout for a `.rules` file. No comment is lost: comments on lines of
//! their own stay with the statement below them (or, inside a block's lists, with the word below
//! them); a comment at the end of a line stays at the end of the line of the word or clause it
//! follows. Formatting then parsing gives the same rules.

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

/// One entry of a list, with the comments that go with it: on lines of their own before it, and at
/// the end of its line after it.
#[derive(Clone, Debug, Default)]
struct Item {
    text: String,
    before: Vec<String>,
    after: Vec<String>,
}

impl Item {
    fn plain(text: String) -> Self {
        Item { text, ..Item::default() }
    }
}

/// End-of-line comments: the first at the end of the line, any others on lines of their own below
/// it (indented by `indent`), never merged, so that each stays one comment.
fn trailing(comments: &[String], indent: &str) -> String {
    let mut out = String::new();
    for (index, comment) in comments.iter().enumerate() {
        if index == 0 {
            out.push_str("  ");
        } else {
            out.push('\n');
            out.push_str(indent);
        }
        out.push_str(comment);
    }
    out
}

/// `head` followed by comma-separated items, wrapped at [`WIDTH`] with continuation lines indented;
/// a comment forces the line break it needs.
fn list_with_comments(head: &str, head_after: &[String], items: &[Item], indent: &str) -> String {
    let continuation = format!("{indent}{INDENT}");
    let mut out = head.to_string();
    let mut line_len = out.chars().count();
    let mut must_break = !head_after.is_empty();
    out.push_str(&trailing(head_after, &continuation));
    for (index, item) in items.iter().enumerate() {
        let piece = if index + 1 < items.len() { format!("{},", item.text) } else { item.text.clone() };
        let needed = piece.chars().count() + 1;
        if !item.before.is_empty() {
            for comment in &item.before {
                out.push('\n');
                out.push_str(&continuation);
                out.push_str(comment);
            }
            must_break = true;
        }
        if must_break || (index > 0 && line_len + needed > WIDTH) {
            out.push('\n');
            out.push_str(&continuation);
            line_len = continuation.chars().count();
        } else {
            out.push(' ');
            line_len += 1;
        }
        out.push_str(&piece);
        line_len += piece.chars().count();
        must_break = !item.after.is_empty();
        out.push_str(&trailing(&item.after, &continuation));
    }
    out
}

fn list(head: &str, items: &[String], indent: &str) -> String {
    let items: Vec<Item> = items.iter().cloned().map(Item::plain).collect();
    list_with_comments(head, &[], &items, indent)
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

/// Where a comment inside a statement goes: after the last part that ends before it (at the end of
/// that part's line, or on a line of its own before the next part), or after the head.
struct Attach<'s> {
    source: &'s str,
    comments: Vec<std::ops::Range<usize>>,
}

impl Attach<'_> {
    fn own_line(&self, comment: &std::ops::Range<usize>) -> bool {
        self.source[..comment.start].rsplit('\n').next().is_some_and(|before| before.trim().is_empty())
    }

    fn text(&self, comment: &std::ops::Range<usize>) -> String {
        self.source[comment.clone()].trim_end().to_string()
    }
}

fn block(b: &BlockDecl, attach: &Attach) -> String {
    let mut items: Vec<(usize, Item)> = b
        .members
        .iter()
        .map(|m| match m {
            Member::Word(w) => (w.span.end, Item::plain(word(&w.value))),
            Member::Pattern(p) => (p.span.end, Item::plain(format!("pattern {}", quote(&p.value)))),
        })
        .collect();
    let member_count = items.len();
    // a recruitable block's seeds are its members and anchors at once: listed, and commented, once
    if !b.recruitable {
        items.extend(b.anchors.iter().map(|a| (a.span.end, Item::plain(word(&a.value)))));
    }
    let mut head_after = Vec::new();
    for comment in &attach.comments {
        let following = items.iter().position(|(end, _)| *end > comment.start);
        match (attach.own_line(comment), following) {
            // a comment line inside a list stays above the word it precedes
            (true, Some(next)) if next > 0 && next != member_count => items[next].1.before.push(attach.text(comment)),
            _ => match following.unwrap_or(items.len()).checked_sub(1) {
                Some(previous) => items[previous].1.after.push(attach.text(comment)),
                None => head_after.push(attach.text(comment)),
            },
        }
    }
    let anchors: Vec<Item> = items.split_off(member_count).into_iter().map(|(_, item)| item).collect();
    let members: Vec<Item> = items.into_iter().map(|(_, item)| item).collect();
    let case = if b.ignore_case { " ignoring case" } else { "" };
    if b.recruitable {
        return list_with_comments(
            &format!("recruitable block {}{case} seeded by", b.name.value),
            &head_after,
            &members,
            INDENT,
        );
    }
    let mut out = list_with_comments(&format!("block {}{case}:", b.name.value), &head_after, &members, INDENT);
    if !anchors.is_empty() {
        out.push('\n');
        out.push_str(&list_with_comments(&format!("{INDENT}anchors"), &[], &anchors, INDENT));
    }
    out
}

/// A compiled block written back as a statement (what `ailla anchors --snippet` prints).
pub fn block_spec(b: &crate::locality::rules::BlockSpec) -> String {
    let mut members: Vec<String> = b.words.iter().map(|w| word(w)).collect();
    members.extend(b.patterns.iter().map(|p| format!("pattern {}", quote(p))));
    let anchors: Vec<String> = b.anchors.iter().map(|a| word(a)).collect();
    render_block(&b.name, b.ignore_case, b.recruitable, &members, &anchors)
}

/// A compiled rule written back as a statement in the canonical layout that `ailla fmt` gives it (what
/// `ailla explain` quotes: a checkpoint stores its rules compiled, not their source).
pub fn rule_spec(r: &crate::locality::rules::RuleEntrySpec) -> String {
    use crate::locality::rules::RuleKindSpec as Kind;
    let query = |from: &Option<String>| from.clone().unwrap_or_else(|| "any token".into());
    let verb = |from: &Option<String>| if from.is_some() { "attend to" } else { "attends to" };
    let body = match (&r.kind, r.copy) {
        (Kind::AnyToBlock { to }, true) => format!("copy from {to}"),
        (Kind::BlockToBlock { from, to }, true) => format!("{from} copies from {to}"),
        (Kind::PreviousOccurrence { from }, true) => format!("{} copies previous occurrence", query(from)),
        (Kind::Induction { from }, true) => format!("{} copies continuation of previous occurrence", query(from)),
        (Kind::BlockToBlock { from, to }, _) => format!("{from} attend to {to}"),
        (Kind::BlockToAnchors { from, to }, _) => format!("{from} attend to anchors of {to}"),
        (Kind::OwnBlock { block }, _) => format!("{block} attend to own block"),
        (Kind::PreviousOccurrence { from }, _) => format!("{} {} previous occurrence", query(from), verb(from)),
        (Kind::Induction { from }, _) => {
            format!("{} {} continuation of previous occurrence", query(from), verb(from))
        }
        (Kind::MatchingPair { open, close }, _) => format!("pair {} and {}", word(open), word(close)),
        (Kind::AnyToBlock { to }, _) => format!("any token attends to {to}"),
    };
    let mut options = Vec::new();
    if let Some(n) = r.within {
        options.push(format!("within {n}"));
    }
    if let Some(layers) = &r.layers {
        options.push(format!("in layers {}", numbers(layers)));
    }
    if let Some(heads) = &r.heads {
        options.push(format!("in heads {}", numbers(heads)));
    }
    if r.strength != 1.0 {
        options.push(format!("strength {}", r.strength));
    }
    if r.priority != 0 {
        options.push(format!("priority {}", r.priority));
    }
    if let Some(from) = r.from_step {
        options.push(format!("from step {from}"));
    }
    if let Some(until) = r.until_step {
        options.push(format!("until step {until}"));
    }
    let mut out = format!("rule {}:\n{INDENT}{body}", quote(&r.name));
    if !options.is_empty() {
        out.push_str(&format!("\n{INDENT}{}", options.join(" ")));
    }
    out
}

fn numbers(values: &[usize]) -> String {
    values.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
}

fn rule(r: &RuleDecl, attach: &Attach) -> String {
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
    // the head, the body and the options each take the comments that follow them
    let body_start = match &r.body {
        RuleBody::Pair { open, .. } => open.span.start,
        RuleBody::Attend { query, .. } | RuleBody::Copy { query, .. } => match query {
            Query::Any(span) => span.start,
            Query::Block(name) => name.span.start,
        },
    };
    let options_start = o.spans().iter().map(|span| span.start).min().unwrap_or(usize::MAX);
    let (mut after_head, mut after_body, mut after_options) = (Vec::new(), Vec::new(), Vec::new());
    for comment in &attach.comments {
        let text = attach.text(comment);
        if comment.start < body_start {
            after_head.push(text);
        } else if comment.start < options_start || options.is_empty() {
            after_body.push(text);
        } else {
            after_options.push(text);
        }
    }
    let (head, body_comments) = (trailing(&after_head, INDENT), trailing(&after_body, INDENT));
    let mut out = format!("rule {}:{head}\n{INDENT}{body}{body_comments}", quote(&r.name.value));
    if !options.is_empty() {
        out.push_str(&format!("\n{INDENT}{}{}", options.join(" "), trailing(&after_options, INDENT)));
    }
    out
}

/// The end of a statement's last word: where the comments inside it stop.
fn content_end(statement: &Statement) -> usize {
    match statement {
        Statement::Include(path) => path.span.end,
        Statement::Block(b) => {
            let members = b.members.iter().map(|m| match m {
                Member::Word(w) | Member::Pattern(w) => w.span.end,
            });
            members.chain(b.anchors.iter().map(|a| a.span.end)).chain([b.name.span.end]).max().unwrap_or(b.span.end)
        }
        Statement::Rule(r) => {
            let body_end = match &r.body {
                RuleBody::Pair { close, .. } => close.span.end,
                RuleBody::Attend { target, .. } | RuleBody::Copy { source: target, .. } => match target {
                    Target::Block(name) | Target::AnchorsOf(name) => name.span.end,
                    Target::OwnBlock(span) | Target::Previous(span) | Target::Continuation(span) => span.end,
                },
            };
            let option_ends = r.options.spans().into_iter().map(|span| span.end);
            option_ends.chain([body_end, r.name.span.end]).max().unwrap_or(r.span.end)
        }
    }
}

/// The canonical text of a rules file.
pub fn format(source: &str) -> Result<String, ParseFailure> {
    let statements = syntax::parse(source)?;
    let all_comments = super::recovery::comment_ranges(source);
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
        while next_comment < all_comments.len() && all_comments[next_comment].start < start {
            let comment = &all_comments[next_comment];
            leading.push(source[comment.clone()].trim_end());
            leading_end = source[comment.end..].find('\n').map_or(source.len(), |i| comment.end + i + 1);
            next_comment += 1;
        }
        // the statement's own comments: inside it, and at the end of its last line
        let end = content_end(statement);
        let line_end = source[end..].find('\n').map_or(source.len(), |i| end + i);
        let mut inner = Vec::new();
        while next_comment < all_comments.len() && all_comments[next_comment].start < line_end.max(end + 1) {
            inner.push(all_comments[next_comment].clone());
            next_comment += 1;
        }
        // indented comment lines right below the statement, with no blank line between, are still
        // its own (fmt writes a part's second comment so); a comment at column 0 starts the next one
        let mut reached = line_end;
        while let Some(comment) = all_comments.get(next_comment) {
            let gap = &source[reached.min(comment.start)..comment.start];
            let indented = gap.ends_with([' ', '\t']);
            if gap.chars().all(char::is_whitespace) && gap.matches('\n').count() == 1 && indented {
                inner.push(comment.clone());
                reached = comment.end;
                next_comment += 1;
            } else {
                break;
            }
        }
        let attach = Attach { source, comments: inner };
        // a comment block set off by a blank line (a file header) stays set off
        let set_off = !leading.is_empty() && source[leading_end.min(start)..start].lines().any(|l| l.trim().is_empty());
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
            Statement::Include(path) => {
                let comments: Vec<String> = attach.comments.iter().map(|c| attach.text(c)).collect();
                format!("include {}{}", quote(&path.value), trailing(&comments, ""))
            }
            Statement::Block(b) => block(b, &attach),
            Statement::Rule(r) => rule(r, &attach),
        });
        previous_kind = Some(kind);
    }
    let trailing_comments: Vec<&str> =
        all_comments[next_comment..].iter().map(|c| source[c.clone()].trim_end()).collect();
    if !trailing_comments.is_empty() {
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(&trailing_comments.join("\n"));
    }
    out.push('\n');
    Ok(out)
}
