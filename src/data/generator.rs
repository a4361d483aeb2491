//! The bundled corpus: a generated language of hospital pharmacy records.
//!
//! It is small, deterministic and written here, and it is built so that rules have something true to say.
//! Every dependency a `.rules` file can name has a ground truth:
//!
//! * **unit → drug**: the unit of a dose (`mg`, `units`, `ml`, `puffs`, `litres`) is fixed by the drug
//!   named earlier in the record, several tokens back, with a varying number of words between;
//! * **unit → lab test**: a result's unit (`mmol/l`, `g/dl`, `umol/l`) is fixed by the test named on the
//!   line before;
//! * **closing tag → opening tag**: `</order>`, `</lab>` and `</transfer>` close the record their opener
//!   began, lines earlier; `(` … `)` notes nest inside a line;
//! * **repeated names**: a patient's name recurs in the sign-off of the record, and a ward in a transfer's
//!   acceptance, so copying the earlier occurrence predicts them.
//!
//! Without attention to the right earlier token these positions are guesses among several options;
//! with it they are certain. That gap is what the locality dial is meant to expose.

use crate::rng::Rng;

use super::corpus::Splits;

struct Drug {
    name: &'static str,
    unit: &'static str,
    route: &'static str,
    doses: &'static [&'static str],
}

#[rustfmt::skip]
const DRUGS: &[Drug] = &[
    Drug {
        name: "metformin",
        unit: "mg",
        route: "oral",
        doses: &["250", "500", "850", "1000"],
    },
    Drug {
        name: "amoxicillin",
        unit: "mg",
        route: "oral",
        doses: &["250", "500"],
    },
    Drug {
        name: "warfarin",
        unit: "mg",
        route: "oral",
        doses: &["1", "2", "3", "5"],
    },
    Drug {
        name: "morphine",
        unit: "mg",
        route: "intravenous",
        doses: &["2", "4", "5"],
    },
    Drug {
        name: "insulin",
        unit: "units",
        route: "subcutaneous",
        doses: &["4", "6", "8", "10", "12"],
    },
    Drug {
        name: "heparin",
        unit: "units",
        route: "intravenous",
        doses: &["2500", "5000"],
    },
    Drug {
        name: "saline",
        unit: "ml",
        route: "intravenous",
        doses: &["250", "500", "1000"],
    },
    Drug {
        name: "lactulose",
        unit: "ml",
        route: "oral",
        doses: &["10", "15", "20"],
    },
    Drug {
        name: "salbutamol",
        unit: "puffs",
        route: "inhaled",
        doses: &["1", "2"],
    },
    Drug {
        name: "oxygen",
        unit: "litres",
        route: "inhaled",
        doses: &["2", "4"],
    },
];

struct LabTest {
    name: &'static str,
    unit: &'static str,
    results: &'static [&'static str],
}

#[rustfmt::skip]
const LAB_TESTS: &[LabTest] = &[
    LabTest {
        name: "potassium",
        unit: "mmol/l",
        results: &["3.1", "3.8", "4.2", "5.6"],
    },
    LabTest {
        name: "sodium",
        unit: "mmol/l",
        results: &["129", "136", "141", "148"],
    },
    LabTest {
        name: "glucose",
        unit: "mmol/l",
        results: &["3.9", "5.5", "7.8", "11.2"],
    },
    LabTest {
        name: "hemoglobin",
        unit: "g/dl",
        results: &["8.9", "11.5", "13.2", "15.0"],
    },
    LabTest {
        name: "creatinine",
        unit: "umol/l",
        results: &["54", "88", "132", "210"],
    },
];

const FIRST_NAMES: &[&str] =
    &["maria", "john", "aisha", "wei", "olga", "pedro", "fatima", "james", "yuki", "kwame", "ingrid", "omar"];
const SURNAMES: &[&str] =
    &["lopez", "smith", "khan", "chen", "petrova", "silva", "haddad", "brown", "tanaka", "mensah", "berg", "farouk"];
const WARDS: &[&str] = &["cardiology", "renal", "oncology", "surgical", "maternity", "respiratory", "geriatric"];
const CLINICIANS: &[&str] = &["dr", "nurse", "pharmacist"];
const FREQUENCIES: &[&str] = &["6", "8", "12", "24"];
const NOTES: &[&[&str]] = &[
    &["patient", "prefers", "morning", "doses"],
    &["allergy", "to", "penicillin", "recorded"],
    &["review", "after", "three", "days"],
    &["renal", "function", "stable"],
    &["monitor", "for", "drowsiness"],
];
const REASONS: &[&str] = &["bed", "capacity", "specialist", "care", "step", "down", "infection", "control"];

