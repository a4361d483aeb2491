//! `report.html`: the report with its SVG figures, self-contained.

use super::*;

/// The report's figures, by file name: entropy, fidelity and perplexity against λ, and the training
/// curve, for the first group (the headline runs).
pub fn figures(report: &Report) -> Vec<(&'static str, &'static str, String)> {
    use plots::{line_chart, Series};
    let mut out = Vec::new();
    if let Some(example) = &report.attention_example {
        for (file, lambda, weights) in [
            ("report-attention-0.svg", 0.0, &example.weights_lambda_0),
            ("report-attention-1.svg", 1.0, &example.weights_lambda_1),
        ] {
            let caption = format!("{}: layer {} head {}, λ = {lambda}", example.member, example.layer, example.head);
            if let Some(svg) = plots::heatmap(&caption, weights, &example.targets) {
                out.push((file, "4", svg));
            }
        }
    }
    if let Some(comparison) = &report.published {
        let names: Vec<String> = (1..=comparison.curves.len()).map(|i| format!("C{i}")).collect();
        let mut series: Vec<Series> = comparison
            .curves
            .iter()
            .zip(&names)
            .map(|(c, name)| Series {
                name,
                points: c.points.iter().map(|p| (p.lambda, p.row.entropy_bits.mean)).collect(),
            })
            .collect();
        let published: Vec<(f64, f64)> = comparison
            .figures
            .iter()
            .filter(|f| f.metric == crate::pipeline::PublishedMetric::EntropyBits)
            .map(|f| (f.lambda, f.published))
            .collect();
        if !published.is_empty() {
            series.push(Series { name: "published", points: published });
        }
        if let Some(svg) =
            line_chart("Attention entropy: ours and published", "locality dial λ", "entropy (bits per row)", &series)
        {
            out.push(("report-published.svg", "8", svg));
        }
    }
    let Some(group) = report.groups.first() else { return out };
    let along = |f: &dyn Fn(&DialRow) -> f64| group.dial.iter().map(|r| (r.lambda, f(r))).collect::<Vec<_>>();
    let mut add = |file: &'static str, section: &'static str, svg: Option<String>| {
        if let Some(svg) = svg {
            out.push((file, section, svg));
        }
    };
    add(
        "report-entropy.svg",
        "3",
        line_chart(
            "Attention entropy across the dial",
            "locality dial λ",
            "entropy (bits per row)",
            &[
                Series { name: "all rows", points: along(&|r| r.entropy_bits.mean) },
                Series { name: "covered rows", points: along(&|r| r.covered_entropy_bits.mean) },
            ],
        ),
    );
    add(
        "report-fidelity.svg",
        "3",
        line_chart(
            "Pointer fidelity across the dial",
            "locality dial λ",
            "mass on rule targets (share)",
            &[Series { name: "pointer fidelity", points: along(&|r| r.pointer_fidelity.mean) }],
        ),
    );
    add(
        "report-perplexity.svg",
        "3",
        line_chart(
            "Test perplexity across the dial",
            "locality dial λ",
            "perplexity (per token)",
            &[Series { name: "perplexity", points: along(&|r| r.perplexity.mean) }],
        ),
    );
    add(
        "report-training.svg",
        "7",
        line_chart(
            "Training loss",
            "training step",
            "cross-entropy (nats per token)",
            &[Series {
                name: "mean over seeds",
                points: group.training_curve.iter().map(|&(s, l)| (s as f64, l)).collect(),
            }],
        ),
    );
    out
}

pub(super) const STYLE: &str =
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}\
table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em}\
td{text-align:right}td:first-child{text-align:left}th{background:#f3f3f3}code{font-size:.85em}\
figure{display:inline-block;margin:.5em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em}";

/// One self-contained HTML file: the Markdown report as HTML, inline CSS, and the figures inline as
/// SVG under the sections they belong to. Nothing is fetched from anywhere.
pub fn html(report: &Report) -> String {
    let markdown = markdown(report);
    let mut body = String::new();
    let parser = pulldown_cmark::Parser::new_ext(&markdown, pulldown_cmark::Options::ENABLE_TABLES);
    pulldown_cmark::html::push_html(&mut body, parser);
    for (_, section, svg) in figures(report).iter().rev() {
        let marker = format!("<h2>{section}.");
        if let Some(start) = body.find(&marker) {
            if let Some(end) = body[start..].find("</h2>") {
                let at = start + end + "</h2>".len();
                body.insert_str(at, &format!("\n<figure>{svg}</figure>\n"));
            }
        }
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>ailla report: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        report.name
    )
}

/// A self-contained page in the report's style: `markdown` rendered as HTML (raw HTML in it is
/// passed through, so callers escape what they did not write), titled `title`.
pub fn markdown_page(title: &str, markdown: &str) -> String {
    let mut body = String::new();
    let parser = pulldown_cmark::Parser::new_ext(markdown, pulldown_cmark::Options::ENABLE_TABLES);
    pulldown_cmark::html::push_html(&mut body, parser);
    let title = title.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )
}
