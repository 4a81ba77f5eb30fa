//! From text lines to a [`MachineAggregate`]: brand by catalog words, model by the brand's code
//! patterns (with O/0 and I/1 repair), type from text or the catalog, year and weight only when
//! printed. Never invents: what is not read stays `None`.

use std::sync::OnceLock;

use contracts::MachineAggregate;
use regex::Regex;

use crate::catalog::{Catalog, ModelInfo};
use crate::ocr::Line;

/// Threshold of `isConfident` (the original's 0.5).
pub const CONFIDENT: f64 = 0.5;

/// Evidence behind an aggregate (for tests and logs).
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    pub brand_score: f64,
    pub model_score: f64,
    pub model_info: Option<ModelInfo>,
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .map(str::to_uppercase)
        .filter(|w| !w.is_empty())
        .collect()
}

/// Best brand: (name, score). Exact whole-word alias = line score; one edit away (aliases of 5+
/// letters, where OCR confused a letter) = 0.85 × line score.
pub fn find_brand(catalog: &Catalog, lines: &[Line]) -> Option<(String, f64)> {
    let mut best: Option<(String, f64)> = None;
    for line in lines {
        let ws = words(&line.text);
        let joined: String = ws.concat();
        for brand in &catalog.brands {
            for alias in &brand.aliases {
                let parts: Vec<&str> = alias.split_whitespace().collect();
                let n = parts.len();
                let mut factor: f64 = 0.0;
                for win in ws.windows(n) {
                    let cand = win.join(" ");
                    if cand == *alias {
                        factor = 1.0;
                    } else if alias.len() >= 5 && levenshtein(&cand, alias) <= 1 {
                        factor = factor.max(0.85);
                    }
                }
                // Words run together (`JOHNDEERE`) or a plate line `KOMATSULTD`.
                if factor == 0.0
                    && alias.len() >= 5
                    && ws.len() == 1
                    && joined.starts_with(&alias.replace(' ', ""))
                {
                    factor = 0.8;
                }
                let score = factor * f64::from(line.score);
                if score > 0.0 && best.as_ref().is_none_or(|(_, s)| score > *s) {
                    best = Some((brand.name.clone(), score));
                }
            }
        }
    }
    best
}

/// Code candidates of a line: each word, and each pair of adjacent words joined (`R 920`,
/// `210G LC`, `LTM 1100-5.2`).
fn code_candidates(text: &str) -> Vec<String> {
    let ws: Vec<String> = text
        .split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_uppercase()
        })
        .filter(|w| !w.is_empty())
        .collect();
    let mut out: Vec<String> = Vec::new();
    for (i, w) in ws.iter().enumerate() {
        out.push(w.clone());
        if let Some(next) = ws.get(i + 1) {
            out.push(format!("{w}{next}"));
        }
        // `MODEL:PC210` read without the space (or as `M0DEL`).
        for prefix in ["MODEL", "M0DEL", "TYPE"] {
            if let Some(rest) = w.strip_prefix(prefix).filter(|r| r.len() >= 2) {
                out.push(
                    rest.trim_start_matches(|c: char| !c.is_alphanumeric())
                        .to_string(),
                );
            }
        }
    }
    out
}

/// Variants of a code with O↔0 and I↔1 swapped, fewest swaps first (at most 6 ambiguous places).
fn repairs(code: &str) -> Vec<(String, usize)> {
    let chars: Vec<char> = code.chars().collect();
    let amb: Vec<usize> = chars
        .iter()
        .enumerate()
        .filter(|(_, c)| matches!(c, 'O' | '0' | 'I' | '1' | 'Q'))
        .map(|(i, _)| i)
        .take(6)
        .collect();
    let mut out = Vec::with_capacity(1 << amb.len());
    for mask in 0u32..(1 << amb.len()) {
        let mut v = chars.clone();
        for (bit, &i) in amb.iter().enumerate() {
            if mask & (1 << bit) != 0 {
                v[i] = match v[i] {
                    'O' | 'Q' => '0',
                    '0' => 'O',
                    'I' => '1',
                    '1' => 'I',
                    c => c,
                };
            }
        }
        out.push((v.into_iter().collect(), mask.count_ones() as usize));
    }
    out.sort_by_key(|(_, n)| *n);
    out
}

/// The brand's model code in the lines: (catalog info, score). Longer matches win over shorter
/// ones of the same line (`PC210LC-11` over `PC210`), fewer repairs over more.
pub fn find_model(catalog: &Catalog, brand: &str, lines: &[Line]) -> Option<(ModelInfo, f64)> {
    let mut best: Option<(ModelInfo, f64, usize)> = None;
    for line in lines {
        for cand in code_candidates(&line.text) {
            if cand.len() < 2 || cand.len() > 16 {
                continue;
            }
            let Some((info, swaps)) = repairs(&cand)
                .into_iter()
                .find_map(|(v, n)| catalog.lookup(brand, &v).map(|i| (i, n)))
            else {
                continue;
            };
            let score = f64::from(line.score) * if swaps == 0 { 1.0 } else { 0.9 };
            let len = info.model.len();
            let better = match &best {
                None => true,
                Some((_, s, l)) => {
                    (len > *l && score >= s * 0.8) || (len == *l && score > *s) || score > s * 1.25
                }
            };
            if better {
                best = Some((info, score, len));
            }
        }
    }
    best.map(|(i, s, _)| (i, s))
}

