//! The bindings' Rust side on the committed tiny model: error mapping, defaults, streaming
//! order, cancel on drop, busy chats, panics caught. (The Kotlin and C tests in tests/ exercise
//! the same API through the real boundary on the default model.)

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pocketlm_ffi::{
    ChatRole, Completion, FinishReason, GenerationListener, GenerationParams, KvCache, LoadOptions, PocketError,
    PocketModel,
};

fn tiny() -> Arc<PocketModel> {
    tiny_with(KvCache::default())
}

fn tiny_with(kv_cache: KvCache) -> Arc<PocketModel> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tiny");
    PocketModel::load(LoadOptions {
        model_dir: dir.display().to_string(),
        threads: 1,
        context_size: 128,
        kv_cache: Some(kv_cache),
    })
    .expect("tiny model loads")
}

fn greedy(max_tokens: u32) -> GenerationParams {
    GenerationParams { max_tokens, temperature: 0.0, ..GenerationParams::default() }
}

/// Records listener calls in order.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
    threads: Mutex<Vec<std::thread::ThreadId>>,
    completion: Mutex<Option<Completion>>,
    error: Mutex<Option<PocketError>>,
    panic_on_token: bool,
}

impl GenerationListener for Recorder {
    fn on_token(&self, text: String) {
        self.threads.lock().unwrap().push(std::thread::current().id());
        self.events.lock().unwrap().push(format!("token:{text}"));
        assert!(!self.panic_on_token, "listener bug");
    }
    fn on_complete(&self, completion: Completion) {
        self.events.lock().unwrap().push("complete".into());
        *self.completion.lock().unwrap() = Some(completion);
    }
    fn on_error(&self, error: PocketError) {
        self.events.lock().unwrap().push("error".into());
        *self.error.lock().unwrap() = Some(error);
    }
}

impl Recorder {
    fn text(&self) -> String {
        self.events.lock().unwrap().iter().filter_map(|e| e.strip_prefix("token:")).collect()
    }
}

#[test]
fn defaults_match_the_engine() {
    let p = GenerationParams::default();
    let core = pocketlm::GenerateParams::default();
    assert_eq!(p.max_tokens as usize, core.max_tokens);
    assert_eq!(p.temperature, core.sampling.temperature);
    assert_eq!(p.top_k as usize, core.sampling.top_k);
    assert_eq!(p.seed, None);
}

#[test]
fn engine_errors_map_to_the_small_public_error() {
    let missing = PocketModel::load(LoadOptions {
        model_dir: "/nonexistent".into(),
        threads: 1,
        context_size: 0,
        kv_cache: None,
    });
    assert!(matches!(missing, Err(PocketError::Model { .. })), "{:?}", missing.err());
    let model = tiny();
    let bad = GenerationParams { top_p: 2.0, ..GenerationParams::default() };
    assert!(matches!(model.generate("hi".into(), bad), Err(PocketError::InvalidInput { .. })));
    let long = "word ".repeat(500);
    match model.summarize(long, greedy(8)) {
        Err(PocketError::ContextOverflow { needed, limit }) => assert!(needed > limit && limit == 128),
        other => panic!("expected ContextOverflow, got {other:?}"),
    }
    let too_big = PocketModel::load(LoadOptions {
        model_dir: model.info().model_dir,
        threads: 1,
        context_size: model.info().context_length + 1,
        kv_cache: None,
    });
    assert!(matches!(too_big, Err(PocketError::InvalidInput { .. })));
}

