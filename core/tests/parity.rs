//! Greedy output is token-identical to onnxruntime (the oracle, models/oracle.py) on the same
//! ONNX file (near-identical for int8-activation models), and held-out perplexity agrees.
//!
//! Needs a Python with the pipeline's requirements: `POCKETLM_PYTHON`, else the venv that
//! `pocketlm fetch` makes under `$POCKETLM_HOME` (default `~/.cache/pocketlm`), else `python3`.
//! The default-model tests also need `POCKETLM_DEFAULT_MODEL` (the default, 4-bit weights) and
//! `POCKETLM_F32_MODEL` (the fp32 conversion) and `POCKETLM_PRUNED_MODEL` (the FFN-pruned 4-bit
//! conversion), set by tests/run.sh after `pocketlm fetch`, so
//! plain `cargo test` lists them as ignored rather than passing them.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use pocketlm::{
    generate, perplexity, CancelToken, GenerateParams, KvPrecision, Message, Model, ModelOptions, PerplexityOptions,
    Role, SamplingParams, SessionOptions,
};

const PROMPTS: &[(&str, bool)] = &[
    ("The history of the printing press begins", false),
    ("def quicksort(xs):\n    if len(xs) <= 1:\n        return xs\n", false),
    ("Count on: 1, 2, 3, 5, 8, 13, 21,", false),
    ("La capitale de la France est", false),
    ("東京の天気は", false),
    ("My favourite emojis are 🦀 and 🚀 because", false),
    ("What is the capital of France?", true),
    ("Write a haiku about the sea.", true),
];

