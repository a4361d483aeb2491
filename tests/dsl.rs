//! The `.rules` language: a parse test, a compile test and an error test for every construct, with
//! diagnostics snapshot-tested, plus round trips of the shipped files and a mutation property test.

use std::path::{Path, PathBuf};

use ailla::data::{TokenizerKind, Vocabulary};
use ailla::dsl::syntax::{self, Member, Query, RuleBody, Statement, Target};
use ailla::dsl::{compile, format, load_source, Compiled, Loaded};
use ailla::locality::rules::{Condition, Rule, RuleKind, RuleKindSpec};
use codespan_reporting::diagnostic::Severity;

const CORPUS: &str = "metformin insulin heparin warfarin Aspirin aspirin mg ml units 10 20 2.5 ( ) <order> </order> \
                      fever cough patient given daily";

fn vocabulary() -> Vocabulary {
    Vocabulary::build(TokenizerKind::Word, CORPUS, 1000)
}

fn load(text: &str) -> Loaded {
    load_source(Path::new("example.rules"), text.to_string()).unwrap()
}

fn compiled(text: &str) -> (Loaded, Compiled) {
    let loaded = load(text);
    let vocabulary = vocabulary();
    let compiled = compile(&loaded, Some(&vocabulary));
    (loaded, compiled)
}

/// Every diagnostic of a text, rendered as `ailla check` prints it.
fn report(text: &str) -> String {
    let (loaded, compiled) = compiled(text);
    let mut all = loaded.diagnostics.clone();
    all.extend(compiled.diagnostics);
    loaded.render(&all)
}

fn errors(text: &str) -> usize {
    let (loaded, compiled) = compiled(text);
    loaded.diagnostics.iter().chain(&compiled.diagnostics).filter(|d| d.severity >= Severity::Error).count()
}

fn parse_one(text: &str) -> Statement {
    let mut statements = syntax::parse(text).unwrap();
    assert_eq!(statements.len(), 1, "{statements:?}");
    statements.remove(0)
}

const DRUGS: &str = "block drugs: metformin, insulin, heparin\n    anchors insulin\n";

// ---- blocks -------------------------------------------------------------------------------------

#[test]
fn block_parses_words_and_anchors() {
    let Statement::Block(block) = parse_one(DRUGS) else { panic!("not a block") };
    assert_eq!(block.name.value, "drugs");
    let words: Vec<&str> =
        block.members.iter().map(|m| if let Member::Word(w) = m { w.value.as_str() } else { "" }).collect();
    assert_eq!(words, ["metformin", "insulin", "heparin"]);
    assert_eq!(block.anchors[0].value, "insulin");
    assert_eq!(&DRUGS[block.name.span.clone()], "drugs");
}

#[test]
fn block_compiles_to_vocabulary_ids() {
    let (_, compiled) = compiled(DRUGS);
    let set = compiled.set.expect("compiles");
    let v = vocabulary();
    let ids: Vec<u32> = ["heparin", "insulin", "metformin"].iter().map(|w| v.id(w).unwrap()).collect();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(set.blocks[0].members, expected);
    assert_eq!(set.blocks[0].anchors, vec![v.id("insulin").unwrap()]);
}

#[test]
fn block_errors() {
    insta::assert_snapshot!("block_missing_colon", report("block drugs metformin, insulin\n"));
    insta::assert_snapshot!("block_declared_twice", report("block drugs: metformin\nblock drugs: insulin\n"));
    insta::assert_snapshot!("word_in_two_blocks", report("block drugs: metformin, insulin\nblock hormones: insulin\n"));
    insta::assert_snapshot!("word_not_in_vocabulary", report("block drugs: metformin, insuline\n"));
    insta::assert_snapshot!("empty_block", report("block drugs: ibuprofen, paracetamol\n"));
    // a warning is not an error: the block still compiles without the missing word
    assert_eq!(errors("block drugs: metformin, insuline\n"), 0);
    assert_eq!(errors("block drugs: metformin, insulin\nblock hormones: insulin\n"), 1);
}

