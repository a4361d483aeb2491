//! The `.rules` language as a domain expert meets it: every mistake found, blamed at the right
//! place, in one run, with words a non-programmer can act on. One test per mistake that was once
//! missed or misreported (the first list), each failing on the code before the fix; the form
//! of the messages is snapshot-tested, their positions asserted.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ailla::data::{TokenizerKind, Vocabulary};
use ailla::dsl::{compile, compile_with, format, load_source, syntax, CompileOptions, ModelLayout};
use codespan_reporting::diagnostic::Severity;

fn ailla(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ailla")).args(args).output().expect("the ailla binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn vocabulary(corpus: &str) -> Vocabulary {
    Vocabulary::build(TokenizerKind::Word, corpus, 100_000)
}

const CORPUS: &str = "warfarin heparin insulin aspirin Aspirin mg ml given daily PUBLIUS. Madison HAMILTON ' \
                      the of and to";

/// Every diagnostic of `text` compiled against [`CORPUS`], rendered as `ailla check` prints them,
/// and the number of errors.
fn check_with(text: &str, options: CompileOptions) -> (String, usize) {
    let loaded = load_source(Path::new("orders.rules"), text.to_string()).unwrap();
    let vocabulary = vocabulary(CORPUS);
    let compiled = compile_with(&loaded, Some(&vocabulary), options);
    let all: Vec<_> = loaded.diagnostics.iter().chain(&compiled.diagnostics).cloned().collect();
    let errors = all.iter().filter(|d| d.severity >= Severity::Error).count();
    (loaded.render(&all), errors)
}

fn check(text: &str) -> (String, usize) {
    check_with(text, CompileOptions::default())
}

/// `line:column` of every primary label in rendered diagnostics, in order.
fn positions(rendered: &str) -> Vec<String> {
    rendered.lines().filter_map(|l| l.trim_start().strip_prefix("┌─ orders.rules:")).map(str::to_string).collect()
}

// ---- numbers out of range ------------------------------------------------------------------------

#[test]
fn numbers_too_large_are_errors_at_their_own_spot_and_fmt_refuses_them() {
    let cases = [
        (
            "rule \"r\": any token attends to previous occurrence from step 100000000000000000000\n",
            "100000000000000000000",
        ),
        ("rule \"r\": any token attends to previous occurrence within 18446744073709551616\n", "18446744073709551616"),
        (
            "rule \"r\": any token attends to previous occurrence in layers 18446744073709551616\n",
            "18446744073709551616",
        ),
        ("rule \"r\": any token attends to previous occurrence in heads 0, 4096\n", "4096"),
        ("rule \"r\": any token attends to previous occurrence priority 2147483648\n", "2147483648"),
        ("rule \"r\": any token attends to previous occurrence strength 5000\n", "5000"),
    ];
    for (text, number) in cases {
        let (rendered, errors) = check(text);
        assert_eq!(errors, 1, "{text}{rendered}");
        assert!(rendered.contains("number out of range"), "{rendered}");
        assert!(rendered.contains(" to ") || rendered.contains("at most"), "the range is named:\n{rendered}");
        // blamed on the number itself
        assert_eq!(positions(&rendered), [format!("1:{}", text.find(number).unwrap() + 1)], "{rendered}");
        assert!(format::format(text).is_err(), "fmt must refuse rather than drop the clause:\n{text}");
    }
    insta::assert_snapshot!("number_out_of_range", check(cases[0].0).0);
}

#[test]
fn numbers_in_range_round_trip_through_fmt() {
    let text = "rule \"r\": any token attends to previous occurrence within 1000000 in layers 0, 1023 \
                priority -1000000 from step 1000000000000 strength 1000\n";
    let (rendered, errors) = check(text);
    assert_eq!(errors, 0, "{rendered}");
    let formatted = format::format(text).unwrap();
    for clause in
        ["within 1000000", "in layers 0, 1023", "priority -1000000", "from step 1000000000000", "strength 1000"]
    {
        assert!(formatted.contains(clause), "fmt dropped `{clause}`:\n{formatted}");
    }
}

// ---- layers and heads against the model -----------------------------------------------------------

#[test]
fn layers_and_heads_are_checked_against_the_model_shape() {
    let text = "rule \"r\": any token attends to previous occurrence in layers 0, 5 in heads 9\n";
    let layout = Some(ModelLayout { layers: 2, heads: 4 });
    let (rendered, errors) = check_with(text, CompileOptions { layout, ..CompileOptions::default() });
    assert_eq!(errors, 2, "{rendered}");
    assert!(rendered.contains("the model has no layer 5"), "{rendered}");
    assert!(rendered.contains("the model has no head 9"), "{rendered}");
    assert_eq!(check(text).1, 0, "without a model, any index in range is accepted");
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[test]
fn check_validate_and_eval_refuse_layers_the_model_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("heads.rules");
    std::fs::write(&rules, "rule \"r\": any token attends to previous occurrence in layers 5 in heads 9\n").unwrap();
    let rules_arg = rules.to_str().unwrap();
    // the fixture is a 2-layer, 4-head character model
    let checked = ailla(&["check", rules_arg, "--checkpoint", fixture("char-tiny.safetensors").to_str().unwrap()]);
    assert_eq!(checked.status.code(), Some(2), "{}", stderr(&checked));
    assert!(stderr(&checked).contains("the model has no layer 5"), "{}", stderr(&checked));
    assert!(stderr(&checked).contains("heads.rules:1:"), "{}", stderr(&checked));

    let text = dir.path().join("text.txt");
    std::fs::write(&text, "the cat sat on the mat and the cat sat again\n").unwrap();
    let eval = ailla(&[
        "eval",
        fixture("char-tiny.safetensors").to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--lambda",
        "1",
        "--rules",
        rules_arg,
    ]);
    assert_eq!(eval.status.code(), Some(2), "{}", stderr(&eval));
    assert!(stderr(&eval).contains("no layer 5"), "{}", stderr(&eval));

    let quickstart = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/quickstart.yaml"))
        .unwrap()
        .replace("../rules/default.rules", rules_arg);
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(&pipeline, quickstart).unwrap();
    let validated = ailla(&["validate", pipeline.to_str().unwrap()]);
    assert_eq!(validated.status.code(), Some(2), "{}", stderr(&validated));
    assert!(stderr(&validated).contains("locality.rules"), "the field is named:\n{}", stderr(&validated));
    assert!(stderr(&validated).contains("no layer 5"), "{}", stderr(&validated));
}

// ---- syntax errors: all of them, each at its spot ------------------------------------------------

/// A medication-orders file with four independent syntax mistakes.
const FOUR_MISTAKES: &str = "\
# medication orders
block anticoagulants: warfarin, heparin,
block units: mg, ml

block directives: \"#if\", #endif

rule \"dose\": units attend to anticoagulants within 2.5

rule \"pair\": pair a,b and c
rule \"fine\": units attend to units within 4
";

#[test]
fn one_run_reports_every_independent_syntax_error_where_it_is() {
    let (rendered, errors) = check(FOUR_MISTAKES);
    assert_eq!(errors, 4, "{rendered}");
    // the trailing comma (2:40), not the next line; the `#` (5:26); the fraction (7:52); the comma (9:20)
    assert_eq!(positions(&rendered), ["2:40", "5:26", "7:52", "9:20"], "{rendered}");
    assert_eq!(rendered.matches("error: syntax error").count(), 4, "{rendered}");
    assert!(!rendered.contains("is not a declared block"), "no cascade from the unreadable block:\n{rendered}");
    insta::assert_snapshot!("four_syntax_mistakes", rendered);
}

#[test]
fn a_keyword_after_a_trailing_comma_blames_the_comma() {
    let (rendered, errors) = check("block names: Madison, HAMILTON,\n    anchors Madison\n");
    assert_eq!(errors, 1, "{rendered}");
    assert_eq!(positions(&rendered), ["1:31"], "{rendered}");
    assert!(rendered.contains("this comma makes `anchors` one more word of the list"), "{rendered}");
}

#[test]
fn the_expected_list_is_short_and_keywords_get_a_did_you_mean() {
    let (rendered, _) = check("block units: mg\nrule \"r\": units attend to units withn 4\n");
    let label = rendered.lines().find(|l| l.contains("expected")).unwrap();
    assert!(label.matches('`').count() <= 12, "a short list of alternatives: {label}");
    assert!(rendered.contains("did you mean `within`?"), "{rendered}");
}

#[test]
fn keywords_as_block_names_and_fractions_are_explained() {
    let (rendered, _) = check("block token: mg\n");
    assert!(rendered.contains("`token` is a keyword of the rules language"), "{rendered}");
    let (rendered, _) = check("block units: mg\nrule \"r\": units attend to units priority 1.5\n");
    assert!(rendered.contains("`1.5` is not a whole number"), "{rendered}");
    assert!(!rendered.contains("found `.5`"), "{rendered}");
}

#[test]
fn a_syntax_error_exits_2_headed_as_a_syntax_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orders.rules");
    std::fs::write(&path, FOUR_MISTAKES).unwrap();
    let output = ailla(&["check", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "the README: 2 is unusable input");
    assert!(stderr(&output).starts_with("error: syntax error"), "{}", stderr(&output));
    assert!(!stderr(&output).contains("cannot be read"), "{}", stderr(&output));
}

// ---- encodings -----------------------------------------------------------------------------------

#[test]
fn a_byte_order_mark_is_skipped_and_latin1_is_reported_by_position() {
    let dir = tempfile::tempdir().unwrap();
    let bom = dir.path().join("bom.rules");
    std::fs::write(&bom, b"\xEF\xBB\xBFblock units: mg\n").unwrap();
    let output = ailla(&["check", bom.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let formatted = ailla(&["fmt", bom.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&formatted.stdout), "block units: mg\n");

    let latin = dir.path().join("latin.rules");
    std::fs::write(&latin, b"block units: mg\nblock foods: caf\xE9, th\xE9\n").unwrap();
    let output = ailla(&["check", latin.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("latin.rules"), "{message}");
    assert!(message.contains("line 2, column 17 (byte offset 32)"), "{message}");
    assert!(!message.contains("stream did not contain valid UTF-8"), "{message}");
}

// ---- size: bounded output ------------------------------------------------------------------------

#[test]
fn thousands_of_missing_words_print_a_few_and_a_count() {
    let words: Vec<String> = (0..4000).map(|i| format!("drug{i}")).collect();
    let text = format!("block gazetteer: warfarin, {}\n", words.join(", "));
    let (rendered, errors) = check(&text);
    assert_eq!(errors, 0);
    assert_eq!(rendered.matches("is not in the vocabulary").count(), 5, "{}", &rendered[..2000.min(rendered.len())]);
    assert!(rendered.contains("and 3,995 more words not in the vocabulary; `ailla check --all` lists them"));
    assert!(rendered.len() < 10_000, "bounded output, not one source line per word: {} bytes", rendered.len());
    // the one long line is clipped around each word
    assert!(rendered.lines().all(|l| l.chars().count() < 220), "long lines are clipped");
    let (all, _) = check_with(&text, CompileOptions { all_warnings: true, ..CompileOptions::default() });
    assert_eq!(all.matches("is not in the vocabulary").count(), 4000);
}

#[test]
fn a_clipped_line_keeps_its_true_line_and_column() {
    let words: Vec<String> = (0..300).map(|i| format!("word{i}")).collect();
    let text = format!("block units: mg\nblock long: {}, warfrin\n", words.join(", "));
    let (rendered, _) = check_with(&text, CompileOptions { all_warnings: true, ..CompileOptions::default() });
    let column = text.lines().nth(1).unwrap().find("warfrin").unwrap() + 1;
    assert!(rendered.contains(&format!("orders.rules:2:{column}")), "{}", &rendered[..1500.min(rendered.len())]);
    assert!(rendered.contains("…"), "the window is marked as clipped");
}

// ---- fmt keeps every comment ---------------------------------------------------------------------

fn comments(text: &str) -> Vec<String> {
    ailla::dsl::recovery::comment_ranges(text).into_iter().map(|r| text[r].trim_end().to_string()).collect()
}

#[test]
fn fmt_keeps_end_of_line_comments_beside_what_they_annotate() {
    let text = "\
block anticoagulants:  # the ones we dose by weight
    warfarin,  # oral
    heparin,
    # low molecular weight
    enoxaparin, dalteparin  # injected
    anchors warfarin  # the usual one
rule \"dose\":  # why: a dose follows its drug
    units attend to anticoagulants  # within the order
    within 4 # four tokens
include \"units.rules\"  # shared
";
    let formatted = format::format(text).unwrap();
    assert_eq!(comments(&formatted), comments(text), "{formatted}");
    assert_eq!(format::format(&formatted).unwrap(), formatted, "idempotent");
    assert!(formatted.contains("warfarin,  # oral\n"), "{formatted}");
    assert!(formatted.contains("within 4  # four tokens"), "{formatted}");
    insta::assert_snapshot!("fmt_end_of_line_comments", formatted);
}

/// Every shipped rules file and test fixture: fmt reproduces every clause (the same statements, every
/// comment) or refuses; the fixtures with numbers out of range are refused.
#[test]
fn fmt_round_trips_every_shipped_and_fixture_file_or_refuses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["rules", "tests/fixtures/rules"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rules") {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 12, "{files:?}");
    let strip = |statements: Vec<syntax::Statement>| format!("{:?}", statements.len());
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let refuse = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("out-of-range"));
        match format::format(&text) {
            Ok(formatted) => {
                assert!(!refuse, "{}: fmt printed a file whose numbers are out of range", path.display());
                assert_eq!(comments(&formatted), comments(&text), "{}: a comment was lost", path.display());
                assert_eq!(format::format(&formatted).unwrap(), formatted, "{}: not idempotent", path.display());
                let before = compile(&load_source(&path, text.clone()).unwrap(), None).spec;
                let after = compile(&load_source(&path, formatted.clone()).unwrap(), None).spec;
                assert_eq!(before, after, "{}: fmt changed the rules", path.display());
                assert_eq!(strip(syntax::parse(&text).unwrap()), strip(syntax::parse(&formatted).unwrap()));
            }
            Err(failure) => assert!(refuse, "{}: fmt refused: {failure:?}", path.display()),
        }
    }
}

// ---- suggestions ---------------------------------------------------------------------------------

#[test]
fn suggestions_try_other_casings_first_and_never_offer_nonsense() {
    let (rendered, _) = check("block author: Publius.\n");
    assert!(rendered.contains("closest entries: `PUBLIUS.`"), "{rendered}");
    let (rendered, _) = check("block feelings: 😀, warfarin\n");
    assert!(!rendered.contains("`'`"), "an emoji is not one edit from an apostrophe:\n{rendered}");
}

#[test]
fn anchors_and_includes_get_a_did_you_mean() {
    let (rendered, errors) = check("block anticoagulants: warfarin, heparin\n    anchors warfrin\n");
    assert_eq!(errors, 1);
    assert!(rendered.contains("did you mean `warfarin`?"), "{rendered}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("units.rules"), "block units: mg\n").unwrap();
    std::fs::write(dir.path().join("main.rules"), "include \"unit.rules\"\n").unwrap();
    let loaded = ailla::dsl::load(&dir.path().join("main.rules")).unwrap();
    let rendered = loaded.render(&loaded.diagnostics);
    assert!(rendered.contains("did you mean `units.rules`?"), "{rendered}");
    assert!(!rendered.contains("os error"), "{rendered}");
    assert!(rendered.contains("no file `unit.rules`"), "{rendered}");
}

// ---- silent passes that now warn -----------------------------------------------------------------

#[test]
fn windows_of_zero_spaced_words_case_only_matches_and_empty_files_warn() {
    let (rendered, errors) = check("block units: mg\nrule \"r\": units attend to units within 0\n");
    assert_eq!(errors, 0);
    assert!(rendered.contains("a window of 0 holds no position, so this rule never acts"), "{rendered}");

    let (rendered, _) = check("block cities: \"new york\", mg\n");
    assert!(rendered.contains("`new york` contains whitespace, so it can never match a token"), "{rendered}");

    let (rendered, _) = check("block authors ignoring case: publius., mg\n");
    assert!(rendered.contains("`publius.` occurs only in another casing"), "{rendered}");
    assert!(rendered.contains("matches only `PUBLIUS.`"), "{rendered}");

    let (rendered, errors) = check("# nothing here yet\n");
    assert_eq!(errors, 0);
    assert!(rendered.contains("declares no block and no rule"), "{rendered}");
}

#[test]
fn one_overlap_of_a_pattern_with_a_word_list_is_one_error() {
    let (rendered, errors) = check("block drugs: warfarin, heparin, insulin, aspirin\nblock ends: pattern \".*in\"\n");
    assert_eq!(errors, 1, "{rendered}");
    assert!(rendered.contains("4 tokens are in two blocks"), "{rendered}");
}

// ---- found in review -------------------------------------------------------------------------------

#[test]
fn a_no_break_space_inside_a_word_with_a_comma_is_a_syntax_error_not_a_panic() {
    for space in ["\u{a0}", "\u{3000}"] {
        let (rendered, errors) = check(&format!("block a: mg\nrule \"p\": pair x{space}a,b and c\n"));
        assert_eq!(errors, 1, "{rendered}");
        assert!(rendered.contains("must be quoted"), "{rendered}");
    }
}

#[test]
fn keywords_at_the_start_of_a_list_line_do_not_split_a_statement_after_an_error() {
    let (rendered, errors) =
        check("block a: mg,\n    rule,\n    block.size, ml\nrule \"r\": a attend to a within 2.5\n");
    assert_eq!(errors, 1, "only the real mistake:\n{rendered}");
    assert!(rendered.contains("`2.5` is not a whole number"), "{rendered}");
}

#[test]
fn a_repeated_option_is_an_error_and_fmt_refuses_it() {
    let text = "block a: mg\nrule \"t\": a attend to a strength 2 strength 3 within 4\n";
    let (rendered, errors) = check(text);
    assert_eq!(errors, 1, "{rendered}");
    assert!(rendered.contains("`strength` is given twice in this rule"), "{rendered}");
    assert!(format::format(text).is_err());
}

#[test]
fn fmt_keeps_the_comments_of_a_recruitable_seed_list() {
    let text = "recruitable block symptoms seeded by fever,  # f\n   cough,  # c\n   rash  # r\n";
    let formatted = format::format(text).unwrap();
    assert_eq!(comments(&formatted), comments(text), "{formatted}");
    assert_eq!(format::format(&formatted).unwrap(), formatted);
}

#[test]
fn negative_numbers_bare_fractions_and_open_quotes_are_explained() {
    let (rendered, _) = check("block a: x\nrule \"t\": a attend to a strength -1\n");
    assert!(rendered.contains("`strength` cannot be negative"), "{rendered}");
    let (rendered, _) = check("block a: x\nrule \"t\": a attend to a strength .5\n");
    assert!(rendered.contains("`0.5`"), "{rendered}");
    let (rendered, _) = check("block b: \"x, y\n");
    assert!(rendered.contains("this quote is never closed"), "{rendered}");
}

#[test]
fn a_misspelt_block_is_offered_even_when_its_declaration_has_an_error() {
    let (rendered, _) =
        check("block authors: Madison, HAMILTON,\nblock units: mg\nrule \"r\": units attend to author\n");
    assert!(rendered.contains("did you mean `authors`?"), "{rendered}");
}

#[test]
fn casing_and_edit_distance_combine_in_suggestions() {
    let (rendered, _) = check("block author: Publius\n");
    assert!(rendered.contains("`PUBLIUS.`"), "{rendered}");
}

#[test]
fn every_warning_kind_is_bounded_not_only_missing_words() {
    let rules: String =
        (0..12).map(|i| format!("rule \"r{i}\": units attend to units within 0\n")).collect::<Vec<_>>().concat();
    let patterns: String = (0..9).map(|i| format!("block p{i}: pattern \"zz{i}.*\"\n")).collect::<Vec<_>>().concat();
    let (rendered, _) = check(&format!("block units: mg\n{rules}{patterns}"));
    assert_eq!(rendered.matches("a window of 0 holds no position").count(), 5, "{rendered}");
    assert!(rendered.contains("and 7 more rules with `within 0`"), "{rendered}");
    assert_eq!(rendered.matches("this pattern matches no vocabulary entry").count(), 5, "{rendered}");
    assert!(rendered.contains("and 4 more patterns that match nothing"), "{rendered}");
}

#[test]
fn block_names_rule_names_and_spaced_words_get_hints() {
    let (rendered, _) = check("block café: mg\n");
    assert!(rendered.contains("a block name is made of ASCII letters"), "{rendered}");
    let (rendered, _) = check("block units: mg\nrule r: units attend to units\n");
    assert!(rendered.contains("a rule's name is quoted: rule \"r\":"), "{rendered}");
    let (rendered, _) = check("block units: mg ml, units\n");
    assert!(rendered.contains("words are separated by commas"), "{rendered}");
    let (rendered, _) = check("block token: mg\n");
    assert!(rendered.contains("^^^^^ expected a block name"), "the keyword alone is underlined:\n{rendered}");
}
