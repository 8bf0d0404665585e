//! The serving engine: many requests, one model, one thread.
//!
//! A synchronous loop (vLLM's `EngineCore.step()`) owns the model and every running
//! sequence. Each step it takes new requests and aborts from its channel, admits waiting
//! requests into the running batch, and runs one forward that holds a prefill chunk of at
//! most one sequence (so a long prompt never stalls the streams already running) next to one
//! decode row for every other running sequence: every weight is read once for the whole
//! batch. Requests join and leave the batch at every step (continuous batching).
//!
//! KV memory: for models with a paged layout (GGUF on the CPU) a fixed pool of blocks is
//! shared by all sequences, each with a block table ([`crate::blocks`]). Full blocks are
//! registered by a hash of their tokens chained to their prefix, so a new prompt that starts
//! like an earlier one (a shared system prompt, the earlier turns of a conversation) takes
//! those blocks instead of computing them, and they are reported as cache hits (DeepSeek's
//! `prompt_cache_hit_tokens`). When the pool runs out, the youngest sequence is preempted:
//! its blocks are released and it recomputes them later, going on where it was. Other
//! models keep a cache per sequence, and finished sequences' caches serve as the prefix
//! cache (copied on reuse, in whole blocks, least recently used evicted first).
//!
//! Events reach each request through its own sink; a sink that returns `false` (the client
//! went away) has its sequence freed at the next step.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use seek_models::paged::{KvBlocks, Span};
use seek_models::{CausalLm, KvCache};
use seek_reasoning::Delta;
use seek_tokenizer::Tokenizer;
use seek_types::{FinishReason, TokenId, Usage};

use crate::blocks::{block_hash, BlockManager};
use crate::sequence::{Sequence, SequenceParams};
use crate::EngineError;

/// Settings of the serving engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most sequences decoded together.
    pub max_running: usize,
    /// Most requests waiting for a place in the batch; more are refused (HTTP 429).
    pub max_queue: usize,
    /// Most prompt tokens one step prefills (chunked prefill).
    pub prefill_chunk: usize,
    /// Prefix-cache granularity: hits are counted and reused in whole blocks of this size.
    pub block_size: usize,
    /// Models with a paged layout (GGUF on the CPU): positions of KV memory, shared by every
    /// sequence in blocks of `block_size`; full blocks double as the prefix cache.
    pub kv_cache_tokens: usize,
    /// Models without one: most tokens the per-sequence prefix cache keeps (0 disables it).
    pub prefix_cache_tokens: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_running: 8,
            max_queue: 64,
            prefill_chunk: 256,
            block_size: 16,
            kv_cache_tokens: 16 * 1024,
            prefix_cache_tokens: 32 * 1024,
        }
    }
}

/// One request, after its prompt has been rendered and encoded.
#[derive(Debug, Clone)]
pub struct ServeRequest {
    /// The encoded prompt.
    pub prompt: Vec<TokenId>,
    /// What to generate (`max_tokens` is capped to the context window).
    pub params: SequenceParams,
    /// Return log-probabilities: `Some(k)` gives the chosen token's and the `k` best.
    pub logprobs: Option<usize>,
}

/// The log-probability of a generated token and its best alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token id.
    pub id: TokenId,
    /// Its text (the token's own decoding).
    pub token: String,
    /// `log p` under the model's distribution before sampling settings.
    pub logprob: f32,
    /// The most likely tokens at this position: `(id, text, logprob)`, best first.
    pub top: Vec<(TokenId, String, f32)>,
}

/// Wall-clock figures of one request inside the engine.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServeTimings {
    /// From submission to admission into the batch.
    pub queued_s: f64,
    /// From submission to the first generated token.
    pub time_to_first_token_s: f64,
    /// From submission to the end.
    pub total_s: f64,
}

/// What a request hears from the engine.
#[derive(Debug, Clone)]
pub enum ServeEvent {
    /// The request entered the batch; `cached_tokens` of its prompt came from the prefix cache.
    Started {
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// Of them, tokens whose KV came from the prefix cache.
        cached_tokens: usize,
    },
    /// New text (and the tokens behind it, with log-probabilities when asked).
    Delta {
        /// Reasoning and answer text that became final.
        delta: Delta,
        /// The token generated at this step (none for the final flush).
        token: Option<TokenId>,
        /// Its log-probability, when the request asked.
        logprob: Option<TokenLogprob>,
    },
    /// The request ended.
    Finished {
        /// Why.
        finish_reason: FinishReason,
        /// The stop string that ended the request, if one did (`finish_reason` is then `Stop`).
        stop: Option<String>,
        /// Token counts (`cached_prompt_tokens` included).
        usage: Usage,
        /// Timings.
        timings: ServeTimings,
    },
    /// The request failed; no more events follow.
    Failed {
        /// What went wrong.
        message: String,
    },
}

/// Where a request's events go; returning `false` means nobody listens any more, and the
/// engine frees the sequence.
pub type Sink = Box<dyn FnMut(ServeEvent) -> bool + Send>;

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SubmitError {
    /// The queue is full; retry later.
    #[error("the server is busy: {queued} requests are waiting (limit {limit}); retry shortly")]
    QueueFull {
        /// Requests waiting.
        queued: usize,
        /// The limit.
        limit: usize,
    },
    /// The engine is shutting down or has stopped.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The request cannot be served (e.g. the prompt does not fit the context window).
    #[error("{0}")]
    Invalid(String),
}

