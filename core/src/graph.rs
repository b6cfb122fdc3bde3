//! The decoder graph in tract: load, check its interface, optimise, and run one step.

use std::path::Path;
use std::sync::Arc;

use tract_linalg::multithread::Executor;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::format_err;

use crate::attention::LayerCache;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::interface::{check_interface, find_slots, Slots};
use crate::kv_cache::KvPrecision;
use crate::rewrite::{
    fuse_attention, fuse_residual_norms, fuse_rope, fuse_shared_input_linears, fuse_swiglu, last_position_logits,
    sequence_major_attention, share_embedding_table, untie_shared_constants,
};

/// The optimised, runnable decoder, shared by all sessions of a model.
#[derive(Debug)]
pub struct DecoderGraph {
    plan: Arc<TypedRunnableModel>,
    slots: Slots,
    vocab_size: usize,
    executor: Executor,
    weight_bytes: usize,
}

/// Per-session tract state: scratch buffers and, inside the attention ops, the KV cache.
/// Cloning it forks the session (caches are copied).
#[derive(Debug, Clone)]
pub struct GraphState(TypedSimpleState);

impl GraphState {
    fn layer_caches(&mut self) -> impl Iterator<Item = &mut LayerCache> {
        self.0.op_states.iter_mut().filter_map(|s| s.as_mut()?.downcast_mut::<LayerCache>())
    }

    /// Holds every layer's cache at `precision` (a fresh state's caches are empty).
    pub fn set_kv_precision(&mut self, precision: KvPrecision) {
        self.layer_caches().for_each(|c| {
            c.set_precision(precision);
        });
    }

    /// Keeps the first `len` positions of every layer's cache.
    pub fn truncate(&mut self, len: usize) {
        self.layer_caches().for_each(|c| c.truncate(len));
    }

    /// Bytes held by the KV cache of all layers.
    pub fn cache_bytes(&self) -> usize {
        self.0.op_states.iter().filter_map(|s| s.as_ref()?.downcast_ref::<LayerCache>()).map(LayerCache::bytes).sum()
    }
}

/// A graph error: what failed and tract's reason.
fn graph_err(what: &str, e: TractError) -> Error {
    Error::Graph(format!("{what}: {e:#}"))
}

/// tract's typed model of the parsed `proto` (files relative to `dir`), checked against `config`.
/// `proto` is dropped once parsed, before type analysis allocates.
fn parse_and_type(
    onnx: &tract_onnx::Onnx,
    proto: tract_onnx::pb::ModelProto,
    dir: Option<&str>,
    config: &ModelConfig,
    lap: &dyn Fn(&str),
) -> Result<TypedModel> {
    let parsed = onnx.parse(&proto, dir).map_err(|e| graph_err("cannot parse the ONNX graph", e))?;
    drop(proto);
    if !parsed.unresolved_inputs.is_empty() {
        return Err(Error::Graph(format!("unresolved inputs {:?}", parsed.unresolved_inputs)));
    }
    check_interface(&parsed.model, config)?;
    lap("parsed ONNX");
    let typed = parsed.model.into_typed().map_err(|e| graph_err("type analysis failed", e))?;
    // Type analysis leaves freed scratch: return it before the rewrites allocate.
    crate::memory::release_freed_heap();
    lap("typed");
    Ok(typed)
}

