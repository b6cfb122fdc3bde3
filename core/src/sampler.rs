//! Choosing the next token from logits: a chain of stages (llama.cpp order) ending in a pick.
//!
//! repetition penalty -> top-k -> top-p -> min-p -> temperature -> greedy or seeded random draw.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// How to pick the next token. `Default` is a mild, focused sampling; [`SamplingParams::greedy`]
/// is deterministic argmax.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 = off.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability sums to `top_p`; 1 = off.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 = off.
    pub min_p: f32,
    /// Divide (positive) or multiply (negative) logits of recently seen tokens by this; 1 = off.
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    pub repeat_window: usize,
    /// Seed of the random draw; `None` seeds from the OS.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.3,
            top_k: 40,
            top_p: 0.9,
            min_p: 0.05,
            repeat_penalty: 1.1,
            repeat_window: 64,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Deterministic argmax, no penalty.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_window: 0,
            seed: None,
        }
    }

    /// Rejects out-of-range values with [`Error::InvalidParameter`].
    pub fn validate(&self) -> Result<()> {
        let finite = |name, v: f32| {
            if v.is_finite() {
                Ok(())
            } else {
                Err(Error::param(name, format!("{v} is not a finite number")))
            }
        };
        finite("temperature", self.temperature)?;
        finite("top_p", self.top_p)?;
        finite("min_p", self.min_p)?;
        finite("repeat_penalty", self.repeat_penalty)?;
        if !(0.0..=100.0).contains(&self.temperature) {
            return Err(Error::param("temperature", format!("{} is not in 0..=100", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::param("top_p", format!("{} is not in (0, 1]", self.top_p)));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(Error::param("min_p", format!("{} is not in [0, 1]", self.min_p)));
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty <= 10.0) {
            return Err(Error::param("repeat_penalty", format!("{} is not in (0, 10]", self.repeat_penalty)));
        }
        Ok(())
    }
}

/// Token ids with their scores, the working set of the chain.
#[derive(Debug, Clone)]
struct Candidates {
    ids: Vec<u32>,
    scores: Vec<f32>,
}

impl Candidates {
    fn from_logits(logits: &[f32]) -> Self {
        Candidates { ids: (0..logits.len() as u32).collect(), scores: logits.to_vec() }
    }

    /// Keeps the `k` best (any order), in linear time; a no-op when there are at most `k`.
    fn select_top(&mut self, k: usize) {
        if k == 0 || k >= self.ids.len() {
            return;
        }
        let mut order: Vec<usize> = (0..self.ids.len()).collect();
        order.select_nth_unstable_by(k - 1, |&a, &b| self.better(a, b));
        order.truncate(k);
        self.ids = order.iter().map(|&i| self.ids[i]).collect();
        self.scores = order.iter().map(|&i| self.scores[i]).collect();
    }

    /// Orders candidates `a`, `b` best first: higher score, then lower id.
    fn better(&self, a: usize, b: usize) -> std::cmp::Ordering {
        self.scores[b].total_cmp(&self.scores[a]).then(self.ids[a].cmp(&self.ids[b]))
    }

    /// Sorts by score, best first (stable on ties: lower id first).
    fn sort_desc(&mut self) {
        let mut order: Vec<usize> = (0..self.ids.len()).collect();
        order.sort_by(|&a, &b| self.better(a, b));
        self.ids = order.iter().map(|&i| self.ids[i]).collect();
        self.scores = order.iter().map(|&i| self.scores[i]).collect();
    }

    fn truncate(&mut self, n: usize) {
        self.ids.truncate(n.max(1));
        self.scores.truncate(n.max(1));
    }

    /// Softmax of the (sorted) scores.
    fn probs(&self) -> Vec<f32> {
        let max = self.scores[0];
        let exp: Vec<f32> = self.scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        exp.into_iter().map(|e| e / sum).collect()
    }
}

/// One stage of the chain.
#[derive(Debug, Clone)]
enum Stage {
    TopK(usize),
    TopP(f32),
    MinP(f32),
    Temperature(f32),
}

impl Stage {
    /// Applies to candidates sorted best first; keeps them sorted.
    fn apply(&self, c: &mut Candidates) {
        match *self {
            Stage::TopK(k) => c.truncate(k),
            Stage::TopP(p) => {
                let probs = c.probs();
                let mut sum = 0.0;
                let keep = probs
                    .iter()
                    .position(|q| {
                        sum += q;
                        sum >= p
                    })
                    .map_or(probs.len(), |i| i + 1);
                c.truncate(keep);
            }
            Stage::MinP(p) => {
                let probs = c.probs();
                let floor = probs[0] * p;
                c.truncate(probs.iter().take_while(|&&q| q >= floor).count());
            }
            Stage::Temperature(t) => c.scores.iter_mut().for_each(|s| *s /= t),
        }
    }
}

/// A configured sampler; keeps its random state across steps.
#[derive(Debug)]
pub struct Sampler {
    repeat_penalty: f32,
    repeat_window: usize,
    stages: Vec<Stage>,
    /// `None` = greedy.
    rng: Option<StdRng>,
}

impl Sampler {
    /// Builds the chain for `params` (validated).
    pub fn new(params: &SamplingParams) -> Result<Self> {
        params.validate()?;
        let mut stages = Vec::new();
        let greedy = params.temperature == 0.0;
        if !greedy {
            if params.top_k > 0 {
                stages.push(Stage::TopK(params.top_k));
            }
            if params.top_p < 1.0 {
                stages.push(Stage::TopP(params.top_p));
            }
            if params.min_p > 0.0 {
                stages.push(Stage::MinP(params.min_p));
            }
            stages.push(Stage::Temperature(params.temperature));
        }
        let rng = (!greedy).then(|| match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        });
        Ok(Sampler { repeat_penalty: params.repeat_penalty, repeat_window: params.repeat_window, stages, rng })
    }

    /// Picks the next token from `logits`; `history` is the context so far (for the penalty).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let mut logits = logits.to_vec();
        self.penalize(&mut logits, history);
        let Some(rng) = self.rng.as_mut() else {
            return argmax(&logits);
        };
        let mut c = Candidates::from_logits(&logits);
        // Top-k first narrows the set, so only k candidates get sorted.
        if let Some(Stage::TopK(k)) = self.stages.first() {
            c.select_top(*k);
        }
        c.sort_desc();
        for stage in &self.stages {
            stage.apply(&mut c);
        }
        let probs = c.probs();
        let mut r: f32 = rng.random::<f32>();
        for (id, p) in c.ids.iter().zip(&probs) {
            if r < *p {
                return *id;
            }
            r -= p;
        }
        *c.ids.last().expect("at least one candidate")
    }

    fn penalize(&self, logits: &mut [f32], history: &[u32]) {
        if self.repeat_penalty == 1.0 || self.repeat_window == 0 {
            return;
        }
        let mut seen = std::collections::HashSet::new();
        for &id in history.iter().rev().take(self.repeat_window) {
            if let Some(l) = logits.get_mut(id as usize).filter(|_| seen.insert(id)) {
                *l = if *l > 0.0 { *l / self.repeat_penalty } else { *l * self.repeat_penalty };
            }
        }
    }
}

