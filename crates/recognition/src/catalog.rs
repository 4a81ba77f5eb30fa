//! The machine catalog (`data/*.csv`, compiled in): brands, machine types, model-code patterns.

use std::sync::OnceLock;

use regex::Regex;

/// A brand and the words printed on its machines.
#[derive(Debug, Clone)]
pub struct Brand {
    pub name: String,
    /// Upper-case, as printed (`CAT`, `JOHN DEERE`).
    pub aliases: Vec<String>,
    pub source: String,
}

/// A machine type, the words naming it and type-level attachments.
#[derive(Debug, Clone)]
pub struct MachineType {
    pub name: String,
    pub words: Vec<String>,
    pub attachments: Vec<String>,
    pub source: String,
}

/// How a model code gives the operating-weight class.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightRule {
    /// `n` tonnes.
    Tonnes,
    /// `n / 10` tonnes.
    TenthTonnes,
    /// `n - 900` tonnes (Liebherr R 9xx).
    Minus900,
}

#[derive(Debug, Clone)]
pub struct ModelPattern {
    pub brand: String,
    pub regex: Regex,
    pub machine_type: String,
    pub weight_rule: Option<WeightRule>,
    pub years: Option<String>,
    /// Example codes (used by the test set).
    pub examples: Vec<String>,
    pub source: String,
}

/// What the catalog knows about one model code.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub brand: String,
    pub model: String,
    pub machine_type: String,
    /// Operating-weight class in kg (approximate), when the code's convention gives one.
    pub weight_class_kg: Option<f64>,
    pub years: Option<String>,
    pub source: String,
}

#[derive(Debug)]
pub struct Catalog {
    pub brands: Vec<Brand>,
    pub types: Vec<MachineType>,
    pub models: Vec<ModelPattern>,
}

const BRANDS: &str = include_str!("../data/brands.csv");
const TYPES: &str = include_str!("../data/types.csv");
const MODELS: &str = include_str!("../data/models.csv");

fn rows(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split('|').map(str::trim).collect())
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(String::from)
        .collect()
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl Catalog {
    /// The compiled-in catalog.
    pub fn get() -> &'static Catalog {
        static CATALOG: OnceLock<Catalog> = OnceLock::new();
        CATALOG.get_or_init(|| {
            Catalog::parse(BRANDS, TYPES, MODELS)
                .expect("the compiled-in catalog is valid (tested)")
        })
    }

    pub fn parse(brands: &str, types: &str, models: &str) -> Result<Catalog, crate::Error> {
        let bad = |what: &str, row: &[&str]| {
            crate::Error::Catalog(format!("bad {what} row: {}", row.join("|")))
        };
        let mut out = Catalog {
            brands: vec![],
            types: vec![],
            models: vec![],
        };
        for r in rows(brands) {
            if r.len() != 3 {
                return Err(bad("brand", &r));
            }
            out.brands.push(Brand {
                name: r[0].into(),
                aliases: list(r[1]).into_iter().map(|a| a.to_uppercase()).collect(),
                source: r[2].into(),
            });
        }
        for r in rows(types) {
            if r.len() != 4 {
                return Err(bad("type", &r));
            }
            out.types.push(MachineType {
                name: r[0].into(),
                words: list(r[1]),
                attachments: list(r[2]),
                source: r[3].into(),
            });
        }
        for mut r in rows(models) {
            // The pattern may itself contain `|`: brand first, the five other fields last.
            if r.len() > 7 {
                let tail = r.split_off(r.len() - 5);
                let pattern = r[1..].join("|");
                let brand = r[0];
                r = vec![brand];
                r.push(Box::leak(pattern.into_boxed_str()));
                r.extend(tail);
            }
            if r.len() != 7 {
                return Err(bad("model", &r));
            }
            if !out.brands.iter().any(|b| b.name == r[0])
                || !out.types.iter().any(|t| t.name == r[2])
            {
                return Err(bad("model (unknown brand or type)", &r));
            }
            let regex = Regex::new(&format!("^(?:{})$", r[1]))
                .map_err(|e| crate::Error::Catalog(format!("{}: {e}", r[1])))?;
            let weight_rule = match r[3] {
                "" => None,
                "n" => Some(WeightRule::Tonnes),
                "n/10" => Some(WeightRule::TenthTonnes),
                "n-900" => Some(WeightRule::Minus900),
                _ => return Err(bad("model (weight rule)", &r)),
            };
            out.models.push(ModelPattern {
                brand: r[0].into(),
                regex,
                machine_type: r[2].into(),
                weight_rule,
                years: opt(r[4]),
                examples: list(r[5]),
                source: r[6].into(),
            });
        }
        Ok(out)
    }

    pub fn brand(&self, name: &str) -> Option<&Brand> {
        self.brands
            .iter()
            .find(|b| b.name.eq_ignore_ascii_case(name))
    }

    pub fn machine_type(&self, name: &str) -> Option<&MachineType> {
        self.types
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
    }

    /// Normalise a printed code: upper case, spaces removed.
    pub fn normalize_code(code: &str) -> String {
        code.chars()
            .filter(|c| !c.is_whitespace())
            .flat_map(char::to_uppercase)
            .collect()
    }

    /// Look a (normalised) model code of a brand up.
    pub fn lookup(&self, brand: &str, code: &str) -> Option<ModelInfo> {
        let code = Self::normalize_code(code);
        self.models
            .iter()
            .filter(|m| m.brand.eq_ignore_ascii_case(brand))
            .find_map(|m| {
                let caps = m.regex.captures(&code)?;
                let weight_class_kg = match (
                    m.weight_rule,
                    caps.name("n").and_then(|n| n.as_str().parse::<f64>().ok()),
                ) {
                    (Some(WeightRule::Tonnes), Some(n)) => Some(n * 1000.0),
                    (Some(WeightRule::TenthTonnes), Some(n)) => Some(n * 100.0),
                    (Some(WeightRule::Minus900), Some(n)) => Some((n - 900.0) * 1000.0),
                    _ => None,
                }
                .filter(|w| *w > 0.0);
                Some(ModelInfo {
                    brand: m.brand.clone(),
                    model: code.clone(),
                    machine_type: m.machine_type.clone(),
                    weight_class_kg,
                    years: m.years.clone(),
                    source: m.source.clone(),
                })
            })
    }
}