impl DecoderGraph {
    /// Loads `path`, checks it is a causal LM matching `config`, and prepares it to run on
    /// `threads` threads.
    pub fn load(path: &Path, config: &ModelConfig, threads: usize, all_logits: bool) -> Result<Self> {
        let started = std::time::Instant::now();
        let lap = |what: &str| log::debug!("load: {what} at {:.0} ms", started.elapsed().as_secs_f64() * 1e3);
        let mut onnx = tract_onnx::onnx();
        onnx.provider = Arc::new(crate::external::Reader);
        crate::nbits::register(&mut onnx);
        crate::table::register(&mut onnx);
        let cannot_parse = |e| graph_err(&format!("cannot parse {} as ONNX", path.display()), e);
        let mut proto = onnx.proto_model_for_path(path).map_err(cannot_parse)?;
        let detached = crate::weights::detach_weights(&mut proto).map_err(cannot_parse)?;
        let tables = crate::table::detach_tables(&mut proto, &detached).map_err(cannot_parse)?;
        log::debug!("{} quantized matmuls ({tables} token tables among them): read beside the parser", detached.len());
        let dir = path.parent().and_then(Path::to_str);
        // The quantized weights (most of the file) are read and repacked on a second thread while
        // tract parses and analyses the graph, which needs only their shapes.
        let (typed, weights) = std::thread::scope(|scope| {
            let loading = scope.spawn(|| {
                let weights = detached.load(dir);
                // The read buffers this thread freed go back before the graph's peak meets the
                // weights' (default model, with the tokenizer's: peak RSS 150 -> 143–146 MiB).
                crate::memory::release_freed_heap();
                weights
            });
            let typed = parse_and_type(&onnx, proto, dir, config, &lap);
            let weights = loading.join().unwrap_or_else(|_| Err(format_err!("loading weights panicked")));
            (typed, weights)
        });
        let mut typed = typed?;
        let weights = weights.map_err(|e| graph_err("reading quantized weights", e))?;
        let packed = crate::nbits::pack(&mut typed, weights).map_err(|e| graph_err("packing quantized weights", e))?;
        let tables = crate::table::pack(&mut typed, &packed).map_err(|e| graph_err("packing token tables", e))?;
        log::debug!("packed {} quantized matmuls, {tables} token tables", packed.iter().flatten().count());
        // The graph's ops hold the weights now; a reference left here would make the rewrites
        // below copy each weight they change.
        drop(packed);
        lap("packed");
        if !all_logits {
            last_position_logits(&mut typed, &config.io.logits).map_err(|e| graph_err("slicing logits", e))?;
        }
        fuse_attention(&mut typed, config).map_err(|e| graph_err("fusing attention", e))?;
        let rope = fuse_rope(&mut typed, config).map_err(|e| graph_err("fusing rope", e))?;
        log::debug!("fused {rope} rotary embeddings");
        let shared = share_embedding_table(&mut typed).map_err(|e| graph_err("sharing the embedding table", e))?;
        log::debug!("token lookup reads the LM head's codes: {shared}");
        let swiglu = fuse_swiglu(&mut typed).map_err(|e| graph_err("fusing feed-forward blocks", e))?;
        let fused = fuse_shared_input_linears(&mut typed).map_err(|e| graph_err("fusing products", e))?;
        log::debug!("{swiglu} SwiGLU blocks fused; {fused} groups of products share their quantized input");
        // tract's own `transformers_detect_all` (in-state or unfolded cache) was measured on this
        // graph: no gain over the plain optimiser, and its cache still concatenates every step.
        // The fused ops above own the cache instead and append in place.
        let weight_bytes = weight_bytes_per_step(&typed);
        lap("rewritten");
        let mut optimized = typed.into_optimized().map_err(|e| graph_err("optimisation failed", e))?;
        lap("optimised");
        untie_shared_constants(&mut optimized).map_err(|e| graph_err("packing shared weights", e))?;
        let sequence_major =
            sequence_major_attention(&mut optimized).map_err(|e| graph_err("rewiring attention", e))?;
        log::debug!("{sequence_major} attention blocks read their products' layout");
        let norms = fuse_residual_norms(&mut optimized).map_err(|e| graph_err("fusing norms", e))?;
        log::debug!("{norms} norms fused with their scale (and residual add)");
        let slots = find_slots(&optimized, config)?;
        let executor = if threads > 1 {
            // tract only splits a matrix product across the pool above a size gate (64 panels or
            // 2^21 multiply-adds), which leaves every per-layer decode matvec on one thread. Even
            // a 576×576 product is faster on two cores (2-thread decode, fp32: 52–57 → 59–64
            // tok/s; q4: every product threaded is the best of the settings tried). The gate is tract's
            // process-wide setting and is consulted only under a multithread executor, so
            // single-threaded models are unaffected.
            tract_linalg::multithread::set_threading_panel_threshold(0);
            tract_linalg::multithread::set_threading_mac_threshold(0);
            Executor::multithread_with_name(threads, "pocketlm")
        } else {
            Executor::SingleThread
        };
        let options = RunOptions { executor: Some(executor.clone()), ..Default::default() };
        let plan = optimized.into_runnable_with_options(&options).map_err(|e| graph_err("cannot plan the model", e))?;
        lap("planned");
        if log::log_enabled!(log::Level::Trace) {
            let mut ops: Vec<(String, usize)> = vec![];
            for node in plan.model().nodes() {
                let name = node.op.name().to_string();
                match ops.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, count)) => *count += 1,
                    None => ops.push((name, 1)),
                }
            }
            log::trace!("plan ops: {ops:?}");
        }
        let vocab_size = config.hparams.vocab_size;
        log::info!(
            "decoder graph ready: {} layers, vocab {vocab_size}, {threads} thread(s), 4-bit kernel {}",
            config.kv_cache.num_layers,
            crate::q4::kernel_name()
        );
        Ok(DecoderGraph { plan, slots, vocab_size, executor, weight_bytes })
    }

    /// Bytes of weights one step reads (see [`weight_bytes_per_step`]).
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// Fresh per-session state.
    pub fn state(&self) -> Result<GraphState> {
        Ok(GraphState(self.plan.spawn().map_err(Error::inference)?))
    }

    /// Runs `ids` at positions `start..` (the state's caches must hold exactly `start` positions),
    /// appending their keys/values to the caches. Returns the logits of the last position, or of
    /// every position (row-major `[ids.len(), vocab]`) for a graph loaded with `all_logits`.
    pub fn step(&self, state: &mut GraphState, start: usize, ids: &[u32]) -> Result<Vec<f32>> {
        let s = &self.slots;
        let n = ids.len();
        let ids64: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let pos: Vec<i64> = (start as i64..(start + n) as i64).collect();
        let mut inputs: TVec<TValue> = tvec![tensor_2d(ids64)?, tensor_2d(pos)?];
        if s.input_ids != 0 {
            inputs.swap(0, 1);
        }
        // The whole step runs on a pool thread: the serial ops between two matrix products then
        // share a core with the pool instead of a third thread waking it and waiting on it
        // (measured with 2 threads: decode 58 → 67 tok/s fp32, 102 → 134 q4).
        let mut outputs = match &self.executor {
            Executor::MultiThread(pool) => pool.install(|| state.0.run(inputs)),
            _ => state.0.run(inputs),
        }
        .map_err(Error::inference)?;
        let logits = std::mem::replace(&mut outputs[s.logits], tensor0(0f32).into_tvalue());
        let view = logits.to_plain_array_view::<f32>().map_err(Error::inference)?;
        let flat = view.as_slice().ok_or_else(|| Error::Inference("logits are not contiguous".into()))?;
        if flat.len() != self.vocab_size && flat.len() != n * self.vocab_size {
            return Err(Error::Inference(format!("logits have {} values, expected {}", flat.len(), self.vocab_size)));
        }
        Ok(flat.to_vec())
    }
}

