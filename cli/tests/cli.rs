//! The `pocketlm` binary end to end on the committed tiny model.

use std::path::PathBuf;
use std::process::{Command, Output};

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tiny")
}

fn pocketlm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pocketlm")).args(args).output().expect("binary runs")
}

fn last_json_line(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let last = stdout.lines().last().expect("output has lines");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}"))
}

#[test]
fn generate_json_reports_text_ids_reason_and_timings() {
    let model = tiny();
    let out = pocketlm(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "Hello",
        "--greedy",
        "--max-tokens",
        "12",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = last_json_line(&out);
    assert_eq!(v["token_ids"].as_array().unwrap().len(), 12);
    assert_eq!(v["finish_reason"], "max_tokens");
    // Chat template applied: prompt starts with <|im_start|> (id 1).
    assert_eq!(v["prompt_token_ids"][0], 1);
    for key in ["load_ms", "prefill_ms", "decode_ms", "ttft_ms"] {
        assert!(v["timings"][key].as_f64().unwrap() > 0.0, "{key}");
    }
    let streamed = String::from_utf8(out.stdout).unwrap();
    assert!(streamed.starts_with(v["text"].as_str().unwrap()), "text streamed before the JSON line");
}

#[test]
fn raw_prompt_skips_the_chat_template_and_stop_strings_apply() {
    let model = tiny();
    let m = model.to_str().unwrap();
    let raw =
        pocketlm(&["generate", "--model", m, "--prompt", "Hello", "--raw", "--greedy", "--max-tokens", "20", "--json"]);
    let v = last_json_line(&raw);
    assert_eq!(v["prompt_token_ids"], serde_json::json!([19556]));
    let text = v["text"].as_str().unwrap().to_string();
    let stop: String = text.chars().skip(4).take(2).collect();
    let stopped = pocketlm(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "Hello",
        "--raw",
        "--greedy",
        "--max-tokens",
        "20",
        "--stop",
        &stop,
        "--json",
    ]);
    let s = last_json_line(&stopped);
    assert_eq!(s["finish_reason"], "stop");
    assert!(!s["text"].as_str().unwrap().contains(&stop));
}

#[test]
fn seeded_sampling_is_reproducible_from_the_command_line() {
    let model = tiny();
    let m = model.to_str().unwrap();
    let args = [
        "generate",
        "--model",
        m,
        "--prompt",
        "Hi",
        "--temperature",
        "1.2",
        "--top-k",
        "50",
        "--top-p",
        "0.95",
        "--min-p",
        "0.01",
        "--repeat-penalty",
        "1.1",
        "--seed",
        "5",
        "--max-tokens",
        "16",
        "--json",
    ];
    assert_eq!(last_json_line(&pocketlm(&args))["token_ids"], last_json_line(&pocketlm(&args))["token_ids"]);
}

#[test]
fn bad_parameters_fail_with_a_clear_message() {
    let model = tiny();
    let m = model.to_str().unwrap();
    let out = pocketlm(&["generate", "--model", m, "--prompt", "Hi", "--top-p", "2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("top_p"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = pocketlm(&["generate", "--model", "/nonexistent", "--prompt", "Hi"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.json"));
}

#[test]
fn summarize_rejects_invalid_utf8_and_overlong_files() {
    let model = tiny();
    let m = model.to_str().unwrap();
    let temp = tempfile::Builder::new().prefix("pocketlm-cli-").tempdir().unwrap();
    let dir = temp.path();
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, b"caf\xe9 au lait").unwrap();
    let out = pocketlm(&["summarize", bad.to_str().unwrap(), "--model", m]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid UTF-8"));
    let long = dir.join("long.txt");
    std::fs::write(&long, "All work and no play. ".repeat(200)).unwrap();
    let out = pocketlm(&["summarize", long.to_str().unwrap(), "--model", m]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("context overflow"));
}

#[test]
fn chat_keeps_the_conversation_across_turns() {
    use std::io::Write;
    let model = tiny();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pocketlm"))
        .args(["chat", "--model", model.to_str().unwrap(), "--greedy", "--max-tokens", "6"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"Hello\nHow are you?\n/quit\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let reused: Vec<usize> =
        err.lines().filter_map(|l| l.split("; ").nth(1)?.split(' ').next()?.parse().ok()).collect();
    assert_eq!(reused.len(), 2, "{err}");
    assert_eq!(reused[0], 0);
    assert!(reused[1] > 20, "second turn reused the first turn's cache: {err}");
}

#[test]
fn bench_json_prints_speed_and_memory() {
    let model = tiny();
    let out = pocketlm(&[
        "bench",
        "--model",
        model.to_str().unwrap(),
        "--prompt-tokens",
        "32",
        "--gen-tokens",
        "8",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = last_json_line(&out);
    assert_eq!(v["prompt_tokens"], 32);
    for key in ["load_ms", "prefill_tok_s", "decode_tok_s", "ttft_ms", "peak_rss_mib"] {
        assert!(v[key].as_f64().unwrap() > 0.0, "{key}: {v}");
    }
}

#[test]
fn perplexity_json_scores_the_held_out_text() {
    let model = tiny();
    let text = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/eval/heldout.txt");
    let args = ["--model", model.to_str().unwrap(), "--window", "128", "--stride", "64", "--json"];
    let out = pocketlm(&[&["perplexity", text.to_str().unwrap()][..], &args[..]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = last_json_line(&out);
    let tokens = v["tokens"].as_u64().unwrap();
    assert!(tokens > 1500, "{v}");
    assert_eq!(v["scored_tokens"].as_u64().unwrap(), tokens - 1);
    let (ppl, nll) = (v["perplexity"].as_f64().unwrap(), v["mean_nll"].as_f64().unwrap());
    // A random-weight model over a 49152-token vocabulary: far from fluent, but finite.
    assert!(ppl > 1.0 && ppl.is_finite() && (ppl.ln() - nll).abs() < 1e-9, "{v}");
    // Per-token values for paired comparisons (bench/llama_perplexity.py): their mean is the mean
    // NLL, their spread gives the standard error.
    let token_nll: Vec<f64> = v["token_nll"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(token_nll.len() as u64, tokens - 1);
    let mean = token_nll.iter().sum::<f64>() / token_nll.len() as f64;
    assert!((mean - nll).abs() < 1e-4, "{mean} vs {nll}");
    let se = v["mean_nll_std_error"].as_f64().unwrap();
    assert!(se > 0.0 && se < 0.5, "{se}");
    let bad = pocketlm(
        &[&["perplexity", text.to_str().unwrap()][..], &["--model", model.to_str().unwrap(), "--window", "1"][..]]
            .concat(),
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("window"), "{}", String::from_utf8_lossy(&bad.stderr));
}