#[test]
fn ignoring_case_matches_every_casing() {
    let text = "block painkillers ignoring case: ASPIRIN\n";
    let Statement::Block(block) = parse_one(text) else { panic!() };
    assert!(block.ignore_case);
    let set = compiled(text).1.set.unwrap();
    let v = vocabulary();
    let mut expected = vec![v.id("Aspirin").unwrap(), v.id("aspirin").unwrap()];
    expected.sort();
    assert_eq!(set.blocks[0].members, expected);
    // without it, case matters
    assert!(report("block painkillers: ASPIRIN\n").contains("block `painkillers` is empty"));
    insta::assert_snapshot!("ignoring_without_case", report("block painkillers ignoring: aspirin\n"));
}

#[test]
fn patterns_match_whole_vocabulary_entries() {
    let text = "block doses: pattern \"[0-9]+(\\.[0-9]+)?\"\n";
    let Statement::Block(block) = parse_one(text) else { panic!() };
    assert!(matches!(&block.members[0], Member::Pattern(p) if p.value == "[0-9]+(\\.[0-9]+)?"));
    let set = compiled(text).1.set.unwrap();
    let v = vocabulary();
    let mut expected: Vec<u32> = ["10", "20", "2.5"].iter().map(|w| v.id(w).unwrap()).collect();
    expected.sort();
    assert_eq!(set.blocks[0].members, expected);
    insta::assert_snapshot!("invalid_pattern", report("block doses: pattern \"[0-9\"\n"));
    insta::assert_snapshot!("pattern_matches_nothing", report("block doses: metformin, pattern \"x+y\"\n"));
}

#[test]
fn anchors_must_be_members() {
    insta::assert_snapshot!("anchor_not_member", report("block drugs: metformin, insulin\n    anchors heparin\n"));
}

#[test]
fn recruitable_blocks_hold_seed_anchors() {
    let text = "recruitable block symptoms seeded by fever, cough\n";
    let Statement::Block(block) = parse_one(text) else { panic!() };
    assert!(block.recruitable);
    assert_eq!(block.anchors.len(), 2);
    let (_, c) = compiled(text);
    assert!(c.spec.blocks[0].recruitable);
    assert!(c.set.unwrap().blocks[0].recruitable);
    insta::assert_snapshot!("recruitable_without_seeds", report("recruitable block symptoms: fever\n"));
}

// ---- rules --------------------------------------------------------------------------------------

fn rule_kind(text: &str) -> RuleKind {
    let (_, c) = compiled(&format!("{DRUGS}block units: mg, ml\n{text}"));
    c.set.unwrap_or_else(|| panic!("{}", report(&format!("{DRUGS}block units: mg, ml\n{text}")))).rules[0].kind.clone()
}

#[test]
fn block_to_block_rule() {
    let Statement::Rule(rule) = parse_one("rule \"unit\": units attend to drugs") else { panic!() };
    assert!(matches!(rule.body, RuleBody::Attend { query: Query::Block(_), target: Target::Block(_) }));
    assert_eq!(rule_kind("rule \"unit\": units attend to drugs"), RuleKind::BlockToBlock { from: 2, to: 1 });
    insta::assert_snapshot!("unknown_block", report(&format!("{DRUGS}rule \"unit\": unit attend to drugs\n")));
}

#[test]
fn anchors_of_rule() {
    assert_eq!(rule_kind("rule \"a\": units attend to anchors of drugs"), RuleKind::BlockToAnchors { from: 2, to: 1 });
    insta::assert_snapshot!(
        "anchors_of_block_without_anchors",
        report("block drugs: metformin\nblock units: mg\nrule \"a\": units attend to anchors of drugs\n")
    );
}

#[test]
fn own_block_rule() {
    assert_eq!(rule_kind("rule \"o\": drugs attend to own block"), RuleKind::OwnBlock { block: 1 });
    insta::assert_snapshot!("any_token_own_block", report("rule \"o\": any token attends to own block\n"));
}

