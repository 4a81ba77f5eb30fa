//! `trackunit sample`: a machine-like photo to try the platform with (the same generator the
//! recognition tests use: a brand decal or data plate with the model code).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

#[derive(Debug, Args)]
pub struct SampleArgs {
    /// Where to write the JPEG.
    pub out: PathBuf,
    #[arg(long, default_value = "Caterpillar")]
    pub brand: String,
    #[arg(long, default_value = "320D")]
    pub model: String,
    /// Varies layout and placement (even: decal, odd: data plate).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Rotation, perspective, blur, noise and JPEG artefacts, like a phone photo.
    #[arg(long)]
    pub degraded: bool,
}

pub fn run(args: SampleArgs) -> anyhow::Result<i32> {
    let image = recognition::testset::render_machine_photo(
        &args.brand,
        &args.model,
        args.seed,
        args.degraded,
    )
    .context("rendering the sample")?;
    image
        .save_with_format(&args.out, image::ImageFormat::Jpeg)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "wrote {} ({} {}); analyse it with: trackunit analyze {}",
        args.out.display(),
        args.brand,
        args.model,
        args.out.display()
    );
    Ok(0)
}
