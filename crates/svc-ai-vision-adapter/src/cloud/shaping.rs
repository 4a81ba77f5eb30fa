//! The original's shaping and aggregation of a Google Vision answer (§8.1 steps 6–7 of the
//! spec): brand from the logo, else a catalog brand in the text read, else (ours) a catalog
//! brand among the web entities; the machine type from web entities and best-guess labels;
//! the model code from the text by the original's two patterns; confidence the best of the
//! scores, confident at ≥ 0.5.

use std::sync::LazyLock;

use contracts::MachineAggregate;
use regex::Regex;

/// `isConfident` threshold of the recogniser (the original's `ResultAggregatorService`).
pub const CONFIDENT: f64 = 0.5;
/// Score a brand gets from a logo at least (the original's `BrandResolver`).
pub const LOGO_BRAND_SCORE: f64 = 0.90;
/// Score of a catalog brand found in the text read.
pub const TEXT_BRAND_SCORE: f64 = 0.80;
/// Highest score of a catalog brand found only among web entities (ours; the original had none).
pub const WEB_BRAND_SCORE: f64 = 0.70;
/// A web entity names the type only at this score or above.
pub const WEB_TYPE_MIN_SCORE: f64 = 0.6;

/// The original's brand catalog (`brands.json`), with the names decals and logos use for them.
/// An alias in upper case must appear in upper case in the text (`CAT`, `CASE` are also words).
pub const BRANDS: &[(&str, &[&str])] = &[
    ("Caterpillar", &["Caterpillar", "CAT"]),
    ("Volvo", &["Volvo"]),
    ("Komatsu", &["Komatsu"]),
    ("Hitachi", &["Hitachi"]),
    ("Doosan", &["Doosan", "Develon"]),
    ("Hyundai", &["Hyundai"]),
    ("JCB", &["JCB"]),
    ("Liebherr", &["Liebherr"]),
    ("CASE", &["CASE", "Case Construction", "Case IH"]),
    ("John Deere", &["John Deere", "Deere"]),
    ("Kubota", &["Kubota"]),
    ("Takeuchi", &["Takeuchi"]),
    ("Bobcat", &["Bobcat"]),
];

/// The canonical machine types, most specific first (so a "backhoe loader" is not a "Loader";
/// the original tested `Loader` before `Backhoe Loader`).
pub const MACHINE_TYPES: &[&str] = &[
    "Backhoe Loader",
    "Wheel Loader",
    "Motor Grader",
    "Dump Truck",
    "Excavator",
    "Bulldozer",
    "Loader",
];

/// One scored description (logo, web entity, label, object).
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub description: String,
    pub score: f64,
}

/// What Vision said about one image, as the shaper needs it.
#[derive(Debug, Clone, Default)]
pub struct VisionFindings {
    pub logos: Vec<Scored>,
    pub web_entities: Vec<Scored>,
    pub best_guess_labels: Vec<String>,
    /// `textAnnotations[0].description` (or `fullTextAnnotation.text`).
    pub ocr: String,
    /// `LABEL_DETECTION`, `OBJECT_LOCALIZATION` when requested.
    pub labels: Vec<Scored>,
    pub objects: Vec<Scored>,
}

/// One image shaped (the original's `ShapedResult`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shaped {
    pub brand: Option<String>,
    pub brand_score: f64,
    pub logo_score: f64,
    pub top_web_score: f64,
    pub best_guess: Option<String>,
    /// Web entities, best first, top `max`.
    pub web_entities: Vec<Scored>,
    /// The shaper's free-text type (best guess without a brand, else the first brandless entity).
    pub type_hint: Option<String>,
    pub ocr: String,
    pub labels: Vec<Scored>,
    pub objects: Vec<Scored>,
    pub confidence: f64,
}

fn clamp(v: f64) -> f64 {
    if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) }
}

fn sorted_top(mut v: Vec<Scored>, max: usize) -> Vec<Scored> {
    v.retain(|s| !s.description.trim().is_empty());
    v.sort_by(|a, b| b.score.total_cmp(&a.score));
    v.truncate(max);
    v
}

fn whole_word(alias: &str) -> Regex {
    let case = if alias.chars().all(|c| !c.is_lowercase()) {
        ""
    } else {
        "(?i)"
    };
    Regex::new(&format!(r"{case}\b{}\b", regex::escape(alias)))
        .expect("an escaped literal is a valid pattern")
}

static BRAND_PATTERNS: LazyLock<Vec<(&'static str, &'static str, Regex)>> = LazyLock::new(|| {
    BRANDS
        .iter()
        .flat_map(|(brand, aliases)| aliases.iter().map(move |a| (*brand, *a, whole_word(a))))
        .collect()
});

