//! pocketlm packaging tasks: `cargo xtask <command>` (alias in .cargo/config.toml).
//!
//! - `bindgen --language kotlin|swift --out DIR`: generate the uniffi bindings from the
//!   host-built library (built first).
//! - `c-header [--check]`: write (or check) bindings/include/pocketlm.h with cbindgen.
//! - `android`: the library for Android ABIs (arm64-v8a, armeabi-v7a, x86_64): shared
//!   libraries into android/src/main/jniLibs/<abi>/ when an NDK is given (`ANDROID_NDK_HOME`),
//!   otherwise static libraries only (proof that the whole tree compiles for Android).
//! - `ios`: static libraries for iOS devices and simulators, Swift sources and the C header;
//!   on macOS also ios/PocketLMFFI.xcframework (xcodebuild).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use camino::Utf8PathBuf;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(about = "pocketlm packaging tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate Kotlin or Swift bindings from the host-built library.
    Bindgen {
        #[arg(long, value_enum)]
        language: Language,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write bindings/include/pocketlm.h (or, with --check, fail if it is out of date).
    CHeader {
        #[arg(long)]
        check: bool,
    },
    /// Build the library for Android ABIs.
    Android {
        /// Cargo profile (`mobile`: LTO, stripped; `cross-check`: fast compile-only proof).
        #[arg(long, default_value = "mobile")]
        profile: String,
    },
    /// Build the library for iOS (and, on macOS, the XCFramework).
    Ios {
        /// Cargo profile (`mobile`: LTO, stripped; `cross-check`: fast compile-only proof).
        #[arg(long, default_value = "mobile")]
        profile: String,
        /// Only these targets (default: device and both simulators; the XCFramework needs all).
        #[arg(long = "target")]
        targets: Vec<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Language {
    Kotlin,
    Swift,
}

/// Android ABI directory name and Rust target.
const ANDROID: &[(&str, &str)] = &[
    ("arm64-v8a", "aarch64-linux-android"),
    ("armeabi-v7a", "armv7-linux-androideabi"),
    ("x86_64", "x86_64-linux-android"),
];
/// iOS device and simulator targets.
const IOS: &[&str] = &["aarch64-apple-ios", "aarch64-apple-ios-sim", "x86_64-apple-ios"];
const LIB: &str = "pocketlm_ffi";

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Bindgen { language, out } => bindgen(language, &out),
        Cmd::CHeader { check } => c_header(check),
        Cmd::Android { profile } => android(&profile),
        Cmd::Ios { profile, targets } => ios(&profile, &targets),
    }
}

/// The workspace root. Read at run time (`cargo run` sets `CARGO_MANIFEST_DIR`): a binary reused
/// from a target directory shared by several checkouts would otherwise carry another checkout's
/// compile-time path.
fn root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    let xtask = manifest.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    xtask.parent().expect("xtask sits in the workspace").to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn utf8(p: PathBuf) -> Result<Utf8PathBuf> {
    Utf8PathBuf::from_path_buf(p).map_err(|p| anyhow::anyhow!("path is not UTF-8: {}", p.display()))
}

/// Builds the host cdylib (release) and returns its path.
fn host_library() -> Result<Utf8PathBuf> {
    run(cargo().args(["build", "--release", "-p", "pocketlm-ffi"]))?;
    let name = if cfg!(target_os = "macos") { format!("lib{LIB}.dylib") } else { format!("lib{LIB}.so") };
    utf8(target_dir().join("release").join(name))
}

fn bindgen(language: Language, out: &Path) -> Result<()> {
    let library = host_library()?;
    let out_dir = utf8(out.to_path_buf())?;
    match language {
        Language::Kotlin => uniffi::generate(uniffi::GenerateOptions {
            languages: vec![uniffi::TargetLanguage::Kotlin],
            source: library,
            out_dir,
            crate_filter: Some(LIB.to_string()),
            ..Default::default()
        })?,
        Language::Swift => swift_sources(&library, out_dir)?,
    }
    println!("{}", out.display());
    Ok(())
}

/// Swift sources, the C header of the uniffi scaffolding and its module map.
fn swift_sources(library: &Utf8PathBuf, out_dir: Utf8PathBuf) -> Result<()> {
    uniffi::generate_swift_bindings(uniffi::SwiftBindingsOptions {
        generate_swift_sources: true,
        generate_headers: true,
        generate_modulemap: true,
        source: library.clone(),
        out_dir,
        xcframework: true,
        module_name: Some("PocketLMFFI".into()),
        modulemap_filename: Some("module.modulemap".into()),
        metadata_no_deps: false,
        link_frameworks: Vec::new(),
        config: None,
    })
}

fn c_header(check: bool) -> Result<()> {
    let crate_dir = root().join("bindings");
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).map_err(anyhow::Error::msg)?;
    let mut text = Vec::new();
    cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .context("cbindgen")?
        .write(&mut text);
    let path = crate_dir.join("include").join("pocketlm.h");
    if check {
        let committed = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if committed != text {
            bail!("{} is out of date: run `cargo xtask c-header`", path.display());
        }
        println!("{} is up to date", path.display());
        return Ok(());
    }
    std::fs::create_dir_all(path.parent().expect("has parent"))?;
    std::fs::write(&path, text)?;
    println!("{}", path.display());
    Ok(())
}

