//! `ailla check`, `ailla fmt` and `ailla anchors`.

use super::*;

/// The text of a corpus named on the command line: `bundled`, a directory's training split, or a file.
pub(super) fn corpus_text(name: &str) -> Result<String> {
    match CorpusSource::parse(name) {
        CorpusSource::Directory(path) if path.is_file() => crate::data::corpus::read_text(&path),
        source => Ok(source.load()?.train),
    }
}

pub(super) fn loaded_rules(path: &Path) -> Result<crate::dsl::Loaded> {
    crate::dsl::load(path)
}

pub(super) fn run_check(args: CheckArgs, out: &mut dyn Write) -> Result<()> {
    let loaded = loaded_rules(&args.rules)?;
    let (vocabulary, corpus_ids) = match (&args.corpus, &args.checkpoint) {
        (Some(corpus), _) => {
            let text = corpus_text(corpus)?;
            let vocabulary = crate::data::Vocabulary::build(args.tokenizer.into(), &text, 1_000_000);
            let ids = vocabulary.encode(&text);
            (Some(vocabulary), Some(ids))
        }
        (None, Some(ckpt)) => (Some(checkpoint::load(ckpt)?.vocabulary), None),
        (None, None) => (None, None),
    };
    let checked = crate::dsl::Checked::new(loaded, vocabulary.as_ref());
    if !checked.diagnostics.is_empty() {
        crate::eprint_lossy!("{}", checked.render());
    }
    if let Some(summary) = checked.errors_found(&args.rules) {
        return Err(Error::Rejected(summary));
    }
    let compiled = &checked.compiled;
    let spec = &compiled.spec;
    let copy_count = spec.rules.iter().filter(|r| r.copy).count();
    let mut s = format!(
        "{}: {} blocks, {} rules{}\n",
        args.rules.display(),
        spec.blocks.len(),
        spec.rules.len() - copy_count,
        if copy_count > 0 { format!(", {copy_count} copy rules") } else { String::new() }
    );
    if vocabulary.is_none() {
        s += "(no vocabulary given: words were not looked up; add --corpus or --checkpoint)\n";
    }
    s += "\nblock                 members  anchors\n";
    for (index, block) in spec.blocks.iter().enumerate() {
        let members = compiled.set.as_ref().map_or(block.words.len(), |set| set.blocks[index].members.len());
        let kind = if block.recruitable { "  (recruitable)" } else { "" };
        s += &format!("{:<20}  {:>7}  {}{kind}\n", block.name, members, block.anchors.join(", "));
    }
    let coverage: Option<Vec<usize>> = match (&compiled.set, &corpus_ids) {
        (Some(set), Some(ids)) => Some(
            (0..set.rules.len())
                .map(|r| {
                    ids.chunks(crate::locality::targets::COVERAGE_WINDOW)
                        .map(|window| crate::locality::targets::rule_targets(set, r, window).covered_rows())
                        .sum()
                })
                .collect(),
        ),
        _ => None,
    };
    s += "\nrule                                         covers\n";
    let names: Vec<String> = match &compiled.set {
        Some(set) => set.rules.iter().map(|r| r.name.clone()).collect(),
        None => spec.rules.iter().filter(|r| !r.copy).map(|r| r.name.clone()).collect(),
    };
    for (index, name) in names.iter().enumerate() {
        let covered = coverage.as_ref().map_or("-".to_string(), |c| c[index].to_string());
        s += &format!("{name:<42}  {covered:>7}\n");
    }
    if copy_count > 0 {
        // copy rules (METHOD §4): the query positions whose cache is not empty
        s += "\ncopy rule                                    covers\n";
        let copy_rules: Vec<(String, String)> = match (&compiled.set, &corpus_ids) {
            (Some(set), Some(ids)) => set
                .copy_rules
                .iter()
                .map(|rule| {
                    let covered: usize = ids
                        .chunks(crate::locality::targets::COVERAGE_WINDOW)
                        .map(|window| {
                            crate::locality::copy_targets::copy_rule_targets(set, rule, window)
                                .iter()
                                .filter(|targets| !targets.is_empty())
                                .count()
                        })
                        .sum();
                    (rule.name.clone(), covered.to_string())
                })
                .collect(),
            _ => spec.rules.iter().filter(|r| r.copy).map(|r| (r.name.clone(), "-".to_string())).collect(),
        };
        for (name, covered) in copy_rules {
            s += &format!("{name:<42}  {covered:>7}\n");
        }
    }
    if let Some(ids) = &corpus_ids {
        s += &format!(
            "\ncoverage: query positions each rule covers in the corpus ({} {} tokens, windows of {}){}\n",
            ids.len(),
            TokenizerKind::from(args.tokenizer).name(),
            crate::locality::targets::COVERAGE_WINDOW,
            if copy_count > 0 { "; a copy rule covers a position whose copy cache is not empty" } else { "" }
        );
    }
    write_out(out, &s)
}