#[test]
fn previous_occurrence_rule() {
    let Statement::Rule(rule) = parse_one("rule \"p\": any token attends to previous occurrence") else { panic!() };
    assert!(matches!(rule.body, RuleBody::Attend { query: Query::Any(_), target: Target::Previous(_) }));
    assert_eq!(
        rule_kind("rule \"p\": drugs attend to previous occurrence"),
        RuleKind::PreviousOccurrence { from: Condition::Block(1) }
    );
    insta::assert_snapshot!(
        "any_token_to_anchors",
        report(&format!("{DRUGS}rule \"p\": any token attends to anchors of drugs\n"))
    );
}

#[test]
fn any_token_to_block_rule() {
    // METHOD §3 "block (any query)": every query attends to the earlier tokens of the block
    let Statement::Rule(rule) = parse_one("rule \"a\": any token attends to drugs") else { panic!() };
    assert!(matches!(rule.body, RuleBody::Attend { query: Query::Any(_), target: Target::Block(_) }));
    assert_eq!(rule_kind("rule \"a\": any token attends to drugs within 8"), RuleKind::AnyToBlock { to: 1 });
    let (_, c) = compiled(&format!("{DRUGS}rule \"a\": any token attends to drugs\n"));
    assert_eq!(c.spec.rules[0].kind, RuleKindSpec::AnyToBlock { to: "drugs".into() });
    assert!(!c.spec.rules[0].copy);
}

#[test]
fn continuation_rule() {
    assert_eq!(
        rule_kind("rule \"c\": any token attends to continuation of previous occurrence"),
        RuleKind::Induction { from: Condition::Any }
    );
    insta::assert_snapshot!(
        "continuation_incomplete",
        report("rule \"c\": any token attends to continuation of previous\n")
    );
}

#[test]
fn pair_rule() {
    let Statement::Rule(rule) = parse_one("rule \"b\": pair ( and )") else { panic!() };
    assert!(matches!(rule.body, RuleBody::Pair { .. }));
    let v = vocabulary();
    let kind = rule_kind("rule \"b\": pair <order> and </order>");
    assert_eq!(kind, RuleKind::MatchingPair { open: v.id("<order>").unwrap(), close: v.id("</order>").unwrap() });
    insta::assert_snapshot!("pair_token_never_occurs", report("rule \"b\": pair [ and ]\n"));
}

#[test]
fn rule_options() {
    let text = "rule \"u\": units attend to drugs within 8 in layers 0, 1 in heads 2 strength 1.5 priority -2 \
                from step 100 until step 900";
    let Statement::Rule(rule) = parse_one(text) else { panic!() };
    assert_eq!(rule.options.within.map(|w| w.value), Some(8));
    assert_eq!(rule.options.layers.map(|l| l.value), Some(vec![0, 1]));
    assert_eq!(rule.options.heads.map(|h| h.value), Some(vec![2]));
    let (_, c) = compiled(&format!("{DRUGS}block units: mg, ml\n{text}"));
    let set = c.set.unwrap();
    let r = &set.rules[0];
    assert_eq!((r.within, r.strength, r.priority, r.from_step, r.until_step), (Some(8), 1.5, -2, Some(100), Some(900)));
    assert!(r.applies_to(1, 2) && !r.applies_to(1, 0) && !r.applies_to(2, 2));
    assert!(!r.active_at(99) && r.active_at(100) && !r.active_at(900));
    insta::assert_snapshot!(
        "switched_off_before_on",
        report(&format!("{DRUGS}block units: mg\nrule \"u\": units attend to drugs from step 10 until step 5\n"))
    );
    insta::assert_snapshot!(
        "zero_strength",
        report(&format!("{DRUGS}block units: mg\nrule \"u\": units attend to drugs strength 0\n"))
    );
    insta::assert_snapshot!("within_without_number", report("rule \"u\": units attend to drugs within eight\n"));
    insta::assert_snapshot!(
        "rule_named_twice",
        report(&format!(
            "{DRUGS}rule \"r\": drugs attend to own block\nrule \"r\": drugs attend to previous occurrence\n"
        ))
    );
}

