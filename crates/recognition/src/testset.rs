//! The generated test set: machine-like pictures with brand and model decals or a data plate,
//! rendered with Debian's fonts (fonts-dejavu-core, fonts-liberation), clean or degraded
//! (rotation, perspective, blur, noise, brightness, JPEG artefacts), with ground truth.
//! Deterministic per seed. `trackunit sample` uses [`render_machine_photo`].

use std::sync::OnceLock;

use ab_glyph::{FontVec, PxScale};
use image::{Rgb, RgbImage};
use imageproc::drawing::{
    draw_filled_circle_mut, draw_filled_rect_mut, draw_line_segment_mut, draw_polygon_mut,
    draw_text_mut, text_size,
};
use imageproc::geometric_transformations::{
    Border, Interpolation, Projection, rotate_about_center, warp,
};
use imageproc::point::Point;
use imageproc::rect::Rect;

use crate::{Catalog, Error};

pub const WIDTH: u32 = 640;
pub const HEIGHT: u32 = 480;

const FONT_FILES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansCondensed-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSansNarrow-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationMono-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif-Bold.ttf",
];

fn fonts() -> Result<&'static [FontVec], Error> {
    static FONTS: OnceLock<Vec<FontVec>> = OnceLock::new();
    let fonts = FONTS.get_or_init(|| {
        FONT_FILES
            .iter()
            .filter_map(|p| std::fs::read(p).ok())
            .filter_map(|b| FontVec::try_from_vec(b).ok())
            .collect()
    });
    if fonts.is_empty() {
        return Err(Error::TestSet("no fonts: install fonts-dejavu-core and fonts-liberation (scripts/fetch-models.sh does)".into()));
    }
    Ok(fonts)
}

/// SplitMix64: small, deterministic.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Brand and model painted on the machine.
    Decal,
    /// A manufacturer's data plate (brand, model, serial, year, weight).
    Plate,
}

/// One test image and its ground truth.
#[derive(Debug, Clone)]
pub struct Sample {
    pub brand: String,
    /// Normalised code (upper case, no spaces), as the engine reports it.
    pub model: String,
    pub machine_type: String,
    pub layout: Layout,
    pub degraded: bool,
    pub seed: u64,
}

/// The test set: every brand, `models_per_brand` codes from the catalog (covering its types),
/// each as a decal and as a plate, clean and degraded.
pub fn samples(models_per_brand: usize) -> Vec<Sample> {
    let c = Catalog::get();
    let mut out = Vec::new();
    for (bi, brand) in c.brands.iter().enumerate() {
        let rows: Vec<_> = c.models.iter().filter(|m| m.brand == brand.name).collect();
        let mut picked: Vec<(String, String)> = Vec::new();
        for round in 0..8 {
            for r in &rows {
                if picked.len() < models_per_brand
                    && let Some(ex) = r.examples.get(round)
                {
                    picked.push((ex.clone(), r.machine_type.clone()));
                }
            }
        }
        for (mi, (model, machine_type)) in picked.into_iter().enumerate() {
            for degraded in [false, true] {
                for (li, layout) in [Layout::Decal, Layout::Plate].into_iter().enumerate() {
                    out.push(Sample {
                        brand: brand.name.clone(),
                        model: Catalog::normalize_code(&model),
                        machine_type: machine_type.clone(),
                        layout,
                        degraded,
                        seed: (bi as u64) << 16
                            | (mi as u64) << 8
                            | (li as u64) << 1
                            | u64::from(degraded),
                    });
                }
            }
        }
    }
    out
}

/// Render a sample.
pub fn render(s: &Sample) -> Result<RgbImage, Error> {
    render_layout(&s.brand, &s.model, s.seed, s.degraded, s.layout)
}

/// A machine-like photo of `brand` `model` (decal or plate by seed), clean or degraded.
pub fn render_machine_photo(
    brand: &str,
    model: &str,
    seed: u64,
    degraded: bool,
) -> Result<RgbImage, Error> {
    let layout = if seed.is_multiple_of(2) {
        Layout::Decal
    } else {
        Layout::Plate
    };
    render_layout(brand, model, seed, degraded, layout)
}

fn decal_word(brand: &str) -> String {
    match brand {
        "Caterpillar" => "CAT".into(),
        b => b.to_uppercase(),
    }
}

fn plate_word(brand: &str) -> String {
    match brand {
        "Caterpillar" => "CATERPILLAR INC.".into(),
        "Komatsu" => "KOMATSU LTD.".into(),
        "Hitachi" => "HITACHI CONSTRUCTION MACHINERY".into(),
        "JCB" => "J.C. BAMFORD EXCAVATORS LTD - JCB".into(),
        b => b.to_uppercase(),
    }
}