/// A request run to its end by [`EngineHandle::complete`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    /// The chain of thought.
    pub reasoning: String,
    /// The answer.
    pub content: String,
    /// Why it ended (`None` only if the engine stopped without saying).
    pub finish_reason: Option<FinishReason>,
    /// Token counts.
    pub usage: Usage,
}

/// Why [`EngineHandle::complete`] has no completion.
#[derive(Debug, thiserror::Error)]
pub enum CompleteError {
    /// The request was not accepted.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// Generation failed.
    #[error("generation failed: {0}")]
    Failed(String),
}

/// Counters the engine keeps for metrics; read with [`EngineHandle::stats`].
#[derive(Debug, Default)]
struct Counters {
    queued: AtomicUsize,
    running: AtomicUsize,
    requests_finished: AtomicU64,
    prompt_tokens: AtomicU64,
    cached_prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    reasoning_tokens: AtomicU64,
    steps: AtomicU64,
    batched_sequences: AtomicU64,
    prefix_cache_tokens: AtomicUsize,
    kv_blocks_total: AtomicUsize,
    kv_blocks_in_use: AtomicUsize,
    preemptions: AtomicU64,
}

/// A snapshot of the engine's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineStats {
    /// Requests waiting for a place in the batch.
    pub queued: usize,
    /// Sequences in the batch.
    pub running: usize,
    /// Requests that ended (any reason).
    pub requests_finished: u64,
    /// Prompt tokens of admitted requests.
    pub prompt_tokens: u64,
    /// Of them, tokens served from the prefix cache.
    pub cached_prompt_tokens: u64,
    /// Tokens generated.
    pub generated_tokens: u64,
    /// Of them, reasoning tokens.
    pub reasoning_tokens: u64,
    /// Decode steps run.
    pub decode_steps: u64,
    /// Sequences decoded summed over steps (divided by `decode_steps`: the mean batch).
    pub batched_sequences: u64,
    /// Tokens held by the prefix cache.
    pub prefix_cache_tokens: usize,
    /// Blocks of paged KV memory (0 without paging).
    pub kv_blocks_total: usize,
    /// Of them, blocks referenced by running sequences.
    pub kv_blocks_in_use: usize,
    /// Sequences preempted (KV released, recomputed later) because the memory was full.
    pub preemptions: u64,
}

enum Msg {
    Submit {
        id: u64,
        // Boxed: a request (with its constraint's parser) is much larger than the other messages.
        req: Box<ServeRequest>,
        sink: Sink,
        at: Instant,
    },
    Abort(u64),
    Shutdown(Instant),
    /// Perplexity of a token sequence under the model (a guardrail's check), answered
    /// between steps.
    Perplexity {
        ids: Vec<TokenId>,
        reply: mpsc::Sender<Result<Option<f64>, String>>,
    },
}

/// A cheap, cloneable handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: Sender<Msg>,
    counters: Arc<Counters>,
    next_id: Arc<AtomicU64>,
    closed: Arc<AtomicBool>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    max_queue: usize,
    max_context: usize,
}

impl EngineHandle {
    /// Starts the engine thread for `model`.
    pub fn start(
        model: Box<dyn CausalLm>,
        tokenizer: Arc<Tokenizer>,
        cfg: EngineConfig,
    ) -> Result<Self, EngineError> {
        if cfg.max_running == 0 || cfg.prefill_chunk == 0 || cfg.block_size == 0 {
            return Err(EngineError::Request(
                "max_running, prefill_chunk and block_size must be at least 1".into(),
            ));
        }
        // Submissions are bounded by `max_queue` (checked in `submit`); aborts must never
        // block the async task that sends them, so the channel itself is unbounded.
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let max_context = model.max_context();
        let c = counters.clone();
        let max_queue = cfg.max_queue;
        let thread = std::thread::Builder::new()
            .name("seek-engine".into())
            .spawn(
                move || match Loop::new(model.as_ref(), &tokenizer, cfg, c) {
                    Ok(mut lp) => lp.run(rx),
                    Err(e) => {
                        tracing::error!(error = %e, "the engine could not start");
                        for m in rx.iter() {
                            if let Msg::Submit { mut sink, .. } = m {
                                sink(ServeEvent::Failed {
                                    message: format!("the engine could not start: {e}"),
                                });
                            }
                        }
                    }
                },
            )
            .map_err(|e| EngineError::Request(format!("cannot start the engine thread: {e}")))?;
        Ok(Self {
            tx,
            counters,
            next_id: Arc::new(AtomicU64::new(1)),
            closed: Arc::new(AtomicBool::new(false)),
            thread: Arc::new(Mutex::new(Some(thread))),
            max_queue,
            max_context,
        })
    }

