//! The parse tree of a `.rules` file: pest's pairs turned into typed statements with byte spans.

use std::ops::Range;

use pest::iterators::Pair;
use pest::Parser as _;

pub type Span = Range<usize>;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/rules.pest"]
struct RulesParser;

#[derive(Clone, Debug, PartialEq)]
pub struct Located<T> {
    pub value: T,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Statement {
    Include(Located<String>),
    Block(BlockDecl),
    Rule(Box<RuleDecl>),
}

impl Statement {
    pub fn span(&self) -> Span {
        match self {
            Statement::Include(path) => path.span.clone(),
            Statement::Block(block) => block.span.clone(),
            Statement::Rule(rule) => rule.span.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Member {
    Word(Located<String>),
    Pattern(Located<String>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct BlockDecl {
    pub name: Located<String>,
    pub ignore_case: bool,
    /// Declared `recruitable … seeded by …`: its words are seed anchors only.
    pub recruitable: bool,
    pub members: Vec<Member>,
    pub anchors: Vec<Located<String>>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Query {
    Any(Span),
    Block(Located<String>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Block(Located<String>),
    AnchorsOf(Located<String>),
    OwnBlock(Span),
    Previous(Span),
    Continuation(Span),
}

#[derive(Clone, Debug, PartialEq)]
pub enum RuleBody {
    Attend {
        query: Query,
        target: Target,
    },
    Pair {
        open: Located<String>,
        close: Located<String>,
    },
    /// A copy rule (METHOD §4 "Copy paths"): `copy from B` (an `Any` query spanning `copy`), `Q copies
    /// from B`, `Q copies previous occurrence`, `Q copies continuation of previous occurrence`. The
    /// source is `Target::Block`, `Target::Previous` or `Target::Continuation`.
    Copy {
        query: Query,
        source: Target,
    },
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuleOptions {
    pub within: Option<Located<usize>>,
    pub layers: Option<Located<Vec<usize>>>,
    pub heads: Option<Located<Vec<usize>>>,
    pub strength: Option<Located<f64>>,
    pub priority: Option<Located<i32>>,
    pub from_step: Option<Located<usize>>,
    pub until_step: Option<Located<usize>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RuleDecl {
    pub name: Located<String>,
    pub body: RuleBody,
    pub options: RuleOptions,
    pub span: Span,
}

/// A parse error in the language's own words.
#[derive(Clone, Debug, PartialEq)]
pub struct ParseFailure {
    pub span: Span,
    pub message: String,
}

/// What each grammar rule is called when the parser says what it expected.
fn describe(grammar_rule: Rule) -> &'static str {
    match grammar_rule {
        Rule::include | Rule::kw_include => "`include`",
        Rule::block | Rule::kw_block => "`block`",
        Rule::recruitable_block | Rule::kw_recruitable => "`recruitable block`",
        Rule::rule | Rule::kw_rule => "`rule`",
        Rule::block_name => "a block name",
        Rule::word | Rule::bare_word => "a word",
        Rule::text | Rule::text_inner => "quoted text",
        Rule::colon => "a colon `:`",
        Rule::comma => "a comma",
        Rule::count | Rule::signed | Rule::counts => "a whole number",
        Rule::number => "a number",
        Rule::ignoring_case | Rule::kw_ignoring => "`ignoring case`",
        Rule::kw_case => "`case`",
        Rule::pattern | Rule::kw_pattern => "`pattern`",
        Rule::anchors | Rule::kw_anchors => "`anchors`",
        Rule::kw_seeded => "`seeded by`",
        Rule::kw_by => "`by`",
        Rule::pair | Rule::kw_pair => "`pair`",
        Rule::kw_and => "`and`",
        Rule::attend | Rule::kw_attend | Rule::kw_attends => "`attend to`",
        Rule::kw_to => "`to`",
        Rule::any_token | Rule::kw_any => "`any token`",
        Rule::kw_token => "`token`",
        Rule::anchors_of | Rule::kw_of => "`anchors of`",
        Rule::own_block | Rule::kw_own => "`own block`",
        Rule::previous | Rule::kw_previous | Rule::kw_occurrence => "`previous occurrence`",
        Rule::continuation | Rule::kw_continuation => "`continuation of previous occurrence`",
        Rule::within | Rule::kw_within => "`within`",
        Rule::layers | Rule::kw_layers => "`in layers`",
        Rule::heads | Rule::kw_heads => "`in heads`",
        Rule::kw_in => "`in layers` or `in heads`",
        Rule::strength | Rule::kw_strength => "`strength`",
        Rule::priority | Rule::kw_priority => "`priority`",
        Rule::from_step => "`from step`",
        Rule::kw_from => "`from`",
        Rule::until_step | Rule::kw_until => "`until step`",
        Rule::kw_step => "`step`",
        Rule::copy_from | Rule::kw_copy => "`copy from`",
        Rule::copies | Rule::kw_copies => "`copies`",
        Rule::members | Rule::words => "a word",
        Rule::EOI => "the end of the file",
        Rule::file | Rule::statement | Rule::query | Rule::target | Rule::option | Rule::member => "a statement",
        Rule::copy_source => "`from`, `previous occurrence` or `continuation of previous occurrence`",
        Rule::keyword | Rule::name_char | Rule::WHITESPACE | Rule::COMMENT => "more text",
    }
}

fn expected_list(rules: &[Rule]) -> String {
    let mut phrases: Vec<&str> = Vec::new();
    for &grammar_rule in rules {
        let phrase = describe(grammar_rule);
        if !phrases.contains(&phrase) {
            phrases.push(phrase);
        }
    }
    match phrases.len() {
        0 => "something else".into(),
        1 => phrases[0].into(),
        n => format!("{} or {}", phrases[..n - 1].join(", "), phrases[n - 1]),
    }
}

fn failure(error: pest::error::Error<Rule>, source: &str) -> ParseFailure {
    let span = match error.location {
        pest::error::InputLocation::Pos(p) => p..p,
        pest::error::InputLocation::Span((a, b)) => a..b,
    };
    let found = source[span.start..].split_whitespace().next().map(|w| w.chars().take(24).collect::<String>());
    let message = match &error.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => {
            let expected = expected_list(positives);
            match &found {
                Some(found) => format!("expected {expected}, found `{found}`"),
                None => format!("expected {expected}, found the end of the file"),
            }
        }
        pest::error::ErrorVariant::CustomError { message } => message.clone(),
    };
    // point at the offending word, not just its first character
    let end = found.as_ref().map_or(span.start, |f| span.start + f.len());
    ParseFailure { span: span.start..end.max(span.end), message }
}

/// The span of a pair up to the end of its last word: a repetition may take in the whitespace and
/// comments after it, its words never do.
fn tight_span(pair: &Pair<Rule>) -> Span {
    let start = pair.as_span().start();
    let words = pair.clone().into_inner().flatten().filter(|p| p.clone().into_inner().next().is_none());
    start..words.map(|p| p.as_span().end()).max().unwrap_or(pair.as_span().end())
}

fn located(pair: &Pair<Rule>, value: String) -> Located<String> {
    Located { value, span: pair.as_span().start()..pair.as_span().end() }
}

/// The text between the quotes, with `\"` and `\\` unescaped; any other backslash is kept, so that
/// patterns keep their own escapes (`"[0-9]+\.[0-9]+"`).
fn unquote(text: &str) -> String {
    let inner = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(text);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(escaped @ ('"' | '\\')) => out.push(escaped),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn word(pair: Pair<Rule>) -> Located<String> {
    let text = pair.as_str();
    let value = if text.starts_with('"') { unquote(text) } else { text.to_string() };
    located(&pair, value)
}

fn numbers(pair: Pair<Rule>) -> Vec<usize> {
    pair.into_inner().filter(|p| p.as_rule() == Rule::count).filter_map(|p| p.as_str().parse().ok()).collect()
}

fn block(pair: Pair<Rule>, recruitable: bool) -> BlockDecl {
    let span = pair.as_span().start()..pair.as_span().end();
    let mut decl = BlockDecl {
        name: Located { value: String::new(), span: 0..0 },
        ignore_case: false,
        recruitable,
        members: Vec::new(),
        anchors: Vec::new(),
        span,
    };
    for part in pair.into_inner() {
        match part.as_rule() {
            Rule::block_name => decl.name = located(&part, part.as_str().to_string()),
            Rule::ignoring_case => decl.ignore_case = true,
            Rule::members => {
                for member in part.into_inner() {
                    match member.as_rule() {
                        Rule::word => decl.members.push(Member::Word(word(member))),
                        Rule::pattern => {
                            if let Some(text) = member.into_inner().find(|p| p.as_rule() == Rule::text) {
                                let value = unquote(text.as_str());
                                decl.members.push(Member::Pattern(located(&text, value)));
                            }
                        }
                        _ => {}
                    }
                }
            }
            Rule::anchors => {
                if let Some(words) = part.into_inner().find(|p| p.as_rule() == Rule::words) {
                    decl.anchors = words.into_inner().filter(|p| p.as_rule() == Rule::word).map(word).collect();
                }
            }
            // recruitable blocks: the seed words are members and anchors at once
            Rule::words => {
                let seeds: Vec<Located<String>> =
                    part.into_inner().filter(|p| p.as_rule() == Rule::word).map(word).collect();
                decl.members = seeds.iter().cloned().map(Member::Word).collect();
                decl.anchors = seeds;
            }
            _ => {}
        }
    }
    decl
}

/// The query and the target (or copy source) of an `attend` or `copies` clause: the first block name
/// is the query's, a later one the target's.
fn query_and_target(part: Pair<Rule>, part_span: Span) -> (Query, Target) {
    let mut query = Query::Any(part_span.clone());
    let mut target = Target::Previous(part_span);
    let mut seen_query = false;
    for piece in part.into_inner() {
        let piece_span = piece.as_span().start()..piece.as_span().end();
        match piece.as_rule() {
            Rule::any_token => {
                query = Query::Any(piece_span);
                seen_query = true;
            }
            Rule::block_name if !seen_query => {
                query = Query::Block(located(&piece, piece.as_str().to_string()));
                seen_query = true;
            }
            Rule::block_name => target = Target::Block(located(&piece, piece.as_str().to_string())),
            Rule::anchors_of => {
                if let Some(name) = piece.into_inner().find(|p| p.as_rule() == Rule::block_name) {
                    target = Target::AnchorsOf(located(&name, name.as_str().to_string()));
                }
            }
            Rule::own_block => target = Target::OwnBlock(piece_span),
            Rule::previous => target = Target::Previous(piece_span),
            Rule::continuation => target = Target::Continuation(piece_span),
            _ => {}
        }
    }
    (query, target)
}

fn rule(pair: Pair<Rule>) -> RuleDecl {
    let span = pair.as_span().start()..pair.as_span().end();
    let mut name = Located { value: String::new(), span: 0..0 };
    let mut body = RuleBody::Attend { query: Query::Any(0..0), target: Target::Previous(0..0) };
    let mut options = RuleOptions::default();
    for part in pair.into_inner() {
        let part_span = tight_span(&part);
        match part.as_rule() {
            Rule::text => name = located(&part, unquote(part.as_str())),
            Rule::pair => {
                let words: Vec<Located<String>> =
                    part.into_inner().filter(|p| p.as_rule() == Rule::word).map(word).collect();
                if let [open, close] = &words[..] {
                    body = RuleBody::Pair { open: open.clone(), close: close.clone() };
                }
            }
            Rule::attend => {
                let (query, target) = query_and_target(part, part_span);
                body = RuleBody::Attend { query, target };
            }
            Rule::copy_from => {
                let query = Query::Any(part_span.clone());
                let source = match part.into_inner().find(|p| p.as_rule() == Rule::block_name) {
                    Some(name) => Target::Block(located(&name, name.as_str().to_string())),
                    None => Target::Previous(part_span),
                };
                body = RuleBody::Copy { query, source };
            }
            Rule::copies => {
                let (query, source) = query_and_target(part, part_span);
                body = RuleBody::Copy { query, source };
            }
            Rule::within => options.within = numbers(part).first().map(|&value| Located { value, span: part_span }),
            Rule::layers => {
                options.layers = part
                    .into_inner()
                    .find(|p| p.as_rule() == Rule::counts)
                    .map(|c| Located { value: numbers(c), span: part_span })
            }
            Rule::heads => {
                options.heads = part
                    .into_inner()
                    .find(|p| p.as_rule() == Rule::counts)
                    .map(|c| Located { value: numbers(c), span: part_span })
            }
            Rule::strength => {
                if let Some(n) = part.into_inner().find(|p| p.as_rule() == Rule::number) {
                    let value = n.as_str().parse().unwrap_or(f64::NAN);
                    options.strength = Some(Located { value, span: part_span });
                }
            }
            Rule::priority => {
                options.priority = part
                    .into_inner()
                    .find(|p| p.as_rule() == Rule::signed)
                    .and_then(|p| p.as_str().parse().ok())
                    .map(|value| Located { value, span: part_span })
            }
            Rule::from_step => {
                options.from_step = numbers(part).first().map(|&value| Located { value, span: part_span })
            }
            Rule::until_step => {
                options.until_step = numbers(part).first().map(|&value| Located { value, span: part_span })
            }
            _ => {}
        }
    }
    RuleDecl { name, body, options, span }
}

/// Parses one file's text.
pub fn parse(source: &str) -> Result<Vec<Statement>, ParseFailure> {
    pest::set_error_detail(true);
    let mut pairs = RulesParser::parse(Rule::file, source).map_err(|e| failure(e, source))?;
    let Some(file) = pairs.next() else { return Ok(Vec::new()) };
    let mut statements = Vec::new();
    for pair in file.into_inner() {
        match pair.as_rule() {
            Rule::include => {
                if let Some(text) = pair.into_inner().find(|p| p.as_rule() == Rule::text) {
                    statements.push(Statement::Include(located(&text, unquote(text.as_str()))));
                }
            }
            Rule::block => statements.push(Statement::Block(block(pair, false))),
            Rule::recruitable_block => statements.push(Statement::Block(block(pair, true))),
            Rule::rule => statements.push(Statement::Rule(Box::new(rule(pair)))),
            _ => {}
        }
    }
    Ok(statements)
}

/// Words that the grammar reads as keywords, and so must be quoted to be words.
pub const KEYWORDS: &[&str] = &[
    "include",
    "block",
    "recruitable",
    "rule",
    "anchors",
    "pattern",
    "seeded",
    "by",
    "ignoring",
    "case",
    "pair",
    "and",
    "attends",
    "attend",
    "to",
    "any",
    "token",
    "of",
    "own",
    "previous",
    "occurrence",
    "continuation",
    "within",
    "in",
    "layers",
    "heads",
    "strength",
    "priority",
    "from",
    "until",
    "step",
    "copy",
    "copies",
];