/// How a code is printed: Liebherr `R 926`, `LTM 1100-5.2`; Deere `210G LC`.
fn printed_code(brand: &str, model: &str) -> String {
    let split = model.find(|c: char| c.is_ascii_digit()).unwrap_or(0);
    match brand {
        "Liebherr" if split > 0 => format!("{} {}", &model[..split], &model[split..]),
        "John Deere" if model.ends_with("LC") && model.len() > 2 => {
            format!("{} LC", &model[..model.len() - 2])
        }
        _ => model.to_string(),
    }
}

fn colours(brand: &str) -> (Rgb<u8>, Rgb<u8>) {
    match brand {
        "Caterpillar" => (Rgb([255, 205, 0]), Rgb([20, 20, 20])),
        "Volvo" => (Rgb([240, 190, 20]), Rgb([30, 30, 40])),
        "Komatsu" => (Rgb([250, 200, 30]), Rgb([20, 30, 90])),
        "Hitachi" => (Rgb([255, 120, 0]), Rgb([25, 25, 25])),
        "Doosan" => (Rgb([240, 110, 30]), Rgb([250, 250, 250])),
        "Hyundai" => (Rgb([245, 190, 0]), Rgb([10, 40, 100])),
        "JCB" => (Rgb([250, 190, 0]), Rgb([15, 15, 15])),
        "Liebherr" => (Rgb([255, 210, 0]), Rgb([60, 60, 60])),
        "CASE" => (Rgb([250, 195, 10]), Rgb([10, 10, 10])),
        "John Deere" => (Rgb([54, 124, 43]), Rgb([255, 222, 0])),
        "Kubota" => (Rgb([240, 100, 20]), Rgb([255, 255, 255])),
        "Takeuchi" => (Rgb([235, 235, 235]), Rgb([200, 20, 30])),
        "Bobcat" => (Rgb([240, 240, 240]), Rgb([20, 20, 20])),
        _ => (Rgb([200, 200, 200]), Rgb([0, 0, 0])),
    }
}

/// Largest scale ≤ `max` at which `text` fits `width`.
fn fit(font: &FontVec, text: &str, max: f32, width: u32) -> PxScale {
    let mut s = max;
    while s > 12.0 && text_size(PxScale::from(s), font, text).0 > width {
        s -= 2.0;
    }
    PxScale::from(s)
}

fn render_layout(
    brand: &str,
    model: &str,
    seed: u64,
    degraded: bool,
    layout: Layout,
) -> Result<RgbImage, Error> {
    let fonts = fonts()?;
    let mut rng = Rng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5151);
    let font = &fonts[rng.below(fonts.len().min(4))];
    let mut img = RgbImage::new(WIDTH, HEIGHT);
    // Sky and ground.
    let horizon = rng.range(250.0, 320.0) as u32;
    for (_, y, p) in img.enumerate_pixels_mut() {
        *p = if y < horizon {
            let t = y as f32 / horizon as f32;
            Rgb([
                (120.0 + 80.0 * t) as u8,
                (170.0 + 60.0 * t) as u8,
                (230.0 + 15.0 * t) as u8,
            ])
        } else {
            Rgb([120, 105, 85])
        };
    }
    let (body, ink) = colours(brand);
    let dark = Rgb([40, 40, 42]);
    // Tracks / wheels, body, cab, boom.
    let bx = rng.range(40.0, 90.0) as i32;
    let by = rng.range(150.0, 190.0) as i32;
    let bw = rng.range(430.0, 500.0) as u32;
    let bh = rng.range(150.0, 175.0) as u32;
    let ty = by + bh as i32;
    if rng.below(2) == 0 {
        draw_filled_rect_mut(&mut img, Rect::at(bx - 10, ty).of_size(bw + 20, 60), dark);
        for i in 0..6 {
            draw_filled_circle_mut(
                &mut img,
                (bx + 20 + i * (bw as i32) / 6, ty + 30),
                18,
                Rgb([90, 90, 90]),
            );
        }
    } else {
        for cx in [bx + 70, bx + bw as i32 - 70] {
            draw_filled_circle_mut(&mut img, (cx, ty + 25), 55, dark);
            draw_filled_circle_mut(&mut img, (cx, ty + 25), 22, Rgb([150, 150, 150]));
        }
    }
    draw_filled_rect_mut(&mut img, Rect::at(bx, by).of_size(bw, bh), body);
    let cab_x = bx + bw as i32 - 150;
    draw_filled_rect_mut(&mut img, Rect::at(cab_x, by - 110).of_size(130, 112), body);
    draw_filled_rect_mut(
        &mut img,
        Rect::at(cab_x + 12, by - 98).of_size(106, 70),
        Rgb([150, 190, 210]),
    );
    let boom = [
        Point::new(cab_x + 120, by + 10),
        Point::new(cab_x + 128, by - 20),
        Point::new(WIDTH as i32 - 5, by - 140),
        Point::new(WIDTH as i32 - 5, by - 100),
    ];
    draw_polygon_mut(&mut img, &boom, body);
    draw_line_segment_mut(
        &mut img,
        (bx as f32, by as f32),
        ((bx + bw as i32) as f32, by as f32),
        dark,
    );

    let code = printed_code(brand, model);
    match layout {
        Layout::Decal => {
            let word = decal_word(brand);
            let area = bw.saturating_sub(190);
            let s1 = fit(font, &word, rng.range(58.0, 76.0), area);
            draw_text_mut(&mut img, ink, bx + 20, by + 18, s1, font, &word);
            let s2 = fit(font, &code, rng.range(40.0, 52.0), area);
            draw_text_mut(
                &mut img,
                ink,
                bx + 24,
                by + 22 + s1.y as i32 + 10,
                s2,
                font,
                &code,
            );
        }
        Layout::Plate => {
            let (pw, ph) = (rng.range(380.0, 420.0) as u32, 196u32);
            let (px, py) = (bx + 16, by - 30);
            draw_filled_rect_mut(
                &mut img,
                Rect::at(px - 3, py - 3).of_size(pw + 6, ph + 6),
                Rgb([60, 60, 60]),
            );
            draw_filled_rect_mut(
                &mut img,
                Rect::at(px, py).of_size(pw, ph),
                Rgb([212, 214, 216]),
            );
            let pfont = &fonts[rng.below(fonts.len())];
            let year = 2008 + rng.below(16);
            let weight = 1500 + 100 * rng.below(400);
            let lines = [
                plate_word(brand),
                format!("MODEL {code}"),
                format!("S/N {:08}", rng.next_u64() % 100_000_000),
                format!("YEAR {year}"),
                format!("OPERATING WEIGHT {},{:03} KG", weight / 1000, weight % 1000),
            ];
            let mut y = py + 10;
            for (i, l) in lines.iter().enumerate() {
                let s = fit(pfont, l, if i < 2 { 30.0 } else { 24.0 }, pw - 24);
                draw_text_mut(&mut img, Rgb([15, 15, 15]), px + 12, y, s, pfont, l);
                y += s.y as i32 + 8;
            }
        }
    }
    if degraded {
        img = degrade(img, &mut rng)?;
    }
    Ok(img)
}

