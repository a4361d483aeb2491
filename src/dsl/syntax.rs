//! The parse tree of a `.rules` file: pest's pairs turned into typed statements with byte spans.

use std::ops::Range;

use pest::iterators::Pair;
use pest::Parser as _;

pub type Span = Range<usize>;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/rules.pest"]
pub(super) struct RulesParser;

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

impl RuleOptions {
    /// The spans of the options given, in no particular order.
    pub fn spans(&self) -> Vec<Span> {
        let spans = [
            self.within.as_ref().map(|l| &l.span),
            self.layers.as_ref().map(|l| &l.span),
            self.heads.as_ref().map(|l| &l.span),
            self.strength.as_ref().map(|l| &l.span),
            self.priority.as_ref().map(|l| &l.span),
            self.from_step.as_ref().map(|l| &l.span),
            self.until_step.as_ref().map(|l| &l.span),
        ];
        spans.into_iter().flatten().cloned().collect()
    }

    /// Every option's span moved `by` bytes on.
    pub fn shift(&mut self, by: usize) {
        let spans = [
            self.within.as_mut().map(|l| &mut l.span),
            self.layers.as_mut().map(|l| &mut l.span),
            self.heads.as_mut().map(|l| &mut l.span),
            self.strength.as_mut().map(|l| &mut l.span),
            self.priority.as_mut().map(|l| &mut l.span),
            self.from_step.as_mut().map(|l| &mut l.span),
            self.until_step.as_mut().map(|l| &mut l.span),
        ];
        for span in spans.into_iter().flatten() {
            *span = span.start + by..span.end + by;
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RuleDecl {
    pub name: Located<String>,
    pub body: RuleBody,
    pub options: RuleOptions,
    pub span: Span,
}

/// A parse error in the language's own words: a heading, the label at the blamed spot and hints.
#[derive(Clone, Debug, PartialEq)]
pub struct ParseFailure {
    pub heading: String,
    pub span: Span,
    pub message: String,
    pub notes: Vec<String>,
}

impl ParseFailure {
    pub fn syntax(span: Span, message: impl Into<String>) -> Self {
        ParseFailure { heading: "syntax error".into(), span, message: message.into(), notes: Vec::new() }
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }
}

/// What a file's text parsed to: every statement that could be read, and every failure, so that one
/// run reports every independent mistake.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed {
    pub statements: Vec<Statement>,
    pub failures: Vec<ParseFailure>,
    /// Blocks whose declaration did not parse: known to exist, so naming them is not a second error.
    pub unreadable_blocks: Vec<String>,
}

/// What each grammar rule is called when the parser says what it expected.
pub(super) fn describe(grammar_rule: Rule) -> &'static str {
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
        Rule::previous | Rule::kw_previous => "`previous occurrence`",
        Rule::kw_occurrence => "`occurrence`",
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

/// The whole numbers a clause may hold, inclusive, and what the message calls the clause.
struct NumberRange {
    clause: &'static str,
    min: i128,
    max: i128,
}

const WITHIN: NumberRange = NumberRange { clause: "`within`", min: 0, max: MAX_WINDOW as i128 };
const LAYER: NumberRange = NumberRange { clause: "`in layers`", min: 0, max: MAX_INDEX as i128 };
const HEAD: NumberRange = NumberRange { clause: "`in heads`", min: 0, max: MAX_INDEX as i128 };
const PRIORITY: NumberRange =
    NumberRange { clause: "`priority`", min: -MAX_PRIORITY as i128, max: MAX_PRIORITY as i128 };
const STEP: NumberRange = NumberRange { clause: "a step", min: 0, max: MAX_STEP as i128 };

/// The widest window a rule may name: far beyond any context a model trained here has.
pub const MAX_WINDOW: usize = 1_000_000;
/// The highest layer or head index the language accepts; the model's shape bounds it further.
pub const MAX_INDEX: usize = 1023;
/// Priorities run from −MAX_PRIORITY to MAX_PRIORITY; the implicit own-block rules sit below them all.
pub const MAX_PRIORITY: i32 = 1_000_000;
/// The latest step a rule may switch on or off at.
pub const MAX_STEP: usize = 1_000_000_000_000;
/// The strongest rule: a strength multiplies the rule's margin bias.
pub const MAX_STRENGTH: f64 = 1000.0;

/// `1,000,000` for 1000000: numbers in messages read at a glance.
pub fn thousands(value: i128) -> String {
    let digits = value.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0 {
        format!("−{out}")
    } else {
        out
    }
}

/// A number token checked against its clause's range; out of range, it becomes a failure at its
/// own span, so `fmt` can never drop it and no rule silently loses it.
fn ranged(pair: &Pair<Rule>, range: &NumberRange, failures: &mut Vec<ParseFailure>) -> Option<i128> {
    let text = pair.as_str();
    let span = pair.as_span().start()..pair.as_span().end();
    match text.parse::<i128>().ok().filter(|v| (range.min..=range.max).contains(v)) {
        Some(value) => Some(value),
        None => {
            let shown: String = if text.chars().count() > 24 {
                format!("{}…", text.chars().take(24).collect::<String>())
            } else {
                text.to_string()
            };
            let message = if text.starts_with('-') && range.min >= 0 {
                format!("`{shown}` is negative")
            } else if text.parse::<i128>().is_ok_and(|v| v < range.min) {
                format!("`{shown}` is too small")
            } else {
                format!("`{shown}` is too large")
            };
            failures.push(ParseFailure {
                heading: "number out of range".into(),
                span,
                message,
                notes: vec![format!(
                    "{} takes a whole number from {} to {}",
                    range.clause,
                    thousands(range.min),
                    thousands(range.max)
                )],
            });
            None
        }
    }
}

/// The single number of a clause like `within N`.
fn one_number(pair: Pair<Rule>, range: &NumberRange, failures: &mut Vec<ParseFailure>) -> Option<i128> {
    let number = pair.into_inner().find(|p| matches!(p.as_rule(), Rule::count | Rule::signed))?;
    ranged(&number, range, failures)
}

/// The numbers of `in layers …` / `in heads …`; one out of range fails the clause.
fn index_list(pair: Pair<Rule>, range: &NumberRange, failures: &mut Vec<ParseFailure>) -> Option<Vec<usize>> {
    let counts = pair.into_inner().find(|p| p.as_rule() == Rule::counts)?;
    let before = failures.len();
    let values: Vec<usize> = counts
        .into_inner()
        .filter(|p| p.as_rule() == Rule::count)
        .filter_map(|p| ranged(&p, range, failures).map(|v| v as usize))
        .collect();
    (failures.len() == before).then_some(values)
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

fn rule(pair: Pair<Rule>, failures: &mut Vec<ParseFailure>) -> RuleDecl {
    let span = pair.as_span().start()..pair.as_span().end();
    let mut name = Located { value: String::new(), span: 0..0 };
    let mut body = RuleBody::Attend { query: Query::Any(0..0), target: Target::Previous(0..0) };
    let mut options = RuleOptions::default();
    let mut seen_options: Vec<Rule> = Vec::new();
    for part in pair.into_inner() {
        let part_span = tight_span(&part);
        let option = matches!(
            part.as_rule(),
            Rule::within
                | Rule::layers
                | Rule::heads
                | Rule::strength
                | Rule::priority
                | Rule::from_step
                | Rule::until_step
        );
        if option && seen_options.contains(&part.as_rule()) {
            // the last would silently win, and fmt would print one of the two: refuse instead
            failures.push(
                ParseFailure::syntax(part_span, format!("{} is given twice in this rule", describe(part.as_rule())))
                    .with_note("keep the one you mean"),
            );
            continue;
        }
        if option {
            seen_options.push(part.as_rule());
        }
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
            Rule::within => {
                options.within =
                    one_number(part, &WITHIN, failures).map(|value| Located { value: value as usize, span: part_span })
            }
            Rule::layers => {
                options.layers = index_list(part, &LAYER, failures).map(|value| Located { value, span: part_span })
            }
            Rule::heads => {
                options.heads = index_list(part, &HEAD, failures).map(|value| Located { value, span: part_span })
            }
            Rule::strength => {
                if let Some(n) = part.into_inner().find(|p| p.as_rule() == Rule::number) {
                    let value: f64 = n.as_str().parse().unwrap_or(f64::NAN);
                    if value > MAX_STRENGTH {
                        failures.push(ParseFailure {
                            heading: "number out of range".into(),
                            span: n.as_span().start()..n.as_span().end(),
                            message: format!("`{}` is too large", n.as_str().chars().take(24).collect::<String>()),
                            notes: vec![format!("`strength` takes a number above 0 and at most {MAX_STRENGTH}")],
                        });
                    } else {
                        options.strength = Some(Located { value, span: part_span });
                    }
                }
            }
            Rule::priority => {
                options.priority =
                    one_number(part, &PRIORITY, failures).map(|value| Located { value: value as i32, span: part_span })
            }
            Rule::from_step => {
                options.from_step =
                    one_number(part, &STEP, failures).map(|value| Located { value: value as usize, span: part_span })
            }
            Rule::until_step => {
                options.until_step =
                    one_number(part, &STEP, failures).map(|value| Located { value: value as usize, span: part_span })
            }
            _ => {}
        }
    }
    RuleDecl { name, body, options, span }
}

/// The statements of a successful parse of `text`, with their spans moved by `offset` (the place of
/// `text` in the file), and the range failures found while building them.
fn statements(file: Pair<Rule>, offset: usize, out: &mut Parsed) {
    let mut failures = Vec::new();
    for pair in file.into_inner() {
        let statement = match pair.as_rule() {
            Rule::include => match pair.into_inner().find(|p| p.as_rule() == Rule::text) {
                Some(text) => Statement::Include(located(&text, unquote(text.as_str()))),
                None => continue,
            },
            Rule::block => Statement::Block(block(pair, false)),
            Rule::recruitable_block => Statement::Block(block(pair, true)),
            Rule::rule => Statement::Rule(Box::new(rule(pair, &mut failures))),
            _ => continue,
        };
        out.statements.push(super::recovery::shifted(statement, offset));
    }
    out.failures.extend(failures.into_iter().map(|mut f| {
        f.span = f.span.start + offset..f.span.end + offset;
        f
    }));
}

/// Parses one file's text, reading past syntax errors: when the whole text does not parse, each
/// statement (from one line starting with `block`, `rule`, `include` or `recruitable` to the next)
/// is parsed on its own, so every independent mistake is found in one run, each blamed where it is.
pub fn parse_all(source: &str) -> Parsed {
    // the detail of what was tried costs time on every parse and is needed only to explain a failure
    pest::set_error_detail(false);
    let mut parsed = Parsed::default();
    match RulesParser::parse(Rule::file, source) {
        Ok(mut pairs) => {
            if let Some(file) = pairs.next() {
                statements(file, 0, &mut parsed);
            }
        }
        Err(_) => {
            pest::set_error_detail(true);
            for chunk in super::recovery::statement_chunks(source) {
                let text = &source[chunk.clone()];
                match RulesParser::parse(Rule::file, text) {
                    Ok(mut pairs) => {
                        if let Some(file) = pairs.next() {
                            statements(file, chunk.start, &mut parsed);
                        }
                    }
                    Err(error) => {
                        parsed.failures.push(super::recovery::explain(error, text, chunk.start));
                        parsed.unreadable_blocks.extend(super::recovery::declared_block_name(text));
                    }
                }
            }
        }
    }
    parsed
}

/// Parses one file's text; the first failure, if there is one, is the error.
pub fn parse(source: &str) -> Result<Vec<Statement>, ParseFailure> {
    let mut parsed = parse_all(source);
    if parsed.failures.is_empty() {
        Ok(parsed.statements)
    } else {
        Err(parsed.failures.remove(0))
    }
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