// ---- copy rules (METHOD §3, §4 "Copy paths") ----------------------------------------------------

/// The one copy rule of `text` (after the drugs and units blocks), compiled; it must not also be an
/// attention rule.
fn copy_rule(text: &str) -> Rule {
    let full = format!("{DRUGS}block units: mg, ml\n{text}");
    let (_, c) = compiled(&full);
    let set = c.set.unwrap_or_else(|| panic!("{}", report(&full)));
    assert_eq!(set.copy_rules.len(), 1, "{:?}", set.copy_rules);
    assert!(c.spec.rules.iter().all(|r| r.copy));
    // the attention rules are the own-block defaults only
    assert!(set.rules.iter().all(|r| r.name.ends_with("(own block, default)")), "{:?}", set.rules);
    set.copy_rules[0].clone()
}

fn copy_body(text: &str) -> (Query, Target) {
    let Statement::Rule(rule) = parse_one(text) else { panic!("not a rule") };
    let RuleBody::Copy { query, source } = rule.body else { panic!("not a copy rule: {:?}", rule.body) };
    (query, source)
}

#[test]
fn copy_from_a_block() {
    let (query, source) = copy_body("rule \"c\": copy from drugs within 40");
    assert!(matches!(query, Query::Any(_)));
    assert!(matches!(source, Target::Block(ref name) if name.value == "drugs"));
    let rule = copy_rule("rule \"c\": copy from drugs within 40");
    assert_eq!((rule.kind, rule.within), (RuleKind::AnyToBlock { to: 1 }, Some(40)));
    // `any token copies from` says the same
    let (query, _) = copy_body("rule \"c\": any token copies from drugs");
    assert!(matches!(query, Query::Any(_)));
    assert_eq!(copy_rule("rule \"c\": any token copies from drugs").kind, RuleKind::AnyToBlock { to: 1 });
}

#[test]
fn a_block_copies_from_a_block() {
    let (query, source) = copy_body("rule \"c\": units copies from drugs");
    assert!(matches!(query, Query::Block(ref name) if name.value == "units"));
    assert!(matches!(source, Target::Block(ref name) if name.value == "drugs"));
    assert_eq!(copy_rule("rule \"c\": units copies from drugs").kind, RuleKind::BlockToBlock { from: 2, to: 1 });
}

#[test]
fn copies_previous_occurrence_and_its_continuation() {
    let (query, source) = copy_body("rule \"c\": any token copies continuation of previous occurrence");
    assert!(matches!((query, source), (Query::Any(_), Target::Continuation(_))));
    assert_eq!(
        copy_rule("rule \"c\": any token copies continuation of previous occurrence").kind,
        RuleKind::Induction { from: Condition::Any }
    );
    assert_eq!(
        copy_rule("rule \"c\": drugs copies continuation of previous occurrence").kind,
        RuleKind::Induction { from: Condition::Block(1) }
    );
    let (query, source) = copy_body("rule \"c\": drugs copies previous occurrence");
    assert!(matches!((query, source), (Query::Block(_), Target::Previous(_))));
    assert_eq!(
        copy_rule("rule \"c\": drugs copies previous occurrence").kind,
        RuleKind::PreviousOccurrence { from: Condition::Block(1) }
    );
    assert_eq!(
        copy_rule("rule \"c\": any token copies previous occurrence").kind,
        RuleKind::PreviousOccurrence { from: Condition::Any }
    );
}

#[test]
fn copy_rule_options_and_injection() {
    let rule = copy_rule("rule \"c\": copy from drugs within 16 strength 2 from step 100 until step 900");
    assert_eq!((rule.within, rule.strength, rule.from_step, rule.until_step), (Some(16), 2.0, Some(100), Some(900)));
    assert_eq!((rule.layers, rule.heads, rule.priority), (None, None, 0));
    let (_, c) = compiled(&format!("{DRUGS}rule \"c\": copy from drugs from step 100\n"));
    let set = c.set.unwrap();
    assert!(set.has_schedule());
    assert!(set.active_at(99).copy_rules.is_empty() && set.active_at(100).copy_rules.len() == 1);
}