fn python() -> String {
    if let Ok(p) = std::env::var("POCKETLM_PYTHON") {
        return p;
    }
    let home = std::env::var("POCKETLM_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| Path::new(&h).join(".cache/pocketlm")));
    match home.map(|h| h.join("venv/bin/python")) {
        Ok(venv) if venv.exists() => venv.to_string_lossy().into_owned(),
        _ => "python3".into(),
    }
}

fn oracle(model_dir: &Path, requests: &serde_json::Value) -> Vec<serde_json::Value> {
    let python = python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/oracle.py");
    let mut child = Command::new(&python)
        .arg(script)
        .arg("--model")
        .arg(model_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    child.stdin.take().unwrap().write_all(requests.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "oracle failed (is onnxruntime installed for {python}?)");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn prompts(model: &Model) -> Vec<Vec<u32>> {
    PROMPTS
        .iter()
        .map(|(text, chat)| {
            let text = if *chat {
                model.chat_template().render(&[Message::new(Role::User, *text)], true).unwrap()
            } else {
                text.to_string()
            };
            model.tokenizer().encode(&text).unwrap()
        })
        .collect()
}

fn greedy(model: &std::sync::Arc<Model>, prompt: &[u32], max_tokens: usize, kv_precision: KvPrecision) -> Vec<u32> {
    let params = GenerateParams { max_tokens, sampling: SamplingParams::greedy(), stop: vec![] };
    let mut session = model.session(SessionOptions { kv_precision, ..Default::default() }).unwrap();
    generate(&mut session, prompt, &params, &CancelToken::new(), &mut |_| {}).unwrap().token_ids
}

/// Most a chosen token's logit may sit below onnxruntime's best at the same step (nats). The
/// worst step is a noisy statistic: three float summation orders of the same exact integer
/// products in the 4-bit kernels (no change in accuracy: held-out perplexity within 0.15% of
/// onnxruntime's for each) put the default model's worst step at 0.28, 0.48 and 0.79.
const MAX_GAP: f64 = 1.0;
/// Fewest steps at which both pick the same token.
const MIN_AGREEMENT: f64 = 0.9;

/// Parity for int8-activation models (4-bit weights, `accuracy_level` 4): both runtimes quantize
/// activations per block the same way, but the float sums around them (attention, norms) differ in
/// the last bits, which moves some int8 roundings; logits then differ by ~0.1, so near-ties may
/// break differently and exact greedy equality is the wrong test. Instead onnxruntime scores
/// pocketlm's greedy continuation (teacher-forced): at every step pocketlm's token must be
/// onnxruntime's choice or within `MAX_GAP` of it, and they must agree at `MIN_AGREEMENT` of steps.
fn check_near_parity(model_dir: &Path, max_tokens: usize, kv_precision: KvPrecision) {
    let model = Model::load(model_dir, &ModelOptions { threads: 1, all_logits: false }).unwrap();
    let prompts = prompts(&model);
    let ours: Vec<Vec<u32>> = prompts.iter().map(|p| greedy(&model, p, max_tokens, kv_precision)).collect();
    let requests = serde_json::json!(prompts
        .iter()
        .zip(&ours)
        .map(|(p, c)| serde_json::json!({"prompt_ids": p, "continuation": c}))
        .collect::<Vec<_>>());
    let (mut steps, mut agree, mut worst) = (0usize, 0usize, (0f64, String::new()));
    for ((result, tokens), (text, _)) in oracle(model_dir, &requests).iter().zip(&ours).zip(PROMPTS) {
        let argmax: Vec<u32> = serde_json::from_value(result["argmax"].clone()).unwrap();
        let gaps: Vec<f64> = serde_json::from_value(result["gap"].clone()).unwrap();
        assert_eq!((argmax.len(), gaps.len()), (tokens.len(), tokens.len()));
        for (i, ((ours, theirs), gap)) in tokens.iter().zip(&argmax).zip(&gaps).enumerate() {
            steps += 1;
            agree += usize::from(ours == theirs);
            if *gap > worst.0 {
                worst = (*gap, format!("{text:?} step {i}: pocketlm {ours}, onnxruntime {theirs}"));
            }
        }
    }
    let agreement = agree as f64 / steps as f64;
    eprintln!("near parity: {agree}/{steps} steps agree, largest gap {:.3} ({})", worst.0, worst.1);
    assert!(worst.0 <= MAX_GAP, "a token {:.3} below onnxruntime's best: {}", worst.0, worst.1);
    assert!(agreement >= MIN_AGREEMENT, "only {agree} of {steps} steps agree with onnxruntime");
}

/// Exact parity: the same greedy tokens as onnxruntime.
fn check_parity(model_dir: &Path, max_tokens: usize) {
    let model = Model::load(model_dir, &ModelOptions { threads: 1, all_logits: false }).unwrap();
    let prompts = prompts(&model);
    let requests = serde_json::json!(prompts
        .iter()
        .map(|p| serde_json::json!({"prompt_ids": p, "max_tokens": max_tokens}))
        .collect::<Vec<_>>());
    let expected: Vec<Vec<u32>> =
        oracle(model_dir, &requests).iter().map(|r| serde_json::from_value(r["token_ids"].clone()).unwrap()).collect();
    let mut mismatches = Vec::new();
    for ((prompt, want), (text, _)) in prompts.iter().zip(&expected).zip(PROMPTS) {
        // Exact arithmetic needs the f32 cache (the f16 one rounds keys and values).
        let got = greedy(&model, prompt, max_tokens, KvPrecision::F32);
        if &got != want {
            mismatches.push(format!("{text:?}\n  pocketlm    {got:?}\n  onnxruntime {want:?}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} prompts differ:\n{}",
        mismatches.len(),
        PROMPTS.len(),
        mismatches.join("\n")
    );
}

/// Most pocketlm's perplexity on the held-out text may differ from onnxruntime's on the same
/// file and windows, relative (measured on the default model: 0.01%; the float summation order of
/// the 4-bit kernels alone moves it by up to 0.15%).
const MAX_PERPLEXITY_DIFFERENCE: f64 = 0.005;

/// Perplexity over `models/eval/heldout.txt` with `pocketlm perplexity`'s default windows agrees
/// with onnxruntime's: a whole-distribution check over 1 820 tokens, where greedy parity looks
/// only at each step's top token.
fn check_perplexity(model_dir: &Path) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/eval/heldout.txt");
    let text = pocketlm::text_from_bytes(std::fs::read(path).unwrap()).unwrap();
    let model = Model::load(model_dir, &ModelOptions { threads: 1, all_logits: true }).unwrap();
    let ids = model.tokenizer().encode(&text).unwrap();
    let options = PerplexityOptions::default();
    let mut session = model.session(SessionOptions::default()).unwrap();
    let ours = perplexity(&mut session, &ids, options, &CancelToken::new(), &mut |_, _| {}).unwrap().unwrap();
    let request = serde_json::json!([{"score_ids": ids, "window": options.window, "stride": options.stride}]);
    let theirs = &oracle(model_dir, &request)[0];
    let (their_ppl, their_scored) = (theirs["perplexity"].as_f64().unwrap(), theirs["scored"].as_u64().unwrap());
    let difference = ours.perplexity / their_ppl - 1.0;
    eprintln!("perplexity: pocketlm {:.4}, onnxruntime {their_ppl:.4} ({:+.3}%)", ours.perplexity, 100.0 * difference);
    assert_eq!(ours.scored_tokens as u64, their_scored);
    assert!(difference.abs() <= MAX_PERPLEXITY_DIFFERENCE, "{} vs onnxruntime's {their_ppl}", ours.perplexity);
}

#[test]
#[ignore = "needs the converted default model: run through tests/run.sh (sets POCKETLM_DEFAULT_MODEL)"]
fn perplexity_matches_onnxruntime_on_default_model() {
    let dir =
        std::env::var("POCKETLM_DEFAULT_MODEL").expect("POCKETLM_DEFAULT_MODEL must name the converted default model");
    check_perplexity(Path::new(&dir));
}

#[test]
#[ignore = "needs the converted pruned model: run through tests/run.sh (sets POCKETLM_PRUNED_MODEL)"]
fn perplexity_matches_onnxruntime_on_pruned_model() {
    let dir =
        std::env::var("POCKETLM_PRUNED_MODEL").expect("POCKETLM_PRUNED_MODEL must name the pruned 4-bit conversion");
    check_perplexity(Path::new(&dir));
}

#[test]
fn greedy_matches_onnxruntime_on_tiny_model() {
    check_parity(&common::tiny_dir(), 24);
}

#[test]
fn greedy_follows_onnxruntime_on_tiny_q4_model() {
    // The f32 cache: this model's weights are random, its logits nearly flat, and the f16 cache's
    // rounding alone flips ties (measured: 177 of 192 steps agree, worst gap 1.6); the real
    // models below run with the default f16 cache.
    check_near_parity(&common::tiny_q4_dir(), 24, KvPrecision::F32);
}

#[test]
#[ignore = "needs the converted default model: run through tests/run.sh (sets POCKETLM_DEFAULT_MODEL)"]
fn greedy_follows_onnxruntime_on_default_model() {
    let dir =
        std::env::var("POCKETLM_DEFAULT_MODEL").expect("POCKETLM_DEFAULT_MODEL must name the converted default model");
    check_near_parity(Path::new(&dir), 32, KvPrecision::default());
}

#[test]
#[ignore = "needs the converted pruned model: run through tests/run.sh (sets POCKETLM_PRUNED_MODEL)"]
fn greedy_follows_onnxruntime_on_pruned_model() {
    let dir =
        std::env::var("POCKETLM_PRUNED_MODEL").expect("POCKETLM_PRUNED_MODEL must name the pruned 4-bit conversion");
    check_near_parity(Path::new(&dir), 32, KvPrecision::default());
}

#[test]
#[ignore = "needs the converted fp32 model: run through tests/run.sh (sets POCKETLM_F32_MODEL)"]
fn greedy_matches_onnxruntime_on_f32_model() {
    let dir = std::env::var("POCKETLM_F32_MODEL").expect("POCKETLM_F32_MODEL must name the fp32 conversion");
    check_parity(Path::new(&dir), 32);
}
