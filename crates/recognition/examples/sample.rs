//! Write test-set images: `cargo run -p recognition --example sample -- OUT_DIR [models_per_brand]`.

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = std::path::PathBuf::from(args.next().unwrap_or_else(|| "samples".into()));
    let per_brand: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(1);
    std::fs::create_dir_all(&out)?;
    for s in recognition::testset::samples(per_brand) {
        let name = format!(
            "{}-{}-{:?}{}.png",
            s.brand.replace(' ', "_"),
            s.model,
            s.layout,
            if s.degraded { "-degraded" } else { "" }
        );
        recognition::testset::render(&s)?.save(out.join(name))?;
    }
    Ok(())
}