#[test]
fn copy_rules_serialize_with_copy_and_attention_rules_without() {
    let (_, c) = compiled(&format!(
        "{DRUGS}rule \"c\": copy from drugs within 4\nrule \"a\": drugs attend to previous occurrence\n"
    ));
    let json = serde_json::to_value(&c.spec.rules).unwrap();
    assert_eq!(json[0]["copy"], serde_json::Value::Bool(true));
    assert_eq!(json[0]["kind"], serde_json::json!({ "any_to_block": { "to": "drugs" } }));
    assert!(json[1].get("copy").is_none(), "{json}");
    let back: Vec<ailla::locality::rules::RuleEntrySpec> = serde_json::from_value(json).unwrap();
    assert_eq!(back, c.spec.rules);
}

#[test]
fn copy_rule_errors() {
    let with = |rest: &str| report(&format!("{DRUGS}rule \"c\": copy from drugs {rest}\n"));
    insta::assert_snapshot!("copy_rule_in_layers", with("within 8 in layers 0, 1"));
    insta::assert_snapshot!("copy_rule_in_heads", with("in heads 2"));
    insta::assert_snapshot!("copy_rule_with_priority", with("priority 2"));
    insta::assert_snapshot!("copy_rule_within_zero", with("within 0"));
    insta::assert_snapshot!("copy_from_unknown_block", report(&format!("{DRUGS}rule \"c\": copy from drug\n")));
    insta::assert_snapshot!(
        "copy_query_unknown_block",
        report(&format!("{DRUGS}rule \"c\": drug copies previous occurrence\n"))
    );
    insta::assert_snapshot!("copy_without_from", report(&format!("{DRUGS}rule \"c\": copy drugs\n")));
    insta::assert_snapshot!("copies_without_source", report(&format!("{DRUGS}rule \"c\": drugs copies drugs\n")));
    assert_eq!(errors(&format!("{DRUGS}rule \"c\": copy from drugs within 0 in layers 0 in heads 1 priority 1\n")), 4);
    // the same options on an attention rule are fine
    assert_eq!(errors(&format!("{DRUGS}rule \"a\": drugs attend to own block in layers 0 in heads 1 priority 1\n")), 0);
}

#[test]
fn fmt_writes_copy_rules_canonically_and_round_trips_them() {
    let text = format!(
        "{DRUGS}block units: mg, ml\nrule \"a\": any token copies from drugs within 40 strength 1.5\n\
         rule \"b\":   units copies from drugs\nrule \"c\": any token copies continuation of previous occurrence from step 10\n\
         rule \"d\": drugs copies previous occurrence until step 5\nrule \"e\": copy from units\n\
         rule \"f\": any token attends to drugs\n"
    );
    let formatted = format::format(&text).unwrap();
    insta::assert_snapshot!("fmt_copy_rules", formatted);
    assert_eq!(format::format(&formatted).unwrap(), formatted);
    let (_, original) = compiled(&text);
    let (_, again) = compiled(&formatted);
    assert_eq!(again.spec, original.spec);
    assert_eq!(again.set.unwrap().copy_rules.len(), 5);
}

#[test]
fn comments_are_ignored_by_the_parser_and_kept_by_fmt() {
    let text = "# drugs we track\nblock drugs: metformin # trailing note\n\n# the end\n";
    assert_eq!(syntax::parse(text).unwrap().len(), 1);
    let formatted = format::format(text).unwrap();
    assert_eq!(formatted, "# drugs we track\nblock drugs: metformin  # trailing note\n\n# the end\n");
}

// ---- includes -----------------------------------------------------------------------------------