    /// The model's context window.
    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// Queues a request; its events go to `sink`. Returns the id to abort it with.
    pub fn submit(&self, req: ServeRequest, sink: Sink) -> Result<u64, SubmitError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        if req.prompt.is_empty() {
            return Err(SubmitError::Invalid(
                "the prompt is empty: it must have at least one token".into(),
            ));
        }
        if req.prompt.len() >= self.max_context {
            return Err(SubmitError::Invalid(format!(
                "the prompt has {} tokens but the model's context window is {} tokens; shorten the prompt",
                req.prompt.len(),
                self.max_context
            )));
        }
        let queued = self.counters.queued.fetch_add(1, Ordering::SeqCst);
        if queued >= self.max_queue {
            self.counters.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::QueueFull {
                queued,
                limit: self.max_queue,
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let msg = Msg::Submit {
            id,
            req: Box::new(req),
            sink,
            at: Instant::now(),
        };
        match self.tx.send(msg) {
            Ok(()) => Ok(id),
            Err(_) => {
                self.counters.queued.fetch_sub(1, Ordering::SeqCst);
                Err(SubmitError::ShuttingDown)
            }
        }
    }

    /// Submits `req` and waits for its end, collecting its text: for callers that need the
    /// whole answer (a judge, an evaluation). Blocks: call it from a blocking thread.
    pub fn complete(&self, req: ServeRequest) -> Result<Completion, CompleteError> {
        let (tx, rx) = mpsc::channel();
        self.submit(req, Box::new(move |e| tx.send(e).is_ok()))?;
        let mut out = Completion::default();
        for e in rx {
            match e {
                ServeEvent::Delta { delta, .. } => {
                    out.reasoning.push_str(&delta.reasoning);
                    out.content.push_str(&delta.content);
                }
                ServeEvent::Finished {
                    finish_reason,
                    usage,
                    ..
                } => {
                    out.finish_reason = Some(finish_reason);
                    out.usage = usage;
                    break;
                }
                ServeEvent::Failed { message } => return Err(CompleteError::Failed(message)),
                ServeEvent::Started { .. } => {}
            }
        }
        Ok(out)
    }

    /// Stops a request at the next step (its sink hears `Finished` with `abort`).
    pub fn abort(&self, id: u64) {
        let _ = self.tx.send(Msg::Abort(id));
    }

    /// The perplexity of `ids` under the engine's model (see [`crate::score::perplexity`]),
    /// computed on the engine thread between two steps. Blocks until it is done: call it from
    /// a blocking thread. `None` for fewer than two tokens.
    pub fn perplexity(&self, ids: Vec<TokenId>) -> Result<Option<f64>, SubmitError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        let (reply, answer) = mpsc::channel();
        self.tx
            .send(Msg::Perplexity { ids, reply })
            .map_err(|_| SubmitError::ShuttingDown)?;
        answer
            .recv()
            .map_err(|_| SubmitError::ShuttingDown)?
            .map_err(SubmitError::Invalid)
    }

    /// The engine's counters now.
    pub fn stats(&self) -> EngineStats {
        let c = &self.counters;
        EngineStats {
            queued: c.queued.load(Ordering::Relaxed),
            running: c.running.load(Ordering::Relaxed),
            requests_finished: c.requests_finished.load(Ordering::Relaxed),
            prompt_tokens: c.prompt_tokens.load(Ordering::Relaxed),
            cached_prompt_tokens: c.cached_prompt_tokens.load(Ordering::Relaxed),
            generated_tokens: c.generated_tokens.load(Ordering::Relaxed),
            reasoning_tokens: c.reasoning_tokens.load(Ordering::Relaxed),
            decode_steps: c.steps.load(Ordering::Relaxed),
            batched_sequences: c.batched_sequences.load(Ordering::Relaxed),
            prefix_cache_tokens: c.prefix_cache_tokens.load(Ordering::Relaxed),
            kv_blocks_total: c.kv_blocks_total.load(Ordering::Relaxed),
            kv_blocks_in_use: c.kv_blocks_in_use.load(Ordering::Relaxed),
            preemptions: c.preemptions.load(Ordering::Relaxed),
        }
    }

    /// Whether [`EngineHandle::shutdown`] has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Refuses new requests, lets running and queued ones finish until `grace` has passed,
    /// aborts what is left, and waits for the engine thread to end.
    pub fn shutdown(&self, grace: Duration) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Msg::Shutdown(Instant::now() + grace));
        let handle = self.thread.lock().map(|mut t| t.take()).unwrap_or(None);
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// Where a running sequence's keys and values live.
enum SeqKv {
    /// A cache of its own (models without a paged layout).
    Own(KvCache),
    /// Blocks of the shared paged memory.
    Paged {
        /// Block ids, in position order.
        table: Vec<u32>,
        /// Positions written.
        len: usize,
        /// Full blocks already registered in the prefix cache, and the hash of the last.
        registered: usize,
        hash: u64,
    },
}

/// A request inside the engine.
struct Running<'t> {
    id: u64,
    prompt: Vec<TokenId>,
    /// Every token fed so far or being fed: the prompt, then generated tokens.
    fed: Vec<TokenId>,
    seq: Sequence<'t>,
    sink: Sink,
    kv: SeqKv,
    /// Prompt tokens already in the cache (prefill is done when it reaches the prompt).
    prefilled: usize,
    /// The token to feed at the next decode step.
    next: Option<TokenId>,
    /// Set while a preempted sequence recomputes its KV: the token to feed once it has.
    resume: Option<TokenId>,
    logprobs: Option<usize>,
    cached_tokens: usize,
    submitted: Instant,
    admitted: Instant,
    first_token: Option<Instant>,
    aborted: bool,
}