fn tensor_2d(values: Vec<i64>) -> Result<TValue> {
    let n = values.len();
    Ok(Tensor::from_shape(&[1, n], &values).map_err(Error::inference)?.into_tvalue())
}

/// Bytes of weights a decode step reads: every 4-bit matrix and every constant, except tables
/// only looked up by `Gather` (one row per token). Dense weights are counted at their stored size.
fn weight_bytes_per_step(model: &TypedModel) -> usize {
    use tract_onnx::tract_core::ops::array::Gather;
    use tract_onnx::tract_core::ops::konst::Const;
    model
        .nodes()
        .iter()
        .map(|node| {
            if let Some(linear) = node.op_as::<crate::qlinear::QLinear>() {
                return linear.weights.iter().map(|w| w.bytes()).sum();
            }
            if let Some(block) = node.op_as::<crate::swiglu::SwiGlu>() {
                return block.weights().iter().map(|w| w.bytes()).sum();
            }
            let Some(konst) = node.op_as::<Const>() else { return 0 };
            let only_gathered =
                node.outputs[0].successors.iter().all(|s| model.node(s.node).op_is::<Gather>() && s.slot == 0);
            if only_gathered {
                return 0;
            }
            let t = konst.val();
            t.volume() * t.datum_type().size_of()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(model: &str) -> Vec<String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models").join(model);
        let config = ModelConfig::load(&dir).unwrap();
        let graph = DecoderGraph::load(&dir.join("model.onnx"), &config, 1, false).unwrap();
        graph.plan.model().nodes().iter().map(|n| n.op.name().to_string()).collect()
    }

    #[test]
    fn quantized_weights_are_packed_and_the_lookup_reads_the_lm_head() {
        let ops = ops("tiny-q4");
        // The head is split (models/pipeline/head.py): an 8-bit and a 4-bit part, each read by
        // its lookup, the 4-bit rows with a low-rank part (rows of its f32 factor A gathered).
        // Per layer q+k+v as one op, o and down, and the gated feed-forward block's gate and up as
        // one `SwiGlu`; the head's two parts.
        assert_eq!(ops.iter().filter(|o| *o == "QLinear").count(), 2 * 3 + 2, "{ops:?}");
        assert_eq!(ops.iter().filter(|o| *o == "SwiGlu").count(), 2, "{ops:?}");
        assert!(!ops.iter().any(|o| o == "Sigmoid" || o == "Silu"), "{ops:?}");
        assert_eq!(ops.iter().filter(|o| *o == "EmbedQ8").count(), 1);
        assert_eq!(ops.iter().filter(|o| *o == "EmbedQ4").count(), 1);
        assert_eq!(ops.iter().filter(|o| *o == "Gather").count(), 1, "{ops:?}");
        // Attention reads the products' layout and rotates q and k itself (attention_layout.rs).
        assert_eq!(ops.iter().filter(|o| *o == "CachedAttention").count(), 2, "{ops:?}");
        // Two norms per layer and the final one, each with its scale and residual add.
        assert_eq!(ops.iter().filter(|o| *o == "ResidualNorm").count(), 2 * 2 + 1, "{ops:?}");
        assert!(!ops.iter().any(|o| o == "RmsNorm"), "{ops:?}");
        let gone =
            ["PendingNBits", "PendingTable", "GatherCodes", "GatherBlockQuantized", "Rope", "MoveAxis", "Reshape"];
        assert!(!ops.iter().any(|o| gone.contains(&o.as_str())), "{ops:?}");
    }

    #[test]
    fn a_step_reads_the_weights_of_every_op_that_holds_some() {
        use crate::q4::Q4Matrix;
        use crate::qblock::Blocks;
        use crate::qlinear::{QLinear, QWeight};
        use crate::swiglu::SwiGlu;
        let weight = |n: usize, k: usize| {
            let blocks = Blocks::new(n, k, vec![1.0; n * k / 32], None).unwrap();
            Arc::new(QWeight::Q4(Q4Matrix::new(&vec![3u8; n * k], blocks).unwrap()))
        };
        let (q, k, gate, up, down) = (weight(32, 32), weight(16, 32), weight(64, 32), weight(64, 32), weight(32, 64));
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, 2, 32])).unwrap();
        let qk = model.wire_node("qk", QLinear { weights: vec![q.clone(), k.clone()] }, &[x]).unwrap();
        let ffn = model.wire_node("ffn", SwiGlu::new(gate.clone(), up.clone()), &[qk[0]]).unwrap();
        model.wire_node("down", QLinear::new(down.clone()), &ffn).unwrap();
        let all = [q, k, gate, up, down].iter().map(|w| w.bytes()).sum::<usize>();
        assert_eq!(weight_bytes_per_step(&model), all);
    }

    #[test]
    fn an_fp32_model_keeps_its_own_lookup() {
        let ops = ops("tiny");
        assert!(ops.iter().any(|o| o == "Gather") && !ops.iter().any(|o| o == "EmbedQ8" || o == "QLinear"));
        assert_eq!(ops.iter().filter(|o| *o == "ResidualNorm").count(), 2 * 2 + 1, "{ops:?}");
    }
}