fn degrade(img: RgbImage, rng: &mut Rng) -> Result<RgbImage, Error> {
    let (w, h) = (WIDTH as f32, HEIGHT as f32);
    let fill = Rgb([128, 128, 128]);
    let mut img = rotate_about_center(
        &img,
        rng.range(-12.0, 12.0).to_radians(),
        Interpolation::Bilinear,
        Border::Constant(fill),
    );
    let j = |rng: &mut Rng, v: f32| v + rng.range(-0.07, 0.07) * w;
    let from = [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)];
    let to = [
        (j(rng, 0.0), j(rng, 0.0)),
        (j(rng, w), j(rng, 0.0)),
        (j(rng, w), j(rng, h)),
        (j(rng, 0.0), j(rng, h)),
    ];
    if let Some(p) = Projection::from_control_points(from, to) {
        img = warp(&img, p, Interpolation::Bilinear, Border::Constant(fill));
    }
    img = imageproc::filter::gaussian_blur_f32(&img, rng.range(0.6, 1.4));
    let gain = rng.range(0.75, 1.15);
    for p in img.pixels_mut() {
        for v in p.0.iter_mut() {
            *v = (*v as f32 * gain).clamp(0.0, 255.0) as u8;
        }
    }
    imageproc::noise::gaussian_noise_mut(
        &mut img,
        0.0,
        f64::from(rng.range(5.0, 11.0)),
        rng.next_u64(),
    );
    let quality = 30 + rng.below(26) as u8;
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, quality)
        .encode_image(&img)
        .map_err(|e| Error::TestSet(format!("jpeg: {e}")))?;
    Ok(image::load_from_memory(&jpeg)
        .map_err(|e| Error::TestSet(format!("jpeg: {e}")))?
        .to_rgb8())
}

/// The words printed on a sample that a text reader should return: the brand as printed and
/// the model code, each upper case without spaces (for text accuracy across readers).
pub fn expected_text(s: &Sample) -> Vec<String> {
    let brand = match s.layout {
        Layout::Decal => decal_word(&s.brand),
        Layout::Plate => plate_word(&s.brand),
    };
    vec![
        Catalog::normalize_code(&brand),
        Catalog::normalize_code(&printed_code(&s.brand, &s.model)),
    ]
}

/// The share of `expected` words found in the text read (upper case, spaces removed).
pub fn text_hits(expected: &[String], read: &[String]) -> usize {
    let all: String = read
        .iter()
        .map(|t| Catalog::normalize_code(t))
        .collect::<Vec<_>>()
        .join("|");
    expected.iter().filter(|e| all.contains(e.as_str())).count()
}