/// The paged KV memory and its block manager.
struct Paged {
    blocks: KvBlocks,
    mgr: BlockManager,
}

struct Loop<'m> {
    model: &'m dyn CausalLm,
    tokenizer: &'m Tokenizer,
    cfg: EngineConfig,
    counters: Arc<Counters>,
    waiting: VecDeque<(u64, ServeRequest, Sink, Instant)>,
    running: Vec<Running<'m>>,
    /// Paged KV (models with a paged layout), or per-sequence caches with `prefix`.
    paged: Option<Paged>,
    prefix: PrefixCache,
    deadline: Option<Instant>,
}

/// One sequence's share of a step: which sequence, its tokens, and whether the last row's
/// logits start (or continue) generation.
struct Work {
    index: usize,
    start: usize,
    end: usize,
    decode: bool,
}

impl<'m> Loop<'m> {
    fn new(
        model: &'m dyn CausalLm,
        tokenizer: &'m Tokenizer,
        cfg: EngineConfig,
        counters: Arc<Counters>,
    ) -> Result<Self, EngineError> {
        let paged = match model.paged_layout() {
            Some(layout) if cfg.kv_cache_tokens > 0 => {
                let n = cfg.kv_cache_tokens.div_ceil(cfg.block_size);
                Some(Paged {
                    blocks: KvBlocks::new(layout, cfg.block_size, n)?,
                    mgr: BlockManager::new(n, cfg.block_size),
                })
            }
            _ => None,
        };
        if let Some(p) = &paged {
            counters
                .kv_blocks_total
                .store(p.blocks.n_blocks(), Ordering::Relaxed);
        }
        Ok(Self {
            prefix: PrefixCache::new(cfg.prefix_cache_tokens, cfg.block_size),
            model,
            tokenizer,
            cfg,
            counters,
            waiting: VecDeque::new(),
            running: Vec::new(),
            paged,
            deadline: None,
        })
    }

    fn run(&mut self, rx: Receiver<Msg>) {
        loop {
            // Wait for work only when there is none; otherwise take what has arrived.
            let idle = self.running.is_empty() && self.waiting.is_empty();
            if idle && self.deadline.is_some() {
                break;
            }
            let first = if idle {
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                None
            };
            for m in first.into_iter().chain(rx.try_iter()) {
                self.handle(m);
            }
            if let Some(d) = self.deadline {
                if Instant::now() >= d {
                    self.abort_all();
                    break;
                }
            }
            self.admit();
            if let Err(e) = self.step() {
                tracing::error!(error = %e, "engine step failed; failing its sequences");
                let failed: Vec<Running<'m>> = self.running.drain(..).collect();
                for mut r in failed {
                    self.counters
                        .requests_finished
                        .fetch_add(1, Ordering::Relaxed);
                    (r.sink)(ServeEvent::Failed {
                        message: format!("generation failed: {e}"),
                    });
                    self.release(&mut r);
                }
            }
            self.publish();
        }
        self.abort_all();
        self.publish();
    }

