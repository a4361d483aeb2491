//! An [`Explanation`] in words: plain sentences for a terminal, Markdown for a page. Both say the same
//! things in the same order; only the layout differs.

use super::{Actual, CopyShare, Coverage, Explanation, HeadRow};

/// A probability as a reader wants it: four decimals, or two significant digits when that would read 0.
pub fn probability(p: f64) -> String {
    if p == 0.0 || p >= 1e-3 {
        format!("{p:.4}")
    } else {
        format!("{p:.1e}")
    }
}

fn percent(part: f64, whole: f64) -> String {
    if whole > 0.0 {
        format!("{:.1} %", 100.0 * part / whole)
    } else {
        "0 %".into()
    }
}

/// A token as shown in a sentence: quoted, with line ends and spaces made visible.
pub fn quoted(token: &str) -> String {
    let visible = match token {
        "\n" => "⏎",
        " " => "␣",
        other => other,
    };
    format!("'{visible}'")
}

/// A `.rules` statement on one line, without its `rule "name":` head.
fn statement(text: &str) -> String {
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    if first.starts_with("rule ") {
        lines.map(str::trim).collect::<Vec<_>>().join(" ")
    } else {
        first.trim().to_string()
    }
}

fn positions(sources: &[super::Source]) -> String {
    let listed: Vec<String> = sources.iter().map(|s| format!("{} ({})", s.position, quoted(&s.context))).collect();
    match listed.len() {
        1 => format!("position {}", listed[0]),
        _ => format!("positions {}", listed.join(", ")),
    }
}

fn header(e: &Explanation) -> Vec<String> {
    let mut lines = vec![
        format!(
            "Position {} of {} tokens ({} tokenizer), at λ = {}{}.",
            e.position,
            e.text_tokens,
            e.tokenizer,
            e.lambda,
            if e.layer_lambdas.iter().all(|&l| l == e.lambda) {
                String::new()
            } else {
                format!(" (attention bias per layer: {:?})", e.layer_lambdas)
            }
        ),
        format!(
            "The model reads positions {} to {} and predicts the token at position {}. It read: {}",
            e.window_start,
            e.position,
            e.position + 1,
            quoted(&e.context)
        ),
    ];
    if e.unknown_count > 0 {
        let listed: Vec<String> =
            e.unknown.iter().map(|u| format!("{} (position {})", quoted(&u.text), u.position)).collect();
        let more = if e.unknown_count > e.unknown.len() { ", …" } else { "" };
        lines.push(format!(
            "Note: {} piece{} of the text {} not in the model's vocabulary and {} read as '<unk>': {}{more}.",
            e.unknown_count,
            if e.unknown_count == 1 { "" } else { "s" },
            if e.unknown_count == 1 { "is" } else { "are" },
            if e.unknown_count == 1 { "was" } else { "were" },
            listed.join(", ")
        ));
    }
    lines
}

/// The sentences that decompose `p(y)`.
fn decomposition(a: &Actual, lambda: f64) -> Vec<String> {
    let mut lines = vec![format!(
        "The next token is {}. The model predicted it with probability {} (rank {}; {:.2} bits).",
        quoted(&a.token),
        probability(a.probability),
        a.rank,
        a.bits
    )];
    let copied: Vec<&CopyShare> = a.copy_paths.iter().filter(|c| c.share > 0.0).collect();
    let network = format!(
        "{} of that came from the network (weight {} × softmax probability {})",
        percent(a.network.share, a.probability),
        probability(a.network.weight),
        probability(a.network.softmax_probability)
    );
    if copied.is_empty() {
        lines.push(format!("{network}."));
    } else {
        let parts: Vec<String> = copied
            .iter()
            .map(|c| {
                format!(
                    "{} from the copy path `{}` (weight {} × cache share {}), which copied it from {}",
                    percent(c.share, a.probability),
                    c.name,
                    probability(c.weight),
                    probability(c.cache_probability),
                    positions(&c.sources)
                )
            })
            .collect();
        lines.push(format!("{network}, {}.", parts.join("; ")));
    }
    for c in a.copy_paths.iter().filter(|c| c.share == 0.0) {
        let cache: Vec<String> =
            c.cache.iter().map(|k| format!("{} {}", quoted(&k.token), probability(k.probability))).collect();
        lines.push(if !c.applies {
            format!("The copy path `{}` has no targets at this position.", c.name)
        } else if c.cache_probability > 0.0 {
            format!(
                "The copy path `{}` is shut at λ = {lambda}; it would copy {} from {}.",
                c.name,
                quoted(&a.token),
                positions(&c.sources)
            )
        } else {
            format!(
                "The copy path `{}` (weight {}) did not hold {}; its cache held {}.",
                c.name,
                probability(c.weight),
                quoted(&a.token),
                cache.join(", ")
            )
        });
    }
    lines
}

fn attended(row: &HeadRow) -> String {
    let top: Vec<String> =
        row.attended.iter().map(|a| format!("{} {} {}", a.position, quoted(&a.token), probability(a.weight))).collect();
    top.join(", ")
}