/// `cargo rustc` of the library for `target` as `crate_type` with `profile`; returns the file.
/// Without a platform toolchain, C and assembly (tract-linalg's kernels) are compiled by clang,
/// and an empty SDK root stands in for Apple's (nothing from it is linked into a static library).
fn cross_build(target: &str, crate_type: &str, profile: &str) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["rustc", "--profile", profile, "-p", "pocketlm-ffi", "--lib", "--target", target]);
    cmd.args(["--crate-type", crate_type]);
    let key = target.replace('-', "_");
    if std::env::var_os(format!("CC_{key}")).is_none() && std::env::var_os("ANDROID_NDK_HOME").is_none() {
        cmd.env(format!("CC_{key}"), "clang");
    }
    if std::env::var_os(format!("CFLAGS_{key}")).is_none() {
        if target.starts_with("aarch64") {
            // clang otherwise drops tract's int8 `sdot` kernel; it only runs on CPUs that have it.
            cmd.env(format!("CFLAGS_{key}"), "-march=armv8.2-a+dotprod");
        } else if target.starts_with("armv7") {
            // Android's armeabi-v7a: NEON and VFP registers, soft-float calling convention.
            cmd.env(format!("CFLAGS_{key}"), "-march=armv7-a -mfpu=neon -mfloat-abi=softfp");
        }
    }
    if target.contains("apple") && !cfg!(target_os = "macos") && std::env::var_os("SDKROOT").is_none() {
        let sdk = target_dir().join("empty-sdkroot");
        std::fs::create_dir_all(&sdk)?;
        cmd.env("SDKROOT", sdk);
    }
    run(&mut cmd)?;
    let file = match crate_type {
        "staticlib" => format!("lib{LIB}.a"),
        _ => format!("lib{LIB}.so"),
    };
    let dir = if profile == "dev" { "debug" } else { profile };
    Ok(target_dir().join(target).join(dir).join(file))
}

fn report(file: &Path) -> Result<()> {
    let bytes = std::fs::metadata(file).with_context(|| format!("missing {}", file.display()))?.len();
    println!("{}: {:.1} MB", file.display(), bytes as f64 / 1e6);
    Ok(())
}

fn android(profile: &str) -> Result<()> {
    let ndk = std::env::var_os("ANDROID_NDK_HOME").map(PathBuf::from);
    for (abi, target) in ANDROID {
        let Some(ndk) = &ndk else {
            report(&cross_build(target, "staticlib", profile)?)?;
            continue;
        };
        // NDK clang wrappers are named <target><api>-clang (armv7's as armv7a-linux-androideabi).
        let clang = ndk
            .join("toolchains/llvm/prebuilt")
            .join(if cfg!(target_os = "macos") { "darwin-x86_64" } else { "linux-x86_64" })
            .join("bin")
            .join(format!("{}24-clang", target.replace("armv7", "armv7a")));
        let env_target = target.to_uppercase().replace('-', "_");
        std::env::set_var(format!("CARGO_TARGET_{env_target}_LINKER"), &clang);
        std::env::set_var(format!("CC_{}", target.replace('-', "_")), &clang);
        let so = cross_build(target, "cdylib", profile)?;
        let dest = root().join("android/src/main/jniLibs").join(abi);
        std::fs::create_dir_all(&dest)?;
        std::fs::copy(&so, dest.join(format!("lib{LIB}.so")))?;
        report(&dest.join(format!("lib{LIB}.so")))?;
    }
    if ndk.is_none() {
        println!("ANDROID_NDK_HOME not set: static libraries only (no jniLibs); see android/README.md");
    }
    Ok(())
}

fn ios(profile: &str, only: &[String]) -> Result<()> {
    let targets: Vec<&str> = if only.is_empty() { IOS.to_vec() } else { only.iter().map(String::as_str).collect() };
    let mut libs = Vec::new();
    for target in &targets {
        let lib = cross_build(target, "staticlib", profile)?;
        report(&lib)?;
        libs.push(lib);
    }
    // Swift sources into the package's target; the C header and module map of the uniffi
    // scaffolding beside them, for the XCFramework.
    let generated = root().join("ios/Generated");
    swift_sources(&host_library()?, utf8(generated.clone())?)?;
    let swift_dir = root().join("ios/Sources/PocketLM/Generated");
    std::fs::create_dir_all(&swift_dir)?;
    std::fs::rename(generated.join("PocketLM.swift"), swift_dir.join("PocketLM.swift"))?;
    println!("{}", swift_dir.join("PocketLM.swift").display());
    if !cfg!(target_os = "macos") || targets != IOS {
        println!(
            "static libraries and Swift sources only: the XCFramework needs macOS (xcodebuild) and all of {IOS:?}"
        );
        return Ok(());
    }
    // One framework slice per platform: the two simulator architectures are merged with lipo.
    let sim = target_dir().join("ios-sim-universal.a");
    run(Command::new("lipo").arg("-create").arg(&libs[1]).arg(&libs[2]).arg("-output").arg(&sim))?;
    let xcframework = root().join("ios/PocketLMFFI.xcframework");
    let _ = std::fs::remove_dir_all(&xcframework);
    let headers = generated; // PocketLMFFI.h and module.modulemap
    run(Command::new("xcodebuild")
        .arg("-create-xcframework")
        .arg("-library")
        .arg(&libs[0])
        .arg("-headers")
        .arg(&headers)
        .arg("-library")
        .arg(&sim)
        .arg("-headers")
        .arg(&headers)
        .arg("-output")
        .arg(&xcframework))?;
    println!("{}", xcframework.display());
    Ok(())
}
