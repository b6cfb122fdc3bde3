//! `pocketlm perplexity FILE`: sliding-window perplexity of a text file, with a progress bar.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pocketlm::{CancelToken, PerplexityOptions};

use crate::args::ModelArgs;
use crate::load;

/// Options of `pocketlm perplexity`.
#[derive(Debug, Args)]
pub struct PerplexityArgs {
    /// UTF-8 text file to score (tokenized as is, no chat template).
    file: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Tokens per window.
    #[arg(long, default_value_t = PerplexityOptions::default().window)]
    window: usize,
    /// Tokens between window starts (each token is scored once, with up to window - stride
    /// tokens of context carried over).
    #[arg(long, default_value_t = PerplexityOptions::default().stride)]
    stride: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs the command.
pub fn run(args: PerplexityArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.file.display()))?;
    let text = pocketlm::text_from_bytes(bytes)?;
    let model = load::load_with(&args.model, true)?;
    let mut session = load::session(&model, &args.model)?;
    let ids = model.tokenizer().encode(&text)?;
    let bar = ProgressBar::new(ids.len().saturating_sub(1) as u64);
    bar.set_style(ProgressStyle::with_template("scoring {bar:30} {pos}/{len} tokens [{elapsed}]")?);
    let started = Instant::now();
    let options = PerplexityOptions { window: args.window, stride: args.stride };
    let result = pocketlm::perplexity(&mut session, &ids, options, &CancelToken::new(), &mut |done, _| {
        bar.set_position(done as u64)
    });
    bar.finish_and_clear();
    let ppl = result?.expect("never cancelled");
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let out = serde_json::json!({
            "model": model.config().model_id,
            "model_dir": model.dir(),
            "file": args.file,
            "tokens": ids.len(),
            "window": args.window,
            "stride": args.stride,
            "perplexity": ppl.perplexity,
            "mean_nll": ppl.mean_nll,
            "mean_nll_std_error": ppl.std_error,
            "scored_tokens": ppl.scored_tokens,
            "windows": ppl.windows,
            "seconds": seconds,
            "token_ids": ids,
            "token_nll": ppl.token_nll,
        });
        println!("{out}");
    } else {
        // A 95% interval of the mean NLL (normal approximation), as perplexities.
        let (low, high) = ((ppl.mean_nll - 1.96 * ppl.std_error).exp(), (ppl.mean_nll + 1.96 * ppl.std_error).exp());
        println!(
            "perplexity {:.4} (95% interval {low:.2}–{high:.2}; mean NLL {:.4} ± {:.4} nats) over {} tokens in {} windows of {} (stride {}), {:.1} s",
            ppl.perplexity, ppl.mean_nll, ppl.std_error, ppl.scored_tokens, ppl.windows, args.window, args.stride, seconds
        );
    }
    Ok(())
}