/// Records per split of the bundled corpus: about 190,000 words of training text.
pub const TRAIN_RECORDS: usize = 6000;
pub const HELD_OUT_RECORDS: usize = 600;
pub const DEFAULT_SEED: u64 = 2024;

/// The three splits of the bundled corpus. Each split has its own random stream, so the test split is
/// the same whatever the size of the training split.
pub fn bundled_corpus(seed: u64) -> Splits {
    Splits {
        train: generate(seed, 0, TRAIN_RECORDS),
        valid: generate(seed, 1, HELD_OUT_RECORDS),
        test: generate(seed, 2, HELD_OUT_RECORDS),
        files: Vec::new(),
        name: format!("bundled pharmacy corpus (generator seed {seed})"),
    }
}

/// `records` records of split number `split`.
pub fn generate(seed: u64, split: u64, records: usize) -> String {
    generate_records(seed, split, records, false)
}

/// The allergens of the planted block: no `.rules` file names them, and an allergy record lists some
/// of them twice, in two orders, so attending to the earlier members of the block predicts the later
/// ones. Recruitment tests check that it is found.
pub const PLANTED_ALLERGENS: &[&str] = &[
    "penicillin",
    "latex",
    "peanuts",
    "shellfish",
    "codeine",
    "aspirin",
    "sulfa",
    "iodine",
    "eggs",
    "pollen",
    "nickel",
    "soy",
    "wheat",
    "sesame",
    "ibuprofen",
    "chlorhexidine",
];

/// The bundled corpus with a planted block: a third of the records are allergy records
/// ([`PLANTED_ALLERGENS`]).
pub fn planted_corpus(seed: u64) -> Splits {
    Splits {
        train: generate_records(seed, 0, TRAIN_RECORDS, true),
        valid: generate_records(seed, 1, HELD_OUT_RECORDS, true),
        test: generate_records(seed, 2, HELD_OUT_RECORDS, true),
        files: Vec::new(),
        name: format!("pharmacy corpus with planted allergens (generator seed {seed})"),
    }
}

fn generate_records(seed: u64, split: u64, records: usize, planted: bool) -> String {
    let mut rng = Rng::derive(seed, 0x0DA7A, split);
    let mut planted_rng = Rng::derive(seed, 0x0A11E, split);
    let mut out = String::with_capacity(records * 200);
    for record in 0..records {
        let id = 100 + (rng.below(900) as u64 + record as u64 * 7) % 900;
        if planted && planted_rng.below(3) == 0 {
            allergy(&mut planted_rng, id, &mut out);
            continue;
        }
        match rng.below(10) {
            0..=5 => order(&mut rng, id, &mut out),
            6..=8 => lab(&mut rng, id, &mut out),
            _ => transfer(&mut rng, id, &mut out),
        }
    }
    out
}

fn allergy(rng: &mut Rng, id: u64, out: &mut String) {
    let (first, last) = (*rng.choose(FIRST_NAMES), *rng.choose(SURNAMES));
    let mut listed: Vec<&str> = Vec::new();
    while listed.len() < 4 {
        let allergen = *rng.choose(PLANTED_ALLERGENS);
        if !listed.contains(&allergen) {
            listed.push(allergen);
        }
    }
    let mut confirmed = listed.clone();
    for i in (1..confirmed.len()).rev() {
        confirmed.swap(i, rng.below(i + 1));
    }
    let id = id.to_string();
    line(out, &["<allergy>", "id", &id]);
    let mut words = vec!["patient", first, last, "allergic", "to"];
    words.extend_from_slice(&listed);
    line(out, &words);
    let mut words = vec!["confirmed"];
    words.extend_from_slice(&confirmed);
    line(out, &words);
    line(out, &["</allergy>"]);
}

fn line(out: &mut String, words: &[&str]) {
    out.push_str(&words.join(" "));
    out.push('\n');
}