/// The catalog brand `text` names as a whole word, the longest match winning.
pub fn catalog_brand_in(text: &str) -> Option<&'static str> {
    BRAND_PATTERNS
        .iter()
        .filter_map(|(brand, _, re)| re.find(text).map(|m| (*brand, m.as_str().len())))
        .max_by_key(|(_, len)| *len)
        .map(|(brand, _)| brand)
}

/// Does `text` mention any catalog brand (case-insensitively, anywhere)?
fn mentions_brand(text: &str) -> bool {
    let lower = text.to_lowercase();
    BRANDS
        .iter()
        .flat_map(|(_, aliases)| aliases.iter())
        .any(|a| a.len() > 3 && lower.contains(&a.to_lowercase()))
        || catalog_brand_in(text).is_some()
}

/// Shape one Vision answer (`max` = maxResults, the original's 5).
pub fn shape(f: VisionFindings, max: usize) -> Shaped {
    let max = max.max(1);
    let logos = sorted_top(f.logos, max);
    let web_entities = sorted_top(f.web_entities, max);
    let best_guess = f
        .best_guess_labels
        .into_iter()
        .map(|l| l.trim().to_owned())
        .find(|l| !l.is_empty());
    let top_web_score = web_entities.first().map_or(0.0, |e| clamp(e.score));
    let logo_score = logos.first().map_or(0.0, |l| clamp(l.score));

    let (brand, brand_score) = if let Some(logo) = logos.first() {
        // The logo's text, named as the catalog names it when it is a catalog brand.
        let brand = catalog_brand_in(&logo.description)
            .map(str::to_owned)
            .unwrap_or_else(|| logo.description.trim().to_owned());
        (Some(brand), logo_score.max(LOGO_BRAND_SCORE))
    } else if let Some(brand) = catalog_brand_in(&f.ocr) {
        (Some(brand.to_owned()), TEXT_BRAND_SCORE)
    } else if let Some((brand, score)) = web_entities
        .iter()
        .filter(|e| clamp(e.score) >= CONFIDENT)
        .find_map(|e| catalog_brand_in(&e.description).map(|b| (b, clamp(e.score))))
    {
        (Some(brand.to_owned()), score.min(WEB_BRAND_SCORE))
    } else {
        (None, 0.0)
    };

    let type_hint = match &best_guess {
        Some(g) if !mentions_brand(g) => Some(g.clone()),
        _ => web_entities
            .iter()
            .find(|e| !mentions_brand(&e.description))
            .map(|e| e.description.clone()),
    };
    let confidence = logo_score.max(top_web_score).max(brand_score);
    Shaped {
        brand,
        brand_score,
        logo_score,
        top_web_score,
        best_guess,
        web_entities,
        type_hint,
        ocr: f.ocr,
        labels: sorted_top(f.labels, max),
        objects: sorted_top(f.objects, max),
        confidence,
    }
}

/// The canonical type `text` contains (case-insensitively), most specific first.
pub fn canonical_type_in(text: &str) -> Option<&'static str> {
    let lower = text.to_lowercase();
    let lower = lower
        .replace("dozer", "bulldozer")
        .replace("bullbulldozer", "bulldozer");
    MACHINE_TYPES
        .iter()
        .find(|t| lower.contains(&t.to_lowercase()))
        .copied()
}

static MODEL_DIGITS_FIRST: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b\d{2,4}[A-Z]{1,2}\b").expect("a constant pattern"));
static MODEL_LETTERS_FIRST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b[A-Z]{1,3}[ \t-]?\d{2,4}(?:-\d{1,2})?[A-Z]{0,2}\b")
        .expect("a constant pattern")
});

/// The model code in the text read, by the original's patterns (`930G`, then `EC220E`),
/// upper-cased.
pub fn model_in(text: &str) -> Option<String> {
    MODEL_DIGITS_FIRST
        .find(text)
        .or_else(|| MODEL_LETTERS_FIRST.find(text))
        .map(|m| m.as_str().to_uppercase())
}

