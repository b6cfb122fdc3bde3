//! `pocketlm generate`: one prompt, streamed to stdout.

use clap::Args;
use pocketlm::{CancelToken, Message, Role};
use serde_json::json;

use crate::args::{ModelArgs, SamplingArgs};
use crate::load;

/// Options of `pocketlm generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Feed the prompt as is, without the chat template.
    #[arg(long)]
    raw: bool,
    /// Print one JSON object (text, ids, finish reason, timings) as the last line.
    #[arg(long)]
    json: bool,
}

/// Runs the command.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let params = args.sampling.params();
    let model = load::load(&args.model)?;
    let mut session = load::session(&model, &args.model)?;
    let text = if args.raw {
        args.prompt.clone()
    } else {
        model.chat_template().render(&[Message::new(Role::User, args.prompt.as_str())], true)?
    };
    let prompt = model.tokenizer().encode(&text)?;
    let done = pocketlm::generate(&mut session, &prompt, &params, &CancelToken::new(), &mut crate::load::print_piece)?;
    println!();
    if args.json {
        let t = &done.timings;
        let line = json!({
            "text": done.text,
            "prompt_token_ids": done.prompt_token_ids,
            "token_ids": done.token_ids,
            "finish_reason": done.finish_reason,
            "stop_string": done.stop_string,
            "timings": {
                "load_ms": model.load_time_ms(),
                "prefill_ms": t.prefill_ms,
                "decode_ms": t.decode_ms,
                "ttft_ms": t.ttft_ms,
                "prefill_tokens": t.prefill_tokens,
                "decode_tokens": t.decode_tokens,
            },
        });
        println!("{line}");
    } else {
        eprintln!(
            "[{:?}: {} prompt tokens in {:.0} ms, {} tokens generated, {:.1} tok/s decode]",
            done.finish_reason,
            prompt.len(),
            done.timings.prefill_ms,
            done.token_ids.len(),
            rate(done.timings.decode_tokens, done.timings.decode_ms),
        );
    }
    Ok(())
}

/// Tokens per second, 0 when nothing was timed.
pub fn rate(tokens: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        tokens as f64 * 1e3 / ms
    } else {
        0.0
    }
}