fn order(rng: &mut Rng, id: u64, out: &mut String) {
    let (first, last) = (*rng.choose(FIRST_NAMES), *rng.choose(SURNAMES));
    let ward = *rng.choose(WARDS);
    let drug = rng.choose(DRUGS);
    let dose = *rng.choose(drug.doses);
    let every = *rng.choose(FREQUENCIES);
    let id = id.to_string();
    line(out, &["<order>", "id", &id]);
    line(out, &["patient", first, last, "ward", ward]);
    // the words between the drug and its unit vary, so the unit is predictable only by looking back
    match rng.below(3) {
        0 => line(out, &["give", drug.name, dose, drug.unit, drug.route, "every", every, "hours"]),
        1 => line(out, &["give", drug.name, drug.route, "every", every, "hours", "dose", dose, drug.unit]),
        _ => {
            line(out, &["give", drug.name, "every", every, "hours", "by", drug.route, "route", "dose", dose, drug.unit])
        }
    }
    if rng.below(2) == 0 {
        let note = *rng.choose(NOTES);
        let mut words = vec!["note", "("];
        words.extend_from_slice(note);
        words.push(")");
        line(out, &words);
    }
    if rng.below(3) == 0 {
        let max = *rng.choose(drug.doses);
        line(out, &["maximum", "single", "dose", max, drug.unit]);
    }
    line(out, &["signed", *rng.choose(CLINICIANS), "for", first, last]);
    line(out, &["</order>"]);
}

fn lab(rng: &mut Rng, id: u64, out: &mut String) {
    let (first, last) = (*rng.choose(FIRST_NAMES), *rng.choose(SURNAMES));
    let test = rng.choose(LAB_TESTS);
    let result = *rng.choose(test.results);
    let id = id.to_string();
    line(out, &["<lab>", "id", &id]);
    line(out, &["patient", first, last, "sample", "blood"]);
    line(out, &["test", test.name]);
    line(out, &["result", result, test.unit]);
    if rng.below(2) == 0 {
        line(out, &["flag", "(", if rng.below(2) == 0 { "normal" } else { "abnormal" }, ")"]);
    }
    line(out, &["reported", "for", first, last]);
    line(out, &["</lab>"]);
}

fn transfer(rng: &mut Rng, id: u64, out: &mut String) {
    let (first, last) = (*rng.choose(FIRST_NAMES), *rng.choose(SURNAMES));
    let from = *rng.choose(WARDS);
    let mut to = *rng.choose(WARDS);
    while to == from {
        to = *rng.choose(WARDS);
    }
    let id = id.to_string();
    let start = rng.below(REASONS.len() / 2) * 2;
    line(out, &["<transfer>", "id", &id]);
    line(out, &["patient", first, last, "from", from, "to", to]);
    line(out, &["reason", REASONS[start], REASONS[start + 1]]);
    line(out, &["accepted", "by", to, "for", first, last]);
    line(out, &["</transfer>"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_splits_differ() {
        assert_eq!(generate(7, 0, 50), generate(7, 0, 50));
        assert_ne!(generate(7, 0, 50), generate(7, 1, 50));
        assert_ne!(generate(7, 0, 50), generate(8, 0, 50));
    }

    #[test]
    fn every_unit_agrees_with_the_drug_or_test_named_before_it() {
        let text = generate(3, 0, 400);
        let words: Vec<&str> = text.split_whitespace().collect();
        let mut current_drug: Option<&Drug> = None;
        let mut current_test: Option<&LabTest> = None;
        let mut checked = 0;
        for w in &words {
            if let Some(d) = DRUGS.iter().find(|d| d.name == *w) {
                current_drug = Some(d);
            }
            if let Some(t) = LAB_TESTS.iter().find(|t| t.name == *w) {
                current_test = Some(t);
            }
            if ["mg", "units", "ml", "puffs", "litres"].contains(w) {
                assert_eq!(current_drug.map(|d| d.unit), Some(*w));
                checked += 1;
            }
            if ["mmol/l", "g/dl", "umol/l"].contains(w) {
                assert_eq!(current_test.map(|t| t.unit), Some(*w));
                checked += 1;
            }
        }
        assert!(checked > 400, "only {checked} units checked");
    }

    #[test]
    fn tags_and_brackets_balance() {
        let text = generate(5, 2, 300);
        let mut open: Vec<&str> = Vec::new();
        for w in text.split_whitespace() {
            match w {
                "<order>" | "<lab>" | "<transfer>" | "(" => open.push(w),
                "</order>" | "</lab>" | "</transfer>" | ")" => {
                    let opener = open.pop().expect("closer without opener");
                    let expected = match w {
                        ")" => "(",
                        closer => &closer.replacen("</", "<", 1),
                    };
                    assert_eq!(opener, expected);
                }
                _ => {}
            }
        }
        assert!(open.is_empty());
    }

    #[test]
    fn the_committed_sample_is_what_the_generator_writes() {
        let sample_path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/pharmacy-sample.txt");
        let sample = std::fs::read_to_string(sample_path).expect("data/pharmacy-sample.txt is committed");
        let generated = generate(DEFAULT_SEED, 0, TRAIN_RECORDS);
        assert!(generated.starts_with(&sample), "regenerate it with `ailla generate --sample`");
    }
}
