//! Generation on the tiny model: determinism, seeds, stops, context limits, rewind, chat reuse,
//! cancellation.

mod common;

use std::sync::mpsc;

use pocketlm::{generate, CancelToken, Chat, Error, FinishReason, GenerateParams, SamplingParams, SessionOptions};

fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams { max_tokens, sampling: SamplingParams::greedy(), stop: vec![] }
}

fn run(params: &GenerateParams, prompt: &str) -> pocketlm::Completion {
    let model = common::tiny();
    let mut session = model.session(SessionOptions::default()).unwrap();
    let ids = model.tokenizer().encode(prompt).unwrap();
    generate(&mut session, &ids, params, &CancelToken::new(), &mut |_| {}).unwrap()
}

#[test]
fn greedy_is_deterministic_and_streams_the_whole_text() {
    let model = common::tiny();
    let ids = model.tokenizer().encode("Once upon a time").unwrap();
    let mut streamed = String::new();
    let mut session = model.session(SessionOptions::default()).unwrap();
    let a = generate(&mut session, &ids, &greedy(40), &CancelToken::new(), &mut |p| streamed.push_str(p)).unwrap();
    let b = run(&greedy(40), "Once upon a time");
    assert_eq!(a.token_ids, b.token_ids);
    assert_eq!(streamed, a.text, "streamed pieces add up to the text");
    assert_eq!(a.prompt_token_ids, ids);
    assert!(matches!(a.finish_reason, FinishReason::MaxTokens | FinishReason::Eos));
    assert_eq!(session.token_count(), ids.len() + a.timings.decode_tokens);
}

#[test]
fn same_seed_same_tokens_different_seed_different_tokens() {
    let sampled = |seed| {
        let sampling = SamplingParams {
            temperature: 1.5,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(seed),
            ..SamplingParams::default()
        };
        run(&GenerateParams { max_tokens: 30, sampling, stop: vec![] }, "Hello").token_ids
    };
    assert_eq!(sampled(7), sampled(7));
    assert_ne!(sampled(7), sampled(8));
}

#[test]
fn stop_string_ends_generation_and_is_not_emitted() {
    let free = run(&greedy(40), "Stop test");
    // Use a piece of the free-running output as the stop string.
    let chars: Vec<char> = free.text.chars().collect();
    assert!(chars.len() > 6, "tiny model produced text: {:?}", free.text);
    let stop: String = chars[3..5].iter().collect();
    let before: String = free.text[..free.text.find(&stop).unwrap()].to_string();
    let params = GenerateParams { stop: vec![stop.clone()], ..greedy(40) };
    let model = common::tiny();
    let mut session = model.session(SessionOptions::default()).unwrap();
    let ids = model.tokenizer().encode("Stop test").unwrap();
    let mut streamed = String::new();
    let done = generate(&mut session, &ids, &params, &CancelToken::new(), &mut |p| streamed.push_str(p)).unwrap();
    assert_eq!(done.finish_reason, FinishReason::Stop);
    assert_eq!(done.stop_string.as_deref(), Some(stop.as_str()));
    assert_eq!(done.text, before);
    assert_eq!(streamed, before, "no part of the stop string reached the stream");
}

#[test]
fn prompt_longer_than_context_is_a_typed_error_and_keeps_state() {
    let model = common::tiny();
    let mut session = model.session(SessionOptions { context_size: 64, ..Default::default() }).unwrap();
    let first = model.tokenizer().encode("A short start.").unwrap();
    generate(&mut session, &first, &greedy(3), &CancelToken::new(), &mut |_| {}).unwrap();
    let before = session.tokens().to_vec();
    let long: Vec<u32> = (0..100).map(|i| 1000 + i).collect();
    match generate(&mut session, &long, &greedy(3), &CancelToken::new(), &mut |_| {}) {
        Err(Error::ContextOverflow { needed, limit }) => {
            assert_eq!(limit, 64);
            assert_eq!(needed, before.len() + 100);
        }
        other => panic!("expected ContextOverflow, got {other:?}"),
    }
    assert_eq!(session.tokens(), &before[..], "failed call left the session as it was");
}

#[test]
fn decoding_into_a_full_context_finishes_with_context_full() {
    let model = common::tiny();
    let mut session = model.session(SessionOptions { context_size: 20, ..Default::default() }).unwrap();
    let ids: Vec<u32> = (0..15).map(|i| 2000 + i).collect();
    let done = generate(&mut session, &ids, &greedy(100), &CancelToken::new(), &mut |_| {}).unwrap();
    assert_eq!(done.finish_reason, FinishReason::ContextFull);
    assert_eq!(session.token_count(), 20);
    assert_eq!(done.token_ids.len(), 6, "15 prompt + 5 decoded fill 20; the 6th sampled token has no room");
}