/// The sentences about a covered row: its rules, targets, fidelity and certificate.
fn coverage(c: &Coverage, lambda: f64, epsilon: f64) -> Vec<String> {
    let mut lines = Vec::new();
    for rule in &c.rules {
        let text = rule.text.as_deref().map(statement).map_or(String::new(), |t| format!(" ({t})"));
        let targets: Vec<String> = rule.targets.iter().map(usize::to_string).collect();
        lines.push(if rule.in_force {
            format!(
                "Rule `{}`{text} covers this row; its targets here: {} (attention on them {}).",
                rule.name,
                targets.join(", "),
                probability(rule.fidelity)
            )
        } else {
            format!(
                "Rule `{}`{text} covers it too but gives way to a rule of higher priority; its targets would \
                 be {} (attention on them {}).",
                rule.name,
                targets.join(", "),
                probability(rule.fidelity)
            )
        });
    }
    let targets: Vec<String> = c.targets.iter().map(|t| format!("{} {}", t.position, quoted(&t.token))).collect();
    lines.push(format!(
        "Fidelity {}: that share of the attention is on the targets {}.",
        probability(c.fidelity),
        targets.join(", ")
    ));
    let goal = format!("{:.0} %", 100.0 * (1.0 - epsilon));
    lines.push(match c.lambda_star {
        None if c.fidelity >= 1.0 - epsilon => {
            "Every position it can see is a target: the certificate holds at any λ.".into()
        }
        None => "With a margin of 0 no λ certifies this row.".into(),
        Some(star) if c.certified => format!(
            "λ* = {star:.3} (ε = {epsilon}): from λ* on, at least {goal} of the attention goes to the targets; \
             at λ = {lambda} the certificate holds."
        ),
        Some(star) => format!(
            "λ* = {star:.3} (ε = {epsilon}): at least {goal} of the attention would go to the targets from λ* on; \
             at λ = {lambda} the certificate does not hold."
        ),
    });
    if !c.bounds_hold {
        lines.push("A bound of METHOD §6 fails on this row: that is a bug in ailla, please report it.".into());
    }
    lines
}

/// The explanation as plain text, for a terminal.
pub fn text(e: &Explanation) -> String {
    let mut out = header(e);
    out.push(String::new());
    out.extend(decomposition(&e.actual, e.lambda));
    out.push(String::new());
    out.push(format!(
        "The {} most probable next tokens (over all {} tokens of the vocabulary, p sums to {:.6}):",
        e.top.len(),
        e.vocabulary_size,
        e.probability_sum
    ));
    for (rank, c) in e.top.iter().enumerate() {
        out.push(format!("  {:>2}. {:<20} {}", rank + 1, quoted(&c.token), probability(c.probability)));
    }
    out.push(String::new());
    out.push(format!("Where attention went from position {} (the heaviest positions first):", e.position));
    for row in &e.attention {
        out.push(format!(
            "Layer {}, head {} (λ = {}): {}; entropy {:.2} bits.",
            row.layer,
            row.head,
            row.lambda,
            attended(row),
            row.entropy_bits
        ));
        match &row.coverage {
            Some(c) => out.extend(coverage(c, row.lambda, e.epsilon).into_iter().map(|l| format!("    {l}"))),
            None => out.push("    No rule covers this row.".into()),
        }
    }
    out.join("\n") + "\n"
}

/// Every ASCII punctuation character backslash-escaped, so a token such as `<order>` or `*` is shown
/// as written, never read as Markdown or HTML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_punctuation() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The explanation as Markdown (the body of `--html`).
pub fn markdown(e: &Explanation) -> String {
    let mut out = vec![format!("# Why the model predicted what it did at position {}", e.position), String::new()];
    out.push(format!("Checkpoint: {}", escape(&e.checkpoint)));
    out.push(String::new());
    for line in header(e).into_iter().chain([String::new()]).chain(decomposition(&e.actual, e.lambda)) {
        out.push(escape(&line));
        out.push(String::new());
    }
    out.push("## The most probable next tokens".into());
    out.push(String::new());
    out.push(format!("Over all {} tokens of the vocabulary p sums to {:.6}.", e.vocabulary_size, e.probability_sum));
    out.push(String::new());
    out.push("| rank | token | probability |".into());
    out.push("|---|---|---|".into());
    for (rank, c) in e.top.iter().enumerate() {
        out.push(format!("| {} | {} | {} |", rank + 1, escape(&quoted(&c.token)), probability(c.probability)));
    }
    out.push(String::new());
    out.push("## Where attention went".into());
    out.push(String::new());
    out.push("| layer | head | λ | heaviest positions | entropy (bits) | rule | fidelity | λ* | certified |".into());
    out.push("|---|---|---|---|---|---|---|---|---|".into());
    for row in &e.attention {
        let (rules, fidelity, star, certified) = match &row.coverage {
            Some(c) => (
                c.rules.iter().filter(|r| r.in_force).map(|r| escape(&r.name)).collect::<Vec<_>>().join(", "),
                probability(c.fidelity),
                c.lambda_star.map_or("–".into(), |s| format!("{s:.3}")),
                if c.certified { "yes" } else { "no" }.to_string(),
            ),
            None => ("none".into(), "–".into(), "–".into(), "–".into()),
        };
        out.push(format!(
            "| {} | {} | {} | {} | {:.2} | {rules} | {fidelity} | {star} | {certified} |",
            row.layer,
            row.head,
            row.lambda,
            escape(&attended(row)),
            row.entropy_bits
        ));
    }
    out.push(String::new());
    for row in e.attention.iter().filter(|r| r.coverage.is_some()) {
        if let Some(c) = &row.coverage {
            out.push(format!("**Layer {}, head {}.** ", row.layer, row.head));
            out.push(coverage(c, row.lambda, e.epsilon).iter().map(|l| escape(l)).collect::<Vec<_>>().join(" "));
            out.push(String::new());
        }
    }
    out.join("\n") + "\n"
}