#[test]
fn includes_resolve_relative_to_the_including_file_and_cycles_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("shared")).unwrap();
    std::fs::write(dir.path().join("shared/units.rules"), "block units: mg, ml\n").unwrap();
    std::fs::write(
        dir.path().join("main.rules"),
        "include \"shared/units.rules\"\nrule \"u\": units attend to own block\n",
    )
    .unwrap();
    let loaded = ailla::dsl::load(&dir.path().join("main.rules")).unwrap();
    assert!(loaded.diagnostics.is_empty());
    let Statement::Include(_) = parse_one("include \"shared/units.rules\"") else { panic!() };
    let c = compile(&loaded, Some(&vocabulary()));
    assert_eq!(c.set.unwrap().blocks[0].name, "units");

    std::fs::write(dir.path().join("a.rules"), "include \"b.rules\"\n").unwrap();
    std::fs::write(dir.path().join("b.rules"), "block x: mg\ninclude \"a.rules\"\n").unwrap();
    let loaded = ailla::dsl::load(&dir.path().join("a.rules")).unwrap();
    let rendered = loaded.render(&loaded.diagnostics).replace(&dir.path().display().to_string(), "DIR");
    insta::assert_snapshot!("include_cycle", rendered);

    std::fs::write(dir.path().join("c.rules"), "include \"missing.rules\"\n").unwrap();
    let loaded = ailla::dsl::load(&dir.path().join("c.rules")).unwrap();
    assert!(loaded.has_errors());
    assert!(loaded.render(&loaded.diagnostics).contains("cannot read the included file"));
}

// ---- whole files --------------------------------------------------------------------------------

fn shipped_rules() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rules"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    files
}

#[test]
fn every_shipped_file_checks_and_fmt_round_trips_it() {
    for path in shipped_rules() {
        let loaded = ailla::dsl::load(&path).unwrap();
        let original = compile(&loaded, None);
        let errors: Vec<_> = original.diagnostics.iter().filter(|d| d.severity >= Severity::Error).collect();
        assert!(
            !loaded.has_errors() && errors.is_empty(),
            "{}: {}",
            path.display(),
            loaded.render(&original.diagnostics)
        );
        let source = std::fs::read_to_string(&path).unwrap();
        let formatted = format::format(&source).unwrap();
        assert_eq!(format::format(&formatted).unwrap(), formatted, "{}: fmt is not idempotent", path.display());
        // parse the formatted text from the same folder, so that includes resolve alike
        let again = compile(&load_source(&path, formatted.clone()).unwrap(), None);
        assert_eq!(again.spec, original.spec, "{}: formatting changed the rules", path.display());
        assert_eq!(formatted, source, "{}: not in canonical form; run `ailla fmt --write`", path.display());
    }
}

#[test]
fn check_reports_three_independent_mistakes_with_their_positions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("three.rules");
    std::fs::write(
        &path,
        "block drugs: metformin, insulin\n    anchors heparin\n\nblock units: mg, ml, insulin\n\n\
         rule \"unit to drug\":\n    units attend to drug\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ailla"))
        .args(["check", path.to_str().unwrap(), "--corpus", "bundled"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // a rules file with errors is unusable input: exit 2, as for every other input (README)
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for position in ["three.rules:2:13", "three.rules:4:22", "three.rules:7:21"] {
        assert!(stderr.contains(position), "{position} missing from {stderr}");
    }
    assert!(stderr.contains("3 errors found"), "{stderr}");
}

#[test]
fn check_lists_copy_rules_apart_with_their_coverage() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ailla"))
        .args(["check", "rules/copy-examples.rules", "--corpus", "bundled"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("7 blocks, 9 rules, 5 copy rules"), "{stdout}");
    let (attention, copies) = stdout.split_once("\ncopy rule ").expect("a copy rule table");
    assert!(!attention.contains("recent drug") && attention.contains("ward repeats"), "{stdout}");
    for name in ["recent drug", "unit repeats its unit", "name continues as before", "ward copies", "induction"] {
        let line = copies.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} missing: {stdout}"));
        let covered: usize = line.split_whitespace().last().unwrap().parse().unwrap();
        assert!(covered > 0, "{line}");
    }
}