/// Index of the largest logit (lowest index on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::{argmax, Sampler, SamplingParams};
    use crate::Error;

    fn params(temperature: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_window: 0,
            seed: Some(seed),
        }
    }

    fn histogram(p: &SamplingParams, logits: &[f32], n: usize) -> Vec<f64> {
        let mut s = Sampler::new(p).unwrap();
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..n {
            counts[s.sample(logits, &[]) as usize] += 1;
        }
        counts.into_iter().map(|c| c as f64 / n as f64).collect()
    }

    fn softmax(logits: &[f32], t: f32) -> Vec<f64> {
        let e: Vec<f64> = logits.iter().map(|l| ((l / t) as f64).exp()).collect();
        let s: f64 = e.iter().sum();
        e.into_iter().map(|x| x / s).collect()
    }

    const LOGITS: [f32; 5] = [2.0, 1.0, 0.5, 0.0, -1.0];

    #[test]
    fn draws_follow_the_softmax_distribution() {
        for t in [1.0f32, 0.5, 2.0] {
            let got = histogram(&params(t, 42), &LOGITS, 40_000);
            for (g, w) in got.iter().zip(softmax(&LOGITS, t)) {
                assert!((g - w).abs() < 0.01, "t={t}: got {got:?}, want {w}");
            }
        }
    }

    #[test]
    fn top_k_keeps_only_the_k_best() {
        let p = SamplingParams { top_k: 2, ..params(1.0, 1) };
        let got = histogram(&p, &LOGITS, 20_000);
        assert_eq!(got[2] + got[3] + got[4], 0.0);
        let want = softmax(&LOGITS[..2], 1.0);
        assert!((got[0] - want[0]).abs() < 0.015, "{got:?} vs {want:?}");
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // softmax(LOGITS) ~ [0.53, 0.19, 0.12, 0.07, 0.03]: p=0.7 needs the first two.
        let p = SamplingParams { top_p: 0.7, ..params(1.0, 2) };
        let got = histogram(&p, &LOGITS, 20_000);
        assert!(got[0] > 0.0 && got[1] > 0.0);
        assert_eq!(got[2] + got[3] + got[4], 0.0, "{got:?}");
    }

    #[test]
    fn min_p_drops_tokens_far_below_the_best() {
        // relative probabilities e^(l-2): [1, .37, .22, .14, .05]; min_p 0.2 keeps three.
        let p = SamplingParams { min_p: 0.2, ..params(1.0, 3) };
        let got = histogram(&p, &LOGITS, 20_000);
        assert!(got[2] > 0.0);
        assert_eq!(got[3] + got[4], 0.0, "{got:?}");
    }

    #[test]
    fn greedy_is_argmax_and_penalty_changes_it() {
        let mut s = Sampler::new(&SamplingParams::greedy()).unwrap();
        assert_eq!(s.sample(&LOGITS, &[0, 0, 0]), 0);
        let penalised = SamplingParams { repeat_penalty: 2.5, repeat_window: 4, ..SamplingParams::greedy() };
        let mut s = Sampler::new(&penalised).unwrap();
        // 2.0 / 2.5 = 0.8 < 1.0: token 1 wins once token 0 was seen recently...
        assert_eq!(s.sample(&LOGITS, &[0]), 1);
        // ...but not when it is outside the window.
        assert_eq!(s.sample(&LOGITS, &[0, 3, 3, 3, 3]), 0);
        // Negative logits are multiplied: -1 * 2.5 pushes token 4 further down.
        assert_eq!(argmax(&[-1.0, -1.5]), 0);
        assert_eq!(Sampler::new(&penalised).unwrap().sample(&[-1.0, -1.5], &[0]), 1);
    }

    #[test]
    fn seeds_reproduce_and_differ() {
        let seq = |seed| {
            let mut s = Sampler::new(&params(1.0, seed)).unwrap();
            (0..64).map(|_| s.sample(&LOGITS, &[])).collect::<Vec<_>>()
        };
        assert_eq!(seq(9), seq(9));
        assert_ne!(seq(9), seq(10));
    }

    #[test]
    fn out_of_range_parameters_are_rejected() {
        let bad = [
            SamplingParams { temperature: -1.0, ..SamplingParams::default() },
            SamplingParams { temperature: f32::NAN, ..SamplingParams::default() },
            SamplingParams { top_p: 0.0, ..SamplingParams::default() },
            SamplingParams { min_p: 1.5, ..SamplingParams::default() },
            SamplingParams { repeat_penalty: 0.0, ..SamplingParams::default() },
        ];
        for p in bad {
            assert!(matches!(Sampler::new(&p), Err(Error::InvalidParameter { .. })), "{p:?}");
        }
        assert!(Sampler::new(&SamplingParams::default()).is_ok());
    }
}
