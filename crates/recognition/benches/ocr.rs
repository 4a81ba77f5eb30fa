//! Offline recognition bench: per-image latency (p50/p99) and images/s on 1 and 2 cores for the
//! PP-OCRv4 engine on ort and on tract (`--features tract`), and in the same run on the same
//! images the Python peer RapidOCR (rapidocr-onnxruntime 1.4.4 on onnxruntime 1.31.1, venv by
//! `scripts/rapidocr-venv.sh`), with text accuracy beside ours.
//!
//! "1 core" = one worker, one intra-op thread; "2 cores" = two workers (own sessions, one
//! intra-op thread each) sharing the images — for Python, two processes.
//!
//! `cargo bench -p recognition --features tract --bench ocr` (models: scripts/fetch-models.sh).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
use image::RgbImage;
use recognition::testset::{self, Sample};
use recognition::{Config, Recognizer, Runtime};

struct Run {
    label: String,
    latencies_ms: Vec<f64>,
    wall_s: f64,
    text_hits: usize,
    text_total: usize,
    brand_ok: Option<usize>,
    model_ok: Option<usize>,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

fn print(r: &mut Run, n: usize) {
    let (p50, p99) = (
        pct(&mut r.latencies_ms, 0.5),
        pct(&mut r.latencies_ms, 0.99),
    );
    let acc = |k: Option<usize>| {
        k.map(|k| format!("{:5.1} %", 100.0 * k as f64 / n as f64))
            .unwrap_or_else(|| "   —   ".into())
    };
    println!(
        "{:<34} p50 {:7.1} ms  p99 {:7.1} ms  {:6.2} images/s  text {:5.1} %  brand {}  model {}",
        r.label,
        p50,
        p99,
        n as f64 / r.wall_s,
        100.0 * r.text_hits as f64 / r.text_total.max(1) as f64,
        acc(r.brand_ok),
        acc(r.model_ok)
    );
}

fn ours(
    runtime: Runtime,
    workers: usize,
    samples: &Arc<Vec<(Sample, RgbImage)>>,
) -> anyhow::Result<(Run, usize)> {
    let engines: Vec<Arc<Recognizer>> = (0..workers)
        .map(|_| {
            Recognizer::new(&Config {
                runtime,
                threads: 1,
                tesseract_fallback: false,
                ..Config::default()
            })
            .map(Arc::new)
        })
        .collect::<Result<_, _>>()?;
    for e in &engines {
        e.recognize(&samples[0].1)?; // warm-up
    }
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let handles: Vec<_> = engines
        .into_iter()
        .map(|e| {
            let (next, samples) = (next.clone(), samples.clone());
            std::thread::spawn(move || -> Result<Vec<(usize, f64, recognition::Recognition)>, recognition::Error> {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some((_, img)) = samples.get(i) else { return Ok(out) };
                    let t = Instant::now();
                    let r = e.recognize(img)?;
                    out.push((i, t.elapsed().as_secs_f64() * 1000.0, r));
                }
            })
        })
        .collect();
    let mut results = Vec::new();
    for h in handles {
        results.extend(h.join().map_err(|_| anyhow::anyhow!("worker panicked"))??);
    }
    let wall_s = start.elapsed().as_secs_f64();
    let mut run = Run {
        label: format!(
            "ours {} ({} core{})",
            if runtime == Runtime::Ort {
                "ort  "
            } else {
                "tract"
            },
            workers,
            if workers > 1 { "s" } else { "" }
        ),
        latencies_ms: vec![],
        wall_s,
        text_hits: 0,
        text_total: 0,
        brand_ok: Some(0),
        model_ok: Some(0),
    };
    for (i, ms, r) in results {
        let s = &samples[i].0;
        run.latencies_ms.push(ms);
        let expected = testset::expected_text(s);
        let read: Vec<String> = r.text.iter().map(|t| t.text.clone()).collect();
        run.text_hits += testset::text_hits(&expected, &read);
        run.text_total += expected.len();
        *run.brand_ok.get_or_insert(0) +=
            usize::from(r.aggregate.brand.as_deref() == Some(s.brand.as_str()));
        *run.model_ok.get_or_insert(0) +=
            usize::from(r.aggregate.model.as_deref() == Some(s.model.as_str()));
    }
    Ok((run, samples.len()))
}

