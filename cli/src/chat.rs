//! `pocketlm chat`: interactive multi-turn chat on stdin/stdout.

use std::io::BufRead;

use clap::Args;
use pocketlm::{CancelToken, Chat};

use crate::args::{ModelArgs, SamplingArgs};
use crate::load;

/// Options of `pocketlm chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// System message starting the conversation.
    #[arg(long)]
    system: Option<String>,
}

/// Runs the command: one line per user turn; `/reset` starts over; EOF or `/quit` ends.
pub fn run(args: ChatArgs) -> anyhow::Result<()> {
    let params = args.sampling.params();
    let model = load::load(&args.model)?;
    let mut chat = Chat::new(load::session(&model, &args.model)?, args.system.as_deref())?;
    eprintln!("pocketlm chat with {} — /reset to start over, /quit or Ctrl-D to leave", model.config().model_id);
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        match line.trim() {
            "" => continue,
            "/quit" => break,
            "/reset" => {
                chat = Chat::new(load::session(&model, &args.model)?, args.system.as_deref())?;
                continue;
            }
            _ => {}
        }
        let result = chat.send(line.trim_end(), &params, &CancelToken::new(), &mut crate::load::print_piece);
        println!();
        match result {
            Ok(done) => eprintln!(
                "[{:?}; {} tokens reused, {} evaluated, {} generated; context {}/{}]",
                done.finish_reason,
                done.cached_tokens,
                done.timings.prefill_tokens,
                done.token_ids.len(),
                chat.session().token_count(),
                chat.session().context_size()
            ),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    Ok(())
}