/// The original's generic model regexes (used when no brand was read): `930G`, `EC220E`.
fn generic_model(lines: &[Line]) -> Option<(String, f64)> {
    static RES: OnceLock<[Regex; 2]> = OnceLock::new();
    let res = RES.get_or_init(|| {
        [
            Regex::new(r"(?i)\b\d{2,4}[A-Z]{1,2}\b").expect("static regex"),
            Regex::new(r"(?i)\b[A-Z]{1,3}[ \t-]?\d{2,4}(?:-\d{1,2})?[A-Z]{0,2}\b")
                .expect("static regex"),
        ]
    });
    res.iter().find_map(|re| {
        lines.iter().find_map(|l| {
            re.find(&l.text)
                .map(|m| (m.as_str().to_uppercase(), f64::from(l.score)))
        })
    })
}

/// A machine type named in the text: (type, score).
pub fn find_type_word(catalog: &Catalog, lines: &[Line]) -> Option<(String, f64)> {
    for t in &catalog.types {
        for w in &t.words {
            let re = format!(r"(?i)\b{}\b", regex::escape(w));
            let Ok(re) = Regex::new(&re) else { continue };
            if let Some(l) = lines.iter().find(|l| re.is_match(&l.text)) {
                return Some((t.name.clone(), f64::from(l.score)));
            }
        }
    }
    None
}

/// A year printed on a plate (`YEAR 2019`, `YOM: 2019`, `MFG 2019`).
fn printed_year(lines: &[Line]) -> Option<String> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"(?i)\b(?:YEAR|YOM|MFG|MANUFACTURED|BUILT)\b\D{0,16}\b((?:19|20)\d{2})\b")
            .expect("static regex")
    });
    let text: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    re.captures(&text.join("\n")).map(|c| c[1].to_string())
}

/// An operating weight printed on a plate (`OPERATING WEIGHT 21500 KG`), in kg.
fn printed_weight(lines: &[Line]) -> Option<f64> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"(?i)\b(?:OPERATING\s*WEIGHT|WEIGHT|MASS)\b\D{0,16}?(\d{1,3}(?:[ ,.]\d{3})+|\d{3,6})\s*KG\b").expect("static regex"));
    lines.iter().find_map(|l| {
        re.captures(&l.text)
            .and_then(|c| c[1].replace([' ', ',', '.'], "").parse::<f64>().ok())
    })
}

/// Build the aggregate from lines (and optionally a classifier's opinion on the type).
pub fn aggregate(
    catalog: &Catalog,
    lines: &[Line],
    classified: Option<(String, f32)>,
) -> (MachineAggregate, Evidence) {
    let mut agg = MachineAggregate::default();
    let mut ev = Evidence::default();
    let brand = find_brand(catalog, lines);
    if let Some((name, score)) = &brand {
        agg.brand = Some(name.clone());
        ev.brand_score = *score;
        if let Some((info, mscore)) = find_model(catalog, name, lines) {
            agg.model = Some(info.model.clone());
            ev.model_score = mscore;
            ev.model_info = Some(info);
        }
    } else if let Some((model, score)) = generic_model(lines) {
        agg.model = Some(model);
        ev.model_score = score * 0.5;
    }

    // Type: named in the text, else the catalog's type of the code, else the classifier.
    let from_text = find_type_word(catalog, lines);
    let from_catalog = ev.model_info.as_ref().map(|i| {
        (
            i.machine_type.clone(),
            ev.model_score.min(ev.brand_score) * 0.95,
        )
    });
    let typed = match (from_text, from_catalog) {
        (Some(t), Some(c)) if t.0 == c.0 => Some((t.0, t.1.max(c.1), "text")),
        (Some(t), Some(c)) => Some(if t.1 >= c.1 {
            (t.0, t.1 * 0.6, "text")
        } else {
            (c.0, c.1 * 0.6, "catalog")
        }),
        (Some(t), None) => Some((t.0, t.1, "text")),
        (None, Some(c)) => Some((c.0, c.1, "catalog")),
        (None, None) => classified.map(|(label, p)| (label, f64::from(p), "classifier")),
    };
    if let Some((t, conf, source)) = typed {
        agg.machine_type = Some(t);
        agg.type_confidence = Some(round3(conf));
        agg.type_source = Some(source.into());
    }
    agg.year = printed_year(lines);
    agg.weight = printed_weight(lines);

    agg.confidence = round3(if brand.is_some() {
        ev.brand_score.max(ev.model_score.min(ev.brand_score))
    } else {
        ev.model_score.min(0.45)
    });
    agg.is_confident = agg.confidence >= CONFIDENT;
    let name = agg.display_name();
    agg.name = (!name.is_empty()).then_some(name);
    (agg, ev)
}