fn python(
    python: &Path,
    workers: usize,
    files: &[PathBuf],
    samples: &[(Sample, RgbImage)],
) -> anyhow::Result<Run> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/rapidocr_peer.py");
    let chunks: Vec<Vec<PathBuf>> = (0..workers)
        .map(|w| files.iter().skip(w).step_by(workers).cloned().collect())
        .collect();
    let start2 = Instant::now();
    let spawned: Vec<_> = chunks
        .iter()
        .map(|c| {
            Command::new(python)
                .arg(&script)
                .arg("1")
                .args(c)
                .env("OMP_NUM_THREADS", "1")
                .stdout(std::process::Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut outputs = Vec::new();
    for child in spawned {
        let out = child.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "RapidOCR peer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push(String::from_utf8_lossy(&out.stdout).to_string());
    }
    let wall_total = start2.elapsed().as_secs_f64();
    let mut run = Run {
        label: format!(
            "RapidOCR 1.4.4 python ({} core{})",
            workers,
            if workers > 1 { "s" } else { "" }
        ),
        latencies_ms: vec![],
        wall_s: 0.0,
        text_hits: 0,
        text_total: 0,
        brand_ok: None,
        model_ok: None,
    };
    let mut busy = vec![0f64; workers];
    for (w, out) in outputs.iter().enumerate() {
        for line in out.lines() {
            let v: serde_json::Value = serde_json::from_str(line).context("peer output")?;
            let file = v["file"].as_str().unwrap_or_default();
            let ms = v["ms"].as_f64().unwrap_or_default();
            let i = files
                .iter()
                .position(|f| f.to_string_lossy() == file)
                .context("unknown file")?;
            let read: Vec<String> = v["texts"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let expected = testset::expected_text(&samples[i].0);
            run.text_hits += testset::text_hits(&expected, &read);
            run.text_total += expected.len();
            run.latencies_ms.push(ms);
            busy[w] += ms / 1000.0;
        }
    }
    // Images/s from the time spent recognising (load and warm-up excluded, as for ours).
    run.wall_s = busy.iter().copied().fold(0.0, f64::max).min(wall_total);
    Ok(run)
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let fetched = Command::new(root.join("scripts/fetch-models.sh"))
        .output()
        .context("scripts/fetch-models.sh")?;
    anyhow::ensure!(
        fetched.status.success(),
        "fetch-models.sh: {}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    let samples: Vec<(Sample, RgbImage)> = testset::samples(1)
        .into_iter()
        .map(|s| testset::render(&s).map(|i| (s, i)))
        .collect::<Result<_, _>>()?;
    let n = samples.len();
    let dir = tempfile::tempdir()?;
    let files: Vec<PathBuf> = samples
        .iter()
        .enumerate()
        .map(|(i, (_, img))| {
            let p = dir.path().join(format!("{i:03}.png"));
            img.save(&p).map(|_| p)
        })
        .collect::<Result<_, _>>()?;
    let samples = Arc::new(samples);
    println!(
        "{n} images {}x{} (13 brands, decal + plate, clean + degraded); cpus: {}",
        testset::WIDTH,
        testset::HEIGHT,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    let mut runtimes = vec![Runtime::Ort];
    if cfg!(feature = "tract") {
        runtimes.push(Runtime::Tract);
    } else {
        println!("(tract not built: add --features tract)");
    }
    // tract is slow: it reads the first TRACT_IMAGES images (default 16; the set is ordered by
    // brand, so these are 4 brands × decal/plate × clean/degraded).
    let tract_n: usize = std::env::var("TRACT_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16)
        .min(n);
    let subset = Arc::new(samples[..tract_n].to_vec());
    for rt in runtimes {
        for workers in [1, 2] {
            let set = if rt == Runtime::Tract {
                &subset
            } else {
                &samples
            };
            let (mut r, k) = ours(rt, workers, set)?;
            if k < n {
                r.label = format!("{} [{k} img]", r.label);
            }
            print(&mut r, k);
        }
    }
    let venv = Command::new(root.join("scripts/rapidocr-venv.sh"))
        .output()
        .context("scripts/rapidocr-venv.sh")?;
    anyhow::ensure!(
        venv.status.success(),
        "rapidocr-venv.sh: {}",
        String::from_utf8_lossy(&venv.stderr)
    );
    let py = PathBuf::from(String::from_utf8_lossy(&venv.stdout).trim().to_string());
    for workers in [1, 2] {
        let mut r = python(&py, workers, &files, &samples)?;
        print(&mut r, n);
    }
    Ok(())
}