    fn publish(&self) {
        let c = &self.counters;
        c.running.store(self.running.len(), Ordering::Relaxed);
        let cached = match &self.paged {
            Some(p) => {
                c.kv_blocks_in_use.store(p.mgr.in_use(), Ordering::Relaxed);
                p.mgr.cached() * p.mgr.block_size()
            }
            None => self.prefix.tokens(),
        };
        c.prefix_cache_tokens.store(cached, Ordering::Relaxed);
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Submit { id, req, sink, at } => self.waiting.push_back((id, *req, sink, at)),
            Msg::Abort(id) => {
                if let Some(r) = self.running.iter_mut().find(|r| r.id == id) {
                    r.aborted = true;
                }
                if let Some(i) = self.waiting.iter().position(|w| w.0 == id) {
                    let (_, req, mut sink, at) = self.waiting.remove(i).expect("index exists");
                    self.counters.queued.fetch_sub(1, Ordering::SeqCst);
                    sink(finished_unstarted(&req, at, FinishReason::Abort));
                }
            }
            Msg::Shutdown(d) => self.deadline = Some(d),
            Msg::Perplexity { ids, reply } => {
                let r =
                    crate::score::perplexity_of_ids(self.model, &ids).map_err(|e| e.to_string());
                let _ = reply.send(r);
            }
        }
    }

    fn abort_all(&mut self) {
        for r in &mut self.running {
            r.aborted = true;
        }
        self.finish_aborted();
        for (_, req, mut sink, at) in self.waiting.drain(..) {
            self.counters.queued.fetch_sub(1, Ordering::SeqCst);
            sink(finished_unstarted(&req, at, FinishReason::Abort));
        }
    }

    /// Moves waiting requests into the batch while there is room (in the batch, and in the
    /// paged KV memory for their prompt plus a block to generate into).
    fn admit(&mut self) {
        while self.running.len() < self.cfg.max_running {
            let Some((id, req, mut sink, at)) = self.waiting.pop_front() else {
                break;
            };
            let (kv, cached) = match &mut self.paged {
                Some(p) => {
                    let bs = p.mgr.block_size();
                    let reused = p.mgr.reuse(&req.prompt);
                    let need = (req.prompt.len() + 1).div_ceil(bs) - reused.blocks.len();
                    if need > p.mgr.available() {
                        p.mgr.release(&reused.blocks);
                        if self.running.is_empty() {
                            self.counters.queued.fetch_sub(1, Ordering::SeqCst);
                            sink(ServeEvent::Failed {
                                message: format!(
                                    "the prompt needs {} KV blocks of {bs} tokens but the cache holds {}; raise the KV cache size (--kv-cache-tokens)",
                                    need + reused.blocks.len(),
                                    p.blocks.n_blocks()
                                ),
                            });
                            continue;
                        }
                        // Wait for running sequences to free blocks.
                        self.waiting.push_front((id, req, sink, at));
                        break;
                    }
                    let n = reused.blocks.len();
                    (
                        SeqKv::Paged {
                            table: reused.blocks,
                            len: n * bs,
                            registered: n,
                            hash: reused.hash,
                        },
                        n * bs,
                    )
                }
                None => {
                    let (cache, cached) = self.prefix.take(self.model, &req.prompt);
                    (SeqKv::Own(cache), cached)
                }
            };
            self.counters.queued.fetch_sub(1, Ordering::SeqCst);
            let room = self.model.max_context() - req.prompt.len();
            let mut params = req.params.clone();
            params.max_tokens = params.max_tokens.min(room);
            let seq = match Sequence::new(self.tokenizer, params) {
                Ok(s) => s,
                Err(e) => {
                    if let (SeqKv::Paged { table, .. }, Some(p)) = (&kv, &mut self.paged) {
                        p.mgr.release(table);
                    }
                    sink(ServeEvent::Failed {
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            self.counters
                .prompt_tokens
                .fetch_add(req.prompt.len() as u64, Ordering::Relaxed);
            self.counters
                .cached_prompt_tokens
                .fetch_add(cached as u64, Ordering::Relaxed);
            let alive = sink(ServeEvent::Started {
                prompt_tokens: req.prompt.len(),
                cached_tokens: cached,
            });
            self.running.push(Running {
                id,
                fed: req.prompt.clone(),
                prompt: req.prompt,
                seq,
                sink,
                kv,
                prefilled: cached,
                next: None,
                resume: None,
                logprobs: req.logprobs,
                cached_tokens: cached,
                submitted: at,
                admitted: Instant::now(),
                first_token: None,
                aborted: !alive,
            });
        }
    }

    /// One engine step: a prefill chunk for the oldest sequence still prefilling, and one
    /// decode row for every sequence that has a token to feed, in one forward when the KV is
    /// paged (in two otherwise).
    fn step(&mut self) -> Result<(), EngineError> {
        self.finish_aborted();
        if self.paged.is_some() {
            self.reserve_decode_blocks();
            self.finish_aborted();
        }
        let mut work: Vec<Work> = Vec::new();
        if let Some(i) = self.running.iter().position(|r| r.next.is_none()) {
            if let Some(end) = self.prefill_chunk(i) {
                work.push(Work {
                    index: i,
                    start: self.running[i].prefilled,
                    end,
                    decode: false,
                });
            }
        }
        for (i, r) in self.running.iter_mut().enumerate() {
            if let Some(t) = r.next {
                r.fed.push(t);
                let at = r.fed.len() - 1;
                work.push(Work {
                    index: i,
                    start: at,
                    end: at + 1,
                    decode: true,
                });
            }
        }
        if work.is_empty() {
            return Ok(());
        }
        let logits = if self.paged.is_some() {
            self.forward_paged(&work)?
        } else {
            self.forward_own(&work)?
        };
        let decoded = work.iter().filter(|w| w.decode).count();
        if decoded > 0 {
            self.counters.steps.fetch_add(1, Ordering::Relaxed);
            self.counters
                .batched_sequences
                .fetch_add(decoded as u64, Ordering::Relaxed);
        }
        let mut logits = logits;
        self.constrain_in_parallel(&work, &mut logits);
        for (w, row) in work.iter().zip(logits) {
            let r = &mut self.running[w.index];
            if !w.decode {
                r.prefilled = w.end;
                if w.end < r.fed.len() {
                    continue;
                }
                // A preempted sequence has its KV back: go on with the token it had.
                if let Some(t) = r.resume.take() {
                    r.next = Some(t);
                    continue;
                }
            }
            self.after_forward(w.index, row)?;
        }
        self.finish_done();
        Ok(())
    }

    /// Where sequence `i`'s next prefill chunk ends, with paged blocks allocated for it; `None`
    /// when the memory has no room now (it waits for running sequences to free blocks).
    fn prefill_chunk(&mut self, i: usize) -> Option<usize> {
        let chunk = self.cfg.prefill_chunk;
        let r = &mut self.running[i];
        let Some(p) = &mut self.paged else {
            return Some((r.prefilled + chunk).min(r.fed.len()));
        };
        let bs = p.mgr.block_size();
        let SeqKv::Paged {
            table,
            len,
            registered,
            hash,
        } = &mut r.kv
        else {
            unreachable!("paged mode")
        };
        if table.is_empty() && r.resume.is_some() {
            // Coming back from preemption: its full blocks may still be cached.
            let reused = p.mgr.reuse(&r.fed);
            *registered = reused.blocks.len();
            *hash = reused.hash;
            *len = reused.blocks.len() * bs;
            r.prefilled = *len;
            *table = reused.blocks;
        }
        let end = (r.prefilled + chunk).min(r.fed.len());
        while table.len() * bs < end {
            table.push(p.mgr.allocate()?);
        }
        Some(end)
    }

    /// Makes sure every decoding sequence has a block for its next position, oldest first:
    /// when the memory is full, the youngest sequence holding blocks is preempted (its
    /// blocks released; it recomputes its KV later and goes on where it was, as vLLM does).
    /// A sequence alone in the batch that still does not fit fails.
    fn reserve_decode_blocks(&mut self) {
        let p = self.paged.as_mut().expect("paged mode");
        let bs = p.mgr.block_size();
        for i in 0..self.running.len() {
            if self.running[i].next.is_none() {
                continue;
            }
            loop {
                let r = &mut self.running[i];
                let SeqKv::Paged { table, .. } = &mut r.kv else {
                    unreachable!("paged mode")
                };
                if table.len() * bs > r.fed.len() {
                    break;
                }
                if let Some(b) = p.mgr.allocate() {
                    table.push(b);
                    continue;
                }
                let holds = |r: &Running<'_>| matches!(&r.kv, SeqKv::Paged { table, .. } if !table.is_empty());
                let victim = (i..self.running.len())
                    .rev()
                    .find(|&j| holds(&self.running[j]))
                    .filter(|&j| j != i || self.running.iter().filter(|r| holds(r)).count() > 1);
                let Some(j) = victim else {
                    let r = &mut self.running[i];
                    (r.sink)(ServeEvent::Failed {
                        message: format!(
                            "the KV cache is full ({} blocks of {bs} tokens) with this one sequence; raise --kv-cache-tokens",
                            p.blocks.n_blocks()
                        ),
                    });
                    r.aborted = true;
                    r.next = None;
                    break;
                };
                let v = &mut self.running[j];
                if let SeqKv::Paged {
                    table,
                    len,
                    registered,
                    hash,
                } = &mut v.kv
                {
                    p.mgr.release(table);
                    table.clear();
                    (*len, *registered, *hash) = (0, 0, 0);
                }
                v.prefilled = 0;
                if v.next.is_some() {
                    v.resume = v.next.take();
                }
                tracing::debug!(sequence = v.id, "preempted: the KV memory is full");
                self.counters.preemptions.fetch_add(1, Ordering::Relaxed);
                if j == i {
                    break;
                }
            }
        }
    }

    /// The forward of a step over per-sequence caches: the prefill chunk alone, then every
    /// decode row batched. Rows of `None` were not computed.
    fn forward_own(&mut self, work: &[Work]) -> Result<Vec<Vec<f32>>, EngineError> {
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); work.len()];
        for (o, w) in out.iter_mut().zip(work).filter(|(_, w)| !w.decode) {
            let r = &mut self.running[w.index];
            let SeqKv::Own(cache) = &mut r.kv else {
                unreachable!("per-sequence mode")
            };
            let input =
                Tensor::new(&r.prompt[w.start..w.end], self.model.device())?.unsqueeze(0)?;
            // (1, V) -> (V,)
            *o = self
                .model
                .forward_last(&input, cache)?
                .squeeze(0)?
                .to_vec1::<f32>()?;
        }
        let decoding: Vec<usize> = (0..work.len()).filter(|&k| work[k].decode).collect();
        if decoding.is_empty() {
            return Ok(out);
        }
        let tokens: Vec<TokenId> = decoding
            .iter()
            .map(|&k| self.running[work[k].index].fed[work[k].start])
            .collect();
        let rows = {
            let wanted: Vec<usize> = decoding.iter().map(|&k| work[k].index).collect();
            let mut caches: Vec<&mut KvCache> = self
                .running
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| wanted.contains(i))
                .map(|(_, r)| match &mut r.kv {
                    SeqKv::Own(c) => c,
                    SeqKv::Paged { .. } => unreachable!("per-sequence mode"),
                })
                .collect();
            // (N, V)
            self.model
                .decode_batch(&tokens, &mut caches)?
                .to_vec2::<f32>()?
        };
        // `iter_mut().filter` kept the running order, which `decoding` follows too.
        for (&k, row) in decoding.iter().zip(rows) {
            out[k] = row;
        }
        Ok(out)
    }

    /// The forward of a step over the paged memory: every sequence's rows in one call (the
    /// blocks were reserved before).
    fn forward_paged(&mut self, work: &[Work]) -> Result<Vec<Vec<f32>>, EngineError> {
        let p = self.paged.as_mut().expect("paged mode");
        let bs = p.mgr.block_size();
        let spans: Vec<Span<'_>> = work
            .iter()
            .map(|w| {
                let r = &self.running[w.index];
                let SeqKv::Paged { table, .. } = &r.kv else {
                    unreachable!("paged mode")
                };
                Span {
                    tokens: &r.fed[w.start..w.end],
                    start: w.start,
                    table,
                }
            })
            .collect();
        // (spans, V)
        let rows = self
            .model
            .forward_paged(&spans, &mut p.blocks)?
            .to_vec2::<f32>()?;
        drop(spans);
        // Register the blocks these positions completed.
        for w in work.iter() {
            let r = &mut self.running[w.index];
            let SeqKv::Paged {
                table,
                len,
                registered,
                hash,
            } = &mut r.kv
            else {
                unreachable!("paged mode")
            };
            *len = w.end;
            while (*registered + 1) * bs <= *len {
                let i = *registered;
                *hash = block_hash(*hash, &r.fed[i * bs..(i + 1) * bs]);
                p.mgr.register(table[i], *hash);
                *registered += 1;
            }
        }
        Ok(rows)
    }

    /// Masks the rows of constrained sequences that sample this step, on all cores at once
    /// (a mask takes a fraction of a millisecond; one after the other they would add up over a
    /// large batch). Rows of other sequences are untouched.
    fn constrain_in_parallel(&mut self, work: &[Work], logits: &mut [Vec<f32>]) {
        use rayon::prelude::*;
        let mut rows: Vec<Option<&mut Vec<f32>>> = Vec::with_capacity(self.running.len());
        rows.resize_with(self.running.len(), || None);
        let mut guided = 0;
        for (w, row) in work.iter().zip(logits.iter_mut()) {
            let r = &self.running[w.index];
            let samples = w.decode || (w.end >= r.fed.len() && r.resume.is_none());
            if samples && r.seq.is_guided() {
                rows[w.index] = Some(row);
                guided += 1;
            }
        }
        if guided < 2 {
            return; // one mask is computed in `step`, without the pool's overhead
        }
        self.running
            .par_iter_mut()
            .zip(rows.par_iter_mut())
            .for_each(|(r, row)| {
                if let Some(row) = row {
                    r.seq.constrain(row);
                }
            });
    }

    /// Samples sequence `i`'s next token from `logits` and streams what it adds.
    fn after_forward(&mut self, i: usize, mut logits: Vec<f32>) -> Result<(), EngineError> {
        let tokenizer = self.tokenizer;
        let r = &mut self.running[i];
        // Log-probabilities are the model's own, before penalties and temperature.
        let raw = r.logprobs.map(|_| logits.clone());
        let step = r.seq.step(&mut logits, &r.prompt)?;
        r.first_token.get_or_insert_with(Instant::now);
        let logprob = match (r.logprobs, raw, step.token) {
            (Some(k), Some(raw), Some(t)) => {
                let (lse, top) = log_softmax(&raw, k);
                Some(TokenLogprob {
                    id: t,
                    token: token_text(tokenizer, t),
                    logprob: raw.get(t as usize).map_or(f32::NEG_INFINITY, |x| x - lse),
                    top: top
                        .into_iter()
                        .map(|(id, l)| (id, token_text(tokenizer, id), l))
                        .collect(),
                })
            }
            _ => None,
        };
        if step.token.is_some() || !step.delta.is_empty() {
            let alive = (r.sink)(ServeEvent::Delta {
                delta: step.delta,
                token: step.token,
                logprob,
            });
            r.aborted |= !alive;
        }
        r.next = if step.finished.is_some() {
            None
        } else {
            step.token
        };
        Ok(())
    }

    fn finish_aborted(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].aborted {
                let r = self.running.remove(i);
                self.finish(r, FinishReason::Abort);
            } else {
                i += 1;
            }
        }
    }

    fn finish_done(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if let Some(reason) = self.running[i].seq.finished() {
                let r = self.running.remove(i);
                self.finish(r, reason);
            } else {
                i += 1;
            }
        }
        self.finish_aborted();
    }

    /// Gives a sequence's KV back: paged blocks to the manager (full ones stay cached), a
    /// per-sequence cache to the prefix cache.
    fn release(&mut self, r: &mut Running<'m>) {
        match std::mem::replace(&mut r.kv, SeqKv::Own(KvCache::new(0))) {
            SeqKv::Paged { table, .. } => {
                if let Some(p) = &mut self.paged {
                    p.mgr.release(&table);
                }
            }
            SeqKv::Own(cache) => {
                // What the cache holds: the prompt, then every generated token that was fed.
                let mut held = std::mem::take(&mut r.fed);
                held.truncate(cache.seq_len());
                if held.len() == cache.seq_len() {
                    self.prefix.insert(held, cache);
                }
            }
        }
    }

    /// Flushes the sequence's text, reports its usage, and keeps its KV for reuse.
    fn finish(&mut self, mut r: Running<'m>, reason: FinishReason) {
        let tail = match r.seq.finish(reason) {
            Ok(t) => t,
            Err(e) => {
                (r.sink)(ServeEvent::Failed {
                    message: e.to_string(),
                });
                self.release(&mut r);
                return;
            }
        };
        let reason = r.seq.finished().unwrap_or(reason);
        if !tail.is_empty() {
            (r.sink)(ServeEvent::Delta {
                delta: tail,
                token: None,
                logprob: None,
            });
        }
        let n = r.seq.output.len();
        let usage = Usage {
            prompt_tokens: r.prompt.len(),
            completion_tokens: n,
            reasoning_tokens: r.seq.reasoning_tokens,
            total_tokens: r.prompt.len() + n,
            cached_prompt_tokens: r.cached_tokens,
        };
        let now = Instant::now();
        let timings = ServeTimings {
            queued_s: (r.admitted - r.submitted).as_secs_f64(),
            time_to_first_token_s: (r.first_token.unwrap_or(now) - r.submitted).as_secs_f64(),
            total_s: (now - r.submitted).as_secs_f64(),
        };
        let c = &self.counters;
        c.requests_finished.fetch_add(1, Ordering::Relaxed);
        c.generated_tokens.fetch_add(n as u64, Ordering::Relaxed);
        c.reasoning_tokens
            .fetch_add(r.seq.reasoning_tokens as u64, Ordering::Relaxed);
        (r.sink)(ServeEvent::Finished {
            finish_reason: reason,
            stop: r.seq.matched_stop().map(str::to_string),
            usage,
            timings,
        });
        self.release(&mut r);
    }
}