#[test]
fn the_kv_cache_precision_reaches_every_conversation() {
    let turn = |kv: KvCache| {
        let model = tiny_with(kv);
        assert_eq!(model.info().kv_cache, kv);
        let chat = model.chat(None).unwrap();
        let reply = chat.send("Tell me a story".into(), greedy(12)).unwrap();
        assert!(reply.completion_tokens > 0);
        (chat.cache_bytes() as f64, chat.token_count() as f64)
    };
    let (f16, tokens) = turn(KvCache::F16);
    let (f32, _) = turn(KvCache::F32);
    let (q8, q8_tokens) = turn(KvCache::Q8);
    assert!(tokens > 0.0 && q8_tokens > 0.0);
    // Capacity grows in the same steps whatever the element type, so bytes scale with its size:
    // int8 adds one f32 scale per position and head of `dim` values (8 in the tiny model).
    let dim = 8.0;
    assert_eq!(f32, 2.0 * f16);
    assert_eq!(q8, f16 * (dim + 4.0) / (2.0 * dim), "q8 {q8} B against f16 {f16} B");
}

#[test]
fn a_stream_delivers_tokens_then_exactly_one_completion_off_the_caller_thread() {
    let model = tiny();
    let rec = Arc::new(Recorder::default());
    let handle = model.clone().generate_stream("Hello".into(), greedy(12), rec.clone()).unwrap();
    handle.join();
    assert!(handle.is_finished());
    let events = rec.events.lock().unwrap().clone();
    assert_eq!(events.last().map(String::as_str), Some("complete"));
    assert_eq!(events.iter().filter(|e| !e.starts_with("token:")).count(), 1);
    let done = rec.completion.lock().unwrap().clone().unwrap();
    assert_eq!(done.text, rec.text());
    assert_eq!(done.text, model.generate("Hello".into(), greedy(12)).unwrap().text);
    assert!(rec.threads.lock().unwrap().iter().all(|t| *t != std::thread::current().id()));
}

#[test]
fn dropping_the_handle_cancels_the_stream() {
    let model = tiny();
    let rec = Arc::new(Recorder::default());
    let params = GenerationParams { max_tokens: 100, ..greedy(100) };
    let handle = model.clone().generate_stream("Once upon a time".into(), params, rec.clone()).unwrap();
    drop(handle);
    while rec.completion.lock().unwrap().is_none() && rec.error.lock().unwrap().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let done = rec.completion.lock().unwrap().clone().unwrap();
    assert_eq!(done.finish_reason, FinishReason::Cancelled);
    assert!(done.completion_tokens < 100);
}

#[test]
fn a_panicking_listener_ends_the_stream_with_an_internal_error() {
    let model = tiny();
    let rec = Arc::new(Recorder { panic_on_token: true, ..Recorder::default() });
    model.clone().generate_stream("Hello".into(), greedy(8), rec.clone()).unwrap().join();
    assert_eq!(rec.events.lock().unwrap().last().map(String::as_str), Some("error"));
    let error = rec.error.lock().unwrap().clone();
    match error {
        Some(PocketError::Internal { reason }) => assert!(reason.contains("listener bug"), "{reason}"),
        other => panic!("expected Internal, got {other:?}"),
    }
}

#[test]
fn a_chat_replies_one_turn_at_a_time_and_keeps_history() {
    let model = tiny();
    let chat = model.chat(Some("Be brief.".into())).unwrap();
    let rec = Arc::new(Recorder::default());
    let handle = chat.clone().send_stream("Hello".into(), greedy(40), rec.clone()).unwrap();
    // While the first reply may still run, a second send is either refused as busy or, if the
    // first already ended, accepted; it never interleaves.
    match chat.send("Again".into(), greedy(4)) {
        Err(PocketError::InvalidState { .. }) | Ok(_) => {}
        Err(e) => panic!("unexpected {e:?}"),
    }
    handle.join();
    chat.send("One more".into(), greedy(4)).unwrap();
    let roles: Vec<ChatRole> = chat.messages().iter().map(|m| m.role).collect();
    assert_eq!(roles[0], ChatRole::System);
    assert_eq!(roles.len() % 2, 1);
    assert!(roles[1..].chunks(2).all(|p| p == [ChatRole::User, ChatRole::Assistant]));
    assert!(chat.token_count() > 0);
}