#[test]
fn anchors_are_scored_in_bits_on_the_bundled_corpus() {
    let text = ailla::data::generator::bundled_corpus(ailla::data::generator::DEFAULT_SEED).train;
    let vocabulary = Vocabulary::build(TokenizerKind::Word, &text, 100_000);
    let ids = vocabulary.encode(&text);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/default.rules");
    let set = compile(&ailla::dsl::load(&path).unwrap(), Some(&vocabulary)).set.unwrap();
    let scored = ailla::dsl::anchors::score(&set, &vocabulary, &ids, 10, 3, 1e-4);
    let drugs = scored.iter().find(|b| b.block == "drugs").unwrap();
    assert!(!drugs.chosen.is_empty() && drugs.chosen.len() <= 3);
    let share = drugs.share_near_block;
    let ceiling = -(share * share.log2() + (1.0 - share) * (1.0 - share).log2());
    for s in &drugs.scores {
        assert!(s.mutual_information_bits >= 0.0 && s.mutual_information_bits <= ceiling + 1e-12);
    }
    // greedy gains never exceed what the anchor says alone plus what the set already said
    let total: f64 = drugs.scores.iter().filter(|s| s.chosen).map(|s| s.greedy_gain_bits).sum();
    assert!(total <= ceiling + 1e-12);
}