/// The event of a request that ends before it entered the batch.
fn finished_unstarted(req: &ServeRequest, at: Instant, reason: FinishReason) -> ServeEvent {
    ServeEvent::Finished {
        finish_reason: reason,
        stop: None,
        usage: Usage {
            prompt_tokens: req.prompt.len(),
            total_tokens: req.prompt.len(),
            ..Usage::default()
        },
        timings: ServeTimings {
            queued_s: at.elapsed().as_secs_f64(),
            time_to_first_token_s: 0.0,
            total_s: at.elapsed().as_secs_f64(),
        },
    }
}

/// `(logsumexp, k best (id, logprob))` of a row of logits.
fn log_softmax(logits: &[f32], k: usize) -> (f32, Vec<(TokenId, f32)>) {
    let max = logits
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits
        .iter()
        .filter(|x| x.is_finite())
        .map(|&x| ((x - max) as f64).exp())
        .sum();
    let lse = max + sum.ln() as f32;
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    let k = k.min(logits.len());
    if k > 0 {
        idx.select_nth_unstable_by(k - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
        idx.truncate(k);
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    } else {
        idx.clear();
    }
    let top = idx
        .into_iter()
        .map(|i| (i as TokenId, logits[i] - lse))
        .collect();
    (lse, top)
}

fn token_text(tok: &Tokenizer, id: TokenId) -> String {
    tok.decode(&[id], false).unwrap_or_default()
}

/// Finished sequences' KV caches, keyed by the tokens they hold (see the module docs).
struct PrefixCache {
    entries: Vec<PrefixEntry>,
    capacity: usize,
    block: usize,
    clock: u64,
}

struct PrefixEntry {
    tokens: Vec<TokenId>,
    cache: KvCache,
    used: u64,
}

impl PrefixCache {
    fn new(capacity: usize, block: usize) -> Self {
        Self {
            entries: Vec::new(),
            capacity,
            block,
            clock: 0,
        }
    }

    fn tokens(&self) -> usize {
        self.entries.iter().map(|e| e.tokens.len()).sum()
    }

    /// A cache for `prompt`: a copy of the entry sharing the longest prefix with it, cut to
    /// whole blocks (and short of the last prompt token, whose logits prefill must produce),
    /// with the number of tokens it holds; or a fresh cache and 0.
    fn take(&mut self, model: &dyn CausalLm, prompt: &[TokenId]) -> (KvCache, usize) {
        let best = self
            .entries
            .iter_mut()
            .map(|e| {
                let common = e
                    .tokens
                    .iter()
                    .zip(prompt)
                    .take_while(|(a, b)| a == b)
                    .count();
                (common, e)
            })
            .max_by_key(|(c, _)| *c);
        if let Some((common, e)) = best {
            let usable = common.min(prompt.len() - 1) / self.block * self.block;
            if usable > 0 {
                self.clock += 1;
                e.used = self.clock;
                let mut cache = e.cache.clone();
                if cache.truncate(usable).is_ok() {
                    return (cache, usable);
                }
            }
        }
        (model.new_cache(), 0)
    }

    /// Keeps a finished sequence's cache, replacing entries it extends, evicting the least
    /// recently used beyond the capacity.
    fn insert(&mut self, tokens: Vec<TokenId>, cache: KvCache) {
        if self.capacity == 0 || tokens.len() < self.block || tokens.len() > self.capacity {
            return;
        }
        self.entries
            .retain(|e| !(e.tokens.len() <= tokens.len() && tokens.starts_with(&e.tokens)));
        if self.entries.iter().any(|e| e.tokens.starts_with(&tokens)) {
            return;
        }
        self.clock += 1;
        self.entries.push(PrefixEntry {
            tokens,
            cache,
            used: self.clock,
        });
        while self.tokens() > self.capacity {
            let oldest = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.used)
                .map(|(i, _)| i)
                .expect("over capacity means non-empty");
            self.entries.swap_remove(oldest);
        }
    }
}
