//! `pocketlm summarize [FILE|-]`: summarise a text file (or stdin, or a built-in sample).

use std::io::Read;
use std::path::PathBuf;

use clap::Args;
use pocketlm::CancelToken;

use crate::args::{ModelArgs, SamplingArgs};
use crate::load;

/// A sample text, summarised when no file is given.
pub const SAMPLE: &str = include_str!("../sample.txt");

/// Options of `pocketlm summarize`.
#[derive(Debug, Args)]
pub struct SummarizeArgs {
    /// Text file to summarise; `-` reads stdin; none summarises a built-in sample.
    file: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
}

/// Runs the command.
pub fn run(args: SummarizeArgs) -> anyhow::Result<()> {
    let text = match &args.file {
        None => SAMPLE.to_string(),
        Some(p) if p.as_os_str() == "-" => {
            let mut bytes = Vec::new();
            std::io::stdin().read_to_end(&mut bytes)?;
            pocketlm::text_from_bytes(bytes)?
        }
        Some(p) => pocketlm::text_from_bytes(
            std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?,
        )?,
    };
    let model = load::load(&args.model)?;
    let mut session = load::session(&model, &args.model)?;
    if args.file.is_none() {
        eprintln!("Summarising the built-in sample text ({} words):", text.split_whitespace().count());
    }
    let done = pocketlm::summarize(
        &mut session,
        &text,
        &args.sampling.params(),
        &CancelToken::new(),
        &mut crate::load::print_piece,
    )?;
    println!();
    eprintln!(
        "[{:?}: {} prompt tokens in {:.0} ms, {} tokens at {:.1} tok/s]",
        done.finish_reason,
        done.prompt_token_ids.len(),
        done.timings.prefill_ms,
        done.token_ids.len(),
        crate::generate::rate(done.timings.decode_tokens, done.timings.decode_ms)
    );
    Ok(())
}