#[test]
fn anchors_on_wikitext_report_bits_when_the_corpus_is_present() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/wikitext-2");
    if !dir.is_dir() {
        eprintln!("skipped: {} is absent", dir.display());
        return;
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ailla"))
        .args(["anchors", "rules/wikitext.rules", "--corpus", dir.to_str().unwrap(), "--max", "2"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("I(X;Y) bits") && stdout.contains("block units") && stdout.contains("chosen"), "{stdout}");
}

// ---- robustness ---------------------------------------------------------------------------------

mod mutations {
    use super::*;
    use proptest::prelude::*;

    fn seeds() -> Vec<String> {
        let mut seeds: Vec<String> = shipped_rules().iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rules");
        let mut fixture_files: Vec<PathBuf> = std::fs::read_dir(fixtures).unwrap().map(|e| e.unwrap().path()).collect();
        fixture_files.sort();
        seeds.extend(fixture_files.iter().map(|p| std::fs::read_to_string(p).unwrap()));
        seeds.push(format!(
            "{DRUGS}block units: mg\nrule \"u\": units attend to anchors of drugs within 4 in layers 0\n"
        ));
        seeds.push(format!(
            "{DRUGS}block units: mg\nrule \"c\": copy from drugs within 8 strength 2\n\
             rule \"d\": units copies from drugs from step 3\nrule \"e\": any token copies continuation of previous \
             occurrence\nrule \"f\": drugs copies previous occurrence until step 9\n"
        ));
        seeds
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        DeleteChars(usize, usize),
        DuplicateChars(usize, usize),
        SwapChars(usize, usize),
        DeleteLine(usize),
        DuplicateLine(usize),
        SwapLines(usize, usize),
        Insert(usize, char),
        /// A piece of the language (or of a common mistake) dropped in anywhere.
        InsertText(usize, &'static str),
    }

    const SNIPPETS: &[&str] = &[
        " within 0",
        " within 99999999999999999999",
        " in layers 5, 18446744073709551616",
        " in heads 1.5",
        " priority -2147483649",
        " strength 1e9",
        " from step 100000000000000000000",
        " until step 3",
        "  # note",
        "#endif",
        ",",
        "\u{feff}",
        "\nrule \"new\": copy from drugs within 4\n",
        "\nrule \"ind\": any token copies continuation of previous occurrence\n",
        "\nblock token: x\n",
        "\nrecruitable block symptoms seeded by fever\n",
        " anchors ",
        "\"a b\"",
        "withn",
        " pattern \"[\"",
        "\ninclude \"missing.rules\"\n",
        "\u{a0}",
        "\u{3000}",
        "é",
        "\n    rule,",
        "\nblock.size, ",
        " strength 2 strength 3",
        " strength -1",
        " strength .5",
        "\"unclosed",
        "\r\n",
    ];

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<usize>(), 1..8usize).prop_map(|(a, n)| Mutation::DeleteChars(a, n)),
            (any::<usize>(), 1..8usize).prop_map(|(a, n)| Mutation::DuplicateChars(a, n)),
            (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapChars(a, b)),
            any::<usize>().prop_map(Mutation::DeleteLine),
            any::<usize>().prop_map(Mutation::DuplicateLine),
            (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
            (any::<usize>(), prop::sample::select(vec!['"', ',', ':', '#', '\\', '\n', ' ', 'x', '9', '-', '(']))
                .prop_map(|(a, c)| Mutation::Insert(a, c)),
            (any::<usize>(), prop::sample::select(SNIPPETS.to_vec())).prop_map(|(a, t)| Mutation::InsertText(a, t)),
        ]
    }

    fn apply(text: &str, m: &Mutation) -> String {
        let mut chars: Vec<char> = text.chars().collect();
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        let n = chars.len().max(1);
        match *m {
            Mutation::DeleteChars(a, k) => {
                let a = a % n;
                chars.drain(a..(a + k).min(chars.len()));
            }
            Mutation::DuplicateChars(a, k) => {
                let a = a % n;
                let piece: Vec<char> = chars[a.min(chars.len())..(a + k).min(chars.len())].to_vec();
                chars.splice(a.min(chars.len())..a.min(chars.len()), piece);
            }
            Mutation::SwapChars(a, b) if !chars.is_empty() => {
                let len = chars.len();
                chars.swap(a % len, b % len);
            }
            Mutation::Insert(a, c) => chars.insert(a % (chars.len() + 1), c),
            Mutation::InsertText(a, text) => {
                let at = a % (chars.len() + 1);
                chars.splice(at..at, text.chars());
            }
            Mutation::DeleteLine(a) if !lines.is_empty() => {
                let len = lines.len();
                lines.remove(a % len);
                return lines.join("\n");
            }
            Mutation::DuplicateLine(a) if !lines.is_empty() => {
                let i = a % lines.len();
                let line = lines[i].clone();
                lines.insert(i, line);
                return lines.join("\n");
            }
            Mutation::SwapLines(a, b) if !lines.is_empty() => {
                let len = lines.len();
                lines.swap(a % len, b % len);
                return lines.join("\n");
            }
            _ => {}
        }
        chars.into_iter().collect()
    }

    proptest! {
        // PROPTEST_CASES=100000 runs the full campaign the README reports; CI runs the default 256.
        #[test]
        fn mutated_files_never_panic_or_hang(seed in 0usize..32, mutations in prop::collection::vec(mutation(), 1..6)) {
            let seeds = seeds();
            let mut text = seeds[seed % seeds.len()].clone();
            for m in &mutations {
                text = apply(&text, m);
            }
            let started = std::time::Instant::now();
            let loaded = load_source(Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/mutated.rules").as_path(), text.clone()).unwrap();
            let vocabulary = vocabulary();
            let compiled = compile(&loaded, Some(&vocabulary));
            let _ = loaded.render(&compiled.diagnostics);
            if let Ok(formatted) = format::format(&text) {
                // what fmt prints parses back, to the same rules, with every comment, and is a fixed point
                prop_assert!(syntax::parse(&formatted).is_ok(), "fmt output does not parse:\n{formatted}");
                let comments = |t: &str| -> Vec<String> {
                    ailla::dsl::recovery::comment_ranges(t).into_iter().map(|r| t[r].trim_end().to_string()).collect()
                };
                prop_assert_eq!(comments(&formatted), comments(&text), "fmt lost a comment:\n{}", formatted);
                let again = format::format(&formatted);
                prop_assert_eq!(again.as_ref().ok(), Some(&formatted), "fmt is not idempotent");
                let spec = |t: &str| compile(&load_source(Path::new("m.rules"), t.to_string()).unwrap(), None).spec;
                prop_assert_eq!(spec(&formatted), spec(&text), "fmt changed the rules");
            }
            prop_assert!(started.elapsed().as_secs_f64() < 2.0, "took {:?}", started.elapsed());
        }
    }
}