/// The offline analogue of the Gemini enrichment: fill weight class, years and attachments from
/// the catalog where the catalog knows them and nothing was read. Returns whether anything changed.
pub fn enrich(catalog: &Catalog, agg: &mut MachineAggregate) -> bool {
    let mut changed = false;
    let info = match (&agg.brand, &agg.model) {
        (Some(b), Some(m)) => catalog.lookup(b, m),
        _ => None,
    };
    if let Some(info) = &info {
        if agg.machine_type.is_none() {
            agg.machine_type = Some(info.machine_type.clone());
            agg.type_source = Some("catalog".into());
            agg.type_confidence = Some(round3(agg.confidence * 0.95));
            changed = true;
        }
        if agg.weight.is_none()
            && info.weight_class_kg.is_some()
            && agg.machine_type.as_deref() == Some(info.machine_type.as_str())
        {
            agg.weight = info.weight_class_kg;
            changed = true;
        }
        if agg.year.is_none() && info.years.is_some() {
            agg.year = info.years.clone();
            changed = true;
        }
    }
    if agg.attachment.is_none()
        && let Some(t) = agg
            .machine_type
            .as_deref()
            .and_then(|t| catalog.machine_type(t))
        && !t.attachments.is_empty()
    {
        agg.attachment = Some(t.attachments.clone());
        changed = true;
    }
    let name = agg.display_name();
    agg.name = (!name.is_empty()).then_some(name);
    changed
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(t: &str) -> Line {
        Line {
            text: t.into(),
            score: 0.95,
            corners: [[0.0; 2]; 4],
        }
    }

    #[test]
    fn decal_with_repaired_code() {
        let c = Catalog::get();
        let (agg, _) = aggregate(c, &[line("KOMATSU"), line("PC21OLC-11")], None);
        assert_eq!(agg.brand.as_deref(), Some("Komatsu"));
        assert_eq!(agg.model.as_deref(), Some("PC210LC-11"));
        assert_eq!(agg.machine_type.as_deref(), Some("Excavator"));
        assert_eq!(agg.type_source.as_deref(), Some("catalog"));
        assert!(agg.is_confident);
        assert_eq!(agg.weight, None, "nothing printed, nothing enriched yet");
    }

    #[test]
    fn plate_values_are_read_not_invented() {
        let c = Catalog::get();
        let lines = [
            line("CATERPILLAR INC."),
            line("MODEL 950M"),
            line("YEAR 2019"),
            line("OPERATING WEIGHT 18,900 KG"),
        ];
        let (agg, _) = aggregate(c, &lines, None);
        assert_eq!(agg.brand.as_deref(), Some("Caterpillar"));
        assert_eq!(agg.model.as_deref(), Some("950M"));
        assert_eq!(agg.machine_type.as_deref(), Some("Wheel Loader"));
        assert_eq!(agg.year.as_deref(), Some("2019"));
        assert_eq!(agg.weight, Some(18900.0));
        assert_eq!(agg.name.as_deref(), Some("Caterpillar, Wheel Loader, 950M"));
    }

    #[test]
    fn nothing_read_means_nothing_known() {
        let (agg, _) = aggregate(Catalog::get(), &[line("DANGER"), line("KEEP CLEAR")], None);
        assert_eq!(
            agg,
            MachineAggregate {
                confidence: 0.0,
                ..Default::default()
            }
        );
    }

    #[test]
    fn fuzzy_brand_and_two_word_codes() {
        let c = Catalog::get();
        let (agg, _) = aggregate(c, &[line("LIEBHEBR"), line("R 926")], None);
        assert_eq!(agg.brand.as_deref(), Some("Liebherr"));
        assert_eq!(agg.model.as_deref(), Some("R926"));
        let (agg, _) = aggregate(c, &[line("JOHN DEERE"), line("210G LC")], None);
        assert_eq!(agg.model.as_deref(), Some("210GLC"));
        assert_eq!(agg.machine_type.as_deref(), Some("Excavator"));
    }

    #[test]
    fn enrichment_fills_only_what_the_catalog_knows() {
        let c = Catalog::get();
        let (mut agg, _) = aggregate(c, &[line("VOLVO"), line("EC220E")], None);
        assert!(enrich(c, &mut agg));
        assert_eq!(agg.weight, Some(22000.0));
        assert_eq!(agg.year, None);
        assert_eq!(
            agg.attachment.as_deref(),
            Some(&["Bucket".to_string(), "Hydraulic breaker".to_string()][..])
        );
        let (mut agg, _) = aggregate(c, &[line("VOLVO"), line("L120H")], None);
        enrich(c, &mut agg);
        assert_eq!(agg.weight, None, "no weight rule for wheel loaders");
    }

    #[test]
    fn catalog_examples_match_their_own_rows() {
        let c = Catalog::get();
        assert_eq!(c.brands.len(), 13);
        for m in &c.models {
            for ex in &m.examples {
                let info = c
                    .lookup(&m.brand, ex)
                    .unwrap_or_else(|| panic!("{} {ex} unmatched", m.brand));
                assert_eq!(
                    info.machine_type, m.machine_type,
                    "{} {ex} matched an earlier row",
                    m.brand
                );
            }
        }
    }
}