pub(super) fn run_fmt(args: FmtArgs, out: &mut dyn Write) -> Result<()> {
    let source = std::fs::read_to_string(&args.rules).map_err(|e| Error::io(&args.rules, e))?;
    match crate::dsl::format::format(&source) {
        Ok(formatted) if args.write => checkpoint::atomic_write(&args.rules, formatted.as_bytes()),
        Ok(formatted) => write_out(out, &formatted),
        Err(_) => {
            let loaded = crate::dsl::load_source(&args.rules, source)?;
            crate::eprint_lossy!("{}", loaded.render(&loaded.diagnostics));
            Err(Error::Rejected(format!("{}: cannot be formatted until it parses", args.rules.display())))
        }
    }
}

pub(super) fn run_anchors(args: AnchorsArgs, out: &mut dyn Write) -> Result<()> {
    let loaded = loaded_rules(&args.rules)?;
    let text = corpus_text(&args.corpus)?;
    let vocabulary = crate::data::Vocabulary::build(TokenizerKind::Word, &text, 1_000_000);
    let ids = vocabulary.encode(&text);
    let checked = crate::dsl::Checked::new(loaded, Some(&vocabulary));
    let Some(set) = &checked.compiled.set else {
        crate::eprint_lossy!("{}", checked.render());
        return Err(Error::Rejected(format!("{}: fix the errors above first", args.rules.display())));
    };
    let scored = crate::dsl::anchors::score(set, &vocabulary, &ids, args.window, args.max, args.min_gain);
    if args.json {
        return write_out(
            out,
            &(serde_json::to_string_pretty(&scored).map_err(|e| Error::Numeric(e.to_string()))? + "\n"),
        );
    }
    let mut s = format!(
        "anchor scores on {} words: I(X;Y) in bits, X = the token at i, Y = a block member within {} positions\n",
        ids.len(),
        args.window
    );
    for block in &scored {
        s += &format!("\nblock {}  (P(Y) = {:.4})\n", block.block, block.share_near_block);
        s += "  token                 occurrences   I(X;Y) bits   greedy gain bits\n";
        for score in &block.scores {
            let mark = if score.chosen { "  chosen" } else { "" };
            s += &format!(
                "  {:<20}  {:>11}   {:>11.6}   {:>16.6}{mark}\n",
                score.token, score.occurrences, score.mutual_information_bits, score.greedy_gain_bits
            );
        }
    }
    if args.snippet {
        // the blocks as written, with the chosen anchors in place of the old ones: ready to paste back
        s += &format!(
            "\n# anchors chosen by `ailla anchors` (window {}, at most {} per block)\n",
            args.window, args.max
        );
        for (block, scores) in checked.compiled.spec.blocks.iter().zip(&scored) {
            let mut chosen = block.clone();
            chosen.anchors = scores.chosen.clone();
            s += &format!("\n{}\n", crate::dsl::format::block_spec(&chosen));
        }
    }
    write_out(out, &s)
}