/// Aggregate shaped results (the original's `ResultAggregatorService`).
pub fn aggregate(shaped: &[Shaped]) -> MachineAggregate {
    let Some(best) = shaped
        .iter()
        .max_by(|a, b| a.confidence.total_cmp(&b.confidence))
    else {
        return MachineAggregate::default();
    };
    let brand = shaped
        .iter()
        .filter_map(|s| s.brand.clone())
        .find(|b| !b.trim().is_empty());
    let model = shaped
        .iter()
        .map(|s| s.ocr.as_str())
        .find(|t| !t.trim().is_empty())
        .and_then(model_in);

    // Type: a web entity ≥ 0.6 naming a canonical type, else a best guess naming one, else
    // (ours, only when requested) a label or located object naming one.
    let from_entity = shaped
        .iter()
        .flat_map(|s| s.web_entities.iter())
        .filter(|e| clamp(e.score) >= WEB_TYPE_MIN_SCORE)
        .filter_map(|e| canonical_type_in(&e.description).map(|t| (t, clamp(e.score))))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    let (machine_type, type_confidence, type_source) = if let Some((t, score)) = from_entity {
        (Some(t), Some(score), Some("web_entity"))
    } else if let Some(t) = shaped
        .iter()
        .filter_map(|s| s.best_guess.as_deref())
        .find_map(canonical_type_in)
    {
        (Some(t), None, Some("web_best_guess"))
    } else if let Some((t, score)) = shaped
        .iter()
        .flat_map(|s| s.labels.iter().chain(s.objects.iter()))
        .filter(|e| clamp(e.score) >= WEB_TYPE_MIN_SCORE)
        .filter_map(|e| canonical_type_in(&e.description).map(|t| (t, clamp(e.score))))
        .max_by(|a, b| a.1.total_cmp(&b.1))
    {
        (Some(t), Some(score), Some("label"))
    } else {
        (None, None, None)
    };
    let confidence = clamp(best.confidence);
    MachineAggregate {
        brand,
        machine_type: machine_type.map(str::to_owned),
        model,
        confidence,
        is_confident: confidence >= CONFIDENT,
        type_confidence,
        type_source: type_source.map(str::to_owned),
        ..MachineAggregate::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(d: &str, score: f64) -> Scored {
        Scored {
            description: d.into(),
            score,
        }
    }

    #[test]
    fn a_logo_names_the_brand_with_at_least_090() {
        let shaped = shape(
            VisionFindings {
                logos: vec![s("Caterpillar", 0.62), s("Volvo", 0.3)],
                ..Default::default()
            },
            5,
        );
        assert_eq!(shaped.brand.as_deref(), Some("Caterpillar"));
        assert_eq!(shaped.brand_score, 0.90);
        assert_eq!(shaped.confidence, 0.90);
    }

    #[test]
    fn without_a_logo_the_longest_catalog_brand_in_the_text_wins() {
        let shaped = shape(
            VisionFindings {
                ocr: "JOHN DEERE\n310L backhoe".into(),
                ..Default::default()
            },
            5,
        );
        assert_eq!(shaped.brand.as_deref(), Some("John Deere"));
        assert_eq!(shaped.brand_score, 0.80);
        // "cat" in running text is not Caterpillar; "CAT" on a decal is.
        assert_eq!(catalog_brand_in("the cat sat"), None);
        assert_eq!(catalog_brand_in("CAT 320"), Some("Caterpillar"));
        assert_eq!(catalog_brand_in("Scatter"), None);
    }

    #[test]
    fn model_patterns_are_the_originals() {
        assert_eq!(model_in("CAT\n930G\n").as_deref(), Some("930G"));
        assert_eq!(model_in("VOLVO ec220e").as_deref(), Some("EC220E"));
        assert_eq!(model_in("Komatsu PC210-10").as_deref(), Some("PC210-10"));
        assert_eq!(model_in("no code here"), None);
    }

    #[test]
    fn types_need_score_060_on_entities_and_prefer_the_specific_name() {
        let shaped = shape(
            VisionFindings {
                web_entities: vec![s("Loader", 0.55), s("Backhoe loader", 0.7)],
                ..Default::default()
            },
            5,
        );
        let agg = aggregate(&[shaped]);
        assert_eq!(agg.machine_type.as_deref(), Some("Backhoe Loader"));
        assert_eq!(agg.type_source.as_deref(), Some("web_entity"));
        assert_eq!(agg.type_confidence, Some(0.7));
        assert!(agg.is_confident);

        let shaped = shape(
            VisionFindings {
                web_entities: vec![s("Excavator", 0.4)],
                best_guess_labels: vec!["crawler excavator".into()],
                ..Default::default()
            },
            5,
        );
        let agg = aggregate(&[shaped]);
        assert_eq!(agg.machine_type.as_deref(), Some("Excavator"));
        assert_eq!(agg.type_source.as_deref(), Some("web_best_guess"));
        assert_eq!(agg.type_confidence, None);
        assert!(!agg.is_confident);
    }

    #[test]
    fn nothing_found_is_nothing_claimed() {
        let agg = aggregate(&[shape(VisionFindings::default(), 5)]);
        assert_eq!(agg, MachineAggregate::default());
        assert_eq!(aggregate(&[]), MachineAggregate::default());
    }
}
