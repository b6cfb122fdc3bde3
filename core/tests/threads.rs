//! A model run on a thread pool computes exactly what it computes on one thread: the quantized
//! products split their rows across the pool and, past a few hundred cached positions, decode
//! attention runs its KV heads as pool tasks; neither may change a bit of the result.

use std::path::Path;

use pocketlm::{generate, CancelToken, GenerateParams, Model, ModelOptions, SamplingParams, SessionOptions};

#[test]
#[ignore = "needs the converted default model: run through tests/run.sh (sets POCKETLM_DEFAULT_MODEL)"]
fn two_threads_give_the_same_tokens_as_one_past_the_parallel_attention_threshold() {
    let dir =
        std::env::var("POCKETLM_DEFAULT_MODEL").expect("POCKETLM_DEFAULT_MODEL must name the converted default model");
    let run = |threads: usize| {
        let model = Model::load(Path::new(&dir), &ModelOptions { threads, all_logits: false }).unwrap();
        let text = "The lighthouse keeper wrote the weather down every four hours, for forty years. ".repeat(18);
        let ids = model.tokenizer().encode(&text).unwrap();
        assert!(ids.len() > 200, "{} prompt tokens", ids.len());
        let params = GenerateParams { max_tokens: 120, sampling: SamplingParams::greedy(), stop: vec![] };
        let mut session = model.session(SessionOptions::default()).unwrap();
        let out = generate(&mut session, &ids, &params, &CancelToken::new(), &mut |_| {}).unwrap();
        assert!(session.token_count() > 300, "{} positions cached", session.token_count());
        out.token_ids
    };
    assert_eq!(run(1), run(2));
}
