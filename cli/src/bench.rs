//! `pocketlm bench`: prefill and decode speed, time to first token, load time, peak memory.

use std::time::Instant;

use clap::Args;
use pocketlm::{argmax, CancelToken};
use serde_json::json;

use crate::args::ModelArgs;
use crate::generate::rate;
use crate::load;

/// Options of `pocketlm bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt length in tokens (taken from the built-in sample text).
    #[arg(long, default_value_t = 256)]
    prompt_tokens: usize,
    /// Tokens to decode after the prompt (greedy, end-of-sequence ignored).
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// A memory figure of this process in MiB from Linux `/proc/self/status` (`VmHWM` = peak resident,
/// `VmRSS` = resident now, `RssFile` = the part of it that is file pages: mostly the executable's
/// code), if known.
fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Single-thread read bandwidth in GB/s: the best of three sums over a 256 MiB buffer (far larger
/// than any cache), the ceiling a memory-bound decode step is compared against.
fn read_bandwidth_gb_s() -> f64 {
    let words = vec![1u64; 32 << 20];
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        // Four independent sums keep the adds off the critical path.
        let sum = words.chunks_exact(4).fold([0u64; 4], |a, c| {
            [a[0].wrapping_add(c[0]), a[1].wrapping_add(c[1]), a[2].wrapping_add(c[2]), a[3].wrapping_add(c[3])]
        });
        std::hint::black_box(sum);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (words.len() * 8) as f64 / best / 1e9
}

/// Runs the command.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.prompt_tokens > 0 && args.gen_tokens > 0, "--prompt-tokens and --gen-tokens must be positive");
    let model = load::load(&args.model)?;
    let rss_after_load = status_mib("VmRSS:");
    let file_pages_after_load = status_mib("RssFile:");
    let peak_rss_load = status_mib("VmHWM:");
    let tokenizer = model.tokenizer();
    let sample = tokenizer.encode(crate::summarize::SAMPLE)?;
    let prompt: Vec<u32> = sample.iter().cycle().take(args.prompt_tokens).copied().collect();
    let mut session = load::session(&model, &args.model)?;
    let cancel = CancelToken::new();
    // Warm-up: one short prefill, then start clean.
    session.prefill(&prompt[..prompt.len().min(8)], &cancel)?;
    session.reset()?;

    let t0 = Instant::now();
    let logits = session.prefill(&prompt, &cancel)?.expect("not cancelled");
    let mut next = argmax(&logits);
    let prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = Instant::now();
    let mut generated = vec![next];
    for _ in 1..args.gen_tokens {
        next = argmax(&session.decode(next)?);
        generated.push(next);
    }
    let decode_ms = t1.elapsed().as_secs_f64() * 1e3;
    let kv_cache_mib = session.cache_bytes() as f64 / (1024.0 * 1024.0);
    let decode_steps = args.gen_tokens - 1;
    let peak_rss = status_mib("VmHWM:"); // before the bandwidth probe's buffer
    let bandwidth = read_bandwidth_gb_s();
    let weight_bytes = model.weight_bytes_per_token();
    let weight_gb_s = weight_bytes as f64 * rate(decode_steps, decode_ms) / 1e9;
    let report = json!({
        "runtime": "pocketlm",
        "model": model.config().model_id,
        "threads": model.threads(),
        "load_ms": model.load_time_ms(),
        "prompt_tokens": prompt.len(),
        "prefill_ms": prefill_ms,
        "prefill_tok_s": rate(prompt.len(), prefill_ms),
        "ttft_ms": prefill_ms,
        "decode_tokens": decode_steps,
        "decode_ms": decode_ms,
        "decode_tok_s": rate(decode_steps, decode_ms),
        "rss_after_load_mib": rss_after_load,
        "file_pages_after_load_mib": file_pages_after_load,
        "peak_rss_load_mib": peak_rss_load,
        "kv_cache_mib": kv_cache_mib,
        "peak_rss_mib": peak_rss,
        "weight_bytes_per_token": weight_bytes,
        "q4_kernel": pocketlm::q4_kernel_name(),
        "q8_kernel": pocketlm::q8_kernel_name(),
        "read_bandwidth_gb_s": bandwidth,
        "prompt_token_ids": prompt,
        "generated_token_ids": generated,
    });
    if args.json {
        println!("{report}");
    } else {
        println!("model        {} ({} thread(s))", model.config().model_id, model.threads());
        println!("load         {:.0} ms", model.load_time_ms());
        println!("kernels      4-bit: {}, 8-bit: {}", pocketlm::q4_kernel_name(), pocketlm::q8_kernel_name());
        println!(
            "prefill      {} tokens in {:.0} ms = {:.1} tok/s (time to first token {:.0} ms)",
            prompt.len(),
            prefill_ms,
            rate(prompt.len(), prefill_ms),
            prefill_ms
        );
        println!(
            "decode       {decode_steps} tokens in {decode_ms:.0} ms = {:.1} tok/s",
            rate(decode_steps, decode_ms)
        );
        println!(
            "memory       {:.0} MiB resident after load ({:.0} MiB of it file pages: code), peak {:.0} MiB while \
             loading, {:.0} MiB peak, KV cache {kv_cache_mib:.1} MiB",
            rss_after_load.unwrap_or(f64::NAN),
            file_pages_after_load.unwrap_or(f64::NAN),
            peak_rss_load.unwrap_or(f64::NAN),
            peak_rss.unwrap_or(f64::NAN)
        );
        println!(
            "bandwidth    {:.1} MB of weights per token = {weight_gb_s:.1} GB/s in decode; read bandwidth {bandwidth:.1} GB/s \
             (1 thread): {:.0}%",
            weight_bytes as f64 / 1e6,
            100.0 * weight_gb_s / bandwidth
        );
    }
    Ok(())
}