#[test]
fn invalid_inputs_are_rejected() {
    let model = common::tiny();
    let mut session = model.session(SessionOptions::default()).unwrap();
    let cancel = CancelToken::new();
    assert!(matches!(
        generate(&mut session, &[60000], &greedy(3), &cancel, &mut |_| {}),
        Err(Error::InvalidToken { id: 60000, .. })
    ));
    assert!(matches!(
        generate(&mut session, &[], &greedy(3), &cancel, &mut |_| {}),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(matches!(
        generate(&mut session, &[5], &greedy(0), &cancel, &mut |_| {}),
        Err(Error::InvalidParameter { name: "max_tokens", .. })
    ));
    let bad = GenerateParams { sampling: SamplingParams { top_p: 1.5, ..SamplingParams::default() }, ..greedy(3) };
    assert!(matches!(
        generate(&mut session, &[5], &bad, &cancel, &mut |_| {}),
        Err(Error::InvalidParameter { name: "top_p", .. })
    ));
    assert_eq!(session.token_count(), 0);
}

#[test]
fn rewind_then_regenerate_gives_the_same_continuation() {
    let model = common::tiny();
    let ids = model.tokenizer().encode("Rewind me please").unwrap();
    let mut session = model.session(SessionOptions::default()).unwrap();
    let first = generate(&mut session, &ids, &greedy(10), &CancelToken::new(), &mut |_| {}).unwrap();
    session.rewind(2).unwrap();
    assert_eq!(session.token_count(), 2);
    let again = generate(&mut session, &ids[2..], &greedy(10), &CancelToken::new(), &mut |_| {}).unwrap();
    assert_eq!(first.token_ids, again.token_ids, "cache cut at 2 tokens continues exactly as a fresh run");
    assert!(session.rewind(1000).is_err());
}

#[test]
fn second_chat_turn_reuses_the_first_turns_cache() {
    let model = common::tiny();
    let mut chat = Chat::new(model.session(SessionOptions::default()).unwrap(), None).unwrap();
    let cancel = CancelToken::new();
    let t1 = chat.send("Hi there!", &greedy(8), &cancel, &mut |_| {}).unwrap();
    assert_eq!(t1.cached_tokens, 0);
    let t2 = chat.send("And again?", &greedy(8), &cancel, &mut |_| {}).unwrap();
    let first_prompt = t1.prompt_token_ids.len();
    assert!(
        t2.cached_tokens >= first_prompt,
        "turn 2 reused {} tokens, turn 1 prompt was {first_prompt}",
        t2.cached_tokens
    );
    let rendered = model.chat_template().render(&chat.messages()[..3], true).unwrap();
    let full_prompt = model.tokenizer().encode(&rendered).unwrap();
    assert_eq!(t2.cached_tokens + t2.timings.prefill_tokens, full_prompt.len());
    assert!(t2.timings.prefill_tokens < full_prompt.len() - first_prompt, "only the new turn was evaluated");
    assert_eq!(chat.messages().len(), 4);
    assert_eq!(&full_prompt[..], &chat.session().tokens()[..full_prompt.len()]);
}

#[test]
fn failed_chat_turn_leaves_the_conversation_unchanged() {
    let model = common::tiny();
    let mut chat =
        Chat::new(model.session(SessionOptions { context_size: 80, ..Default::default() }).unwrap(), None).unwrap();
    let cancel = CancelToken::new();
    chat.send("Hi", &greedy(4), &cancel, &mut |_| {}).unwrap();
    let messages = chat.messages().to_vec();
    let long = "word ".repeat(200);
    assert!(matches!(chat.send(&long, &greedy(4), &cancel, &mut |_| {}), Err(Error::ContextOverflow { .. })));
    assert_eq!(chat.messages(), &messages[..]);
    chat.send("Still here?", &greedy(4), &cancel, &mut |_| {}).unwrap();
}

#[test]
fn cancel_from_another_thread_stops_generation() {
    let model = common::tiny();
    let mut session = model.session(SessionOptions::default()).unwrap();
    let ids = model.tokenizer().encode("Keep talking").unwrap();
    let cancel = CancelToken::new();
    let (tx, rx) = mpsc::channel::<()>();
    let (ack_tx, ack_rx) = mpsc::channel::<()>();
    let remote = cancel.clone();
    let canceller = std::thread::spawn(move || {
        rx.recv().unwrap();
        remote.cancel();
        ack_tx.send(()).unwrap();
    });
    let mut pieces = 0;
    let params = GenerateParams { max_tokens: 200, sampling: SamplingParams::greedy(), stop: vec![] };
    let done = generate(&mut session, &ids, &params, &cancel, &mut |_| {
        pieces += 1;
        if pieces == 2 {
            // Ask the other thread to cancel and wait until it has.
            tx.send(()).unwrap();
            ack_rx.recv().unwrap();
        }
    })
    .unwrap();
    canceller.join().unwrap();
    assert_eq!(done.finish_reason, FinishReason::Cancelled);
    assert!(done.token_ids.len() < 10, "stopped right after the cancel: {} tokens", done.token_ids.len());
}

#[test]
fn cancelled_before_start_evaluates_nothing() {
    let model = common::tiny();
    let mut session = model.session(SessionOptions::default()).unwrap();
    let cancel = CancelToken::new();
    cancel.cancel();
    let done = generate(&mut session, &[10, 11, 12], &greedy(5), &cancel, &mut |_| {}).unwrap();
    assert_eq!(done.finish_reason, FinishReason::Cancelled);
    assert!(done.token_ids.is_empty());
    assert_eq!(session.token_count(), 0, "a cancelled prefill leaves no partial prompt");
}

#[test]
fn sessions_on_two_threads_share_one_model() {
    let model = common::tiny();
    let ids = model.tokenizer().encode("Parallel").unwrap();
    let expected = run(&greedy(12), "Parallel").token_ids;
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let model = model.clone();
            let ids = ids.clone();
            std::thread::spawn(move || {
                let mut s = model.session(SessionOptions::default()).unwrap();
                generate(&mut s, &ids, &greedy(12), &CancelToken::new(), &mut |_| {}).unwrap().token_ids
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), expected);
    }
}

#[test]
fn summarize_rejects_text_longer_than_the_context() {
    let model = common::tiny();
    let mut session = model.session(SessionOptions::default()).unwrap();
    let long = "The same sentence again. ".repeat(100);
    match pocketlm::summarize(&mut session, &long, &greedy(16), &CancelToken::new(), &mut |_| {}) {
        Err(Error::ContextOverflow { needed, limit }) => assert!(needed > limit),
        other => panic!("expected ContextOverflow, got {other:?}"),
    }
    assert!(matches!(
        pocketlm::summarize(&mut session, "   ", &greedy(16), &CancelToken::new(), &mut |_| {}),
        Err(Error::InvalidParameter { name: "text", .. })
    ));
    let done =
        pocketlm::summarize(&mut session, "A short text about cats.", &greedy(8), &CancelToken::new(), &mut |_| {})
            .unwrap();
    assert!(!done.token_ids.is_empty());
}

#[test]
fn tiny_model_output_is_varied_text() {
    // Guards the other tests' premises: the random model emits many distinct tokens and text.
    let done = run(&greedy(40), "Once upon a time");
    let distinct: std::collections::HashSet<_> = done.token_ids.iter().collect();
    println!("{:?} {:?}", done.text, done.token_ids);
    assert!(distinct.len() > 10, "{:?}", done.token_ids);
}

#[test]
fn forked_sessions_continue_independently_from_a_shared_prefix() {
    let model = common::tiny();
    let tok = model.tokenizer();
    let prefix = tok.encode("A shared system prompt.").unwrap();
    let (a, b) = (tok.encode(" First question").unwrap(), tok.encode(" Second one").unwrap());
    let mut base = model.session(SessionOptions::default()).unwrap();
    base.prefill(&prefix, &CancelToken::new()).unwrap();
    let mut fork_a = base.fork().unwrap();
    let mut fork_b = base.fork().unwrap();
    let got_a = generate(&mut fork_a, &a, &greedy(10), &CancelToken::new(), &mut |_| {}).unwrap();
    let got_b = generate(&mut fork_b, &b, &greedy(10), &CancelToken::new(), &mut |_| {}).unwrap();
    assert_eq!(got_a.cached_tokens, prefix.len(), "the prefix was not evaluated again");
    let fresh = |suffix: &[u32]| {
        let ids: Vec<u32> = prefix.iter().chain(suffix).copied().collect();
        let mut s = model.session(SessionOptions::default()).unwrap();
        generate(&mut s, &ids, &greedy(10), &CancelToken::new(), &mut |_| {}).unwrap().token_ids
    };
    assert_eq!(got_a.token_ids, fresh(&a));
    assert_eq!(got_b.token_ids, fresh(&b));
    assert_eq!(base.tokens(), &prefix[..], "forks do not change the original");
}
