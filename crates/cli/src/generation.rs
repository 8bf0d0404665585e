//! `seek run` and `seek chat`.

use std::io::{BufRead, IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use seek_engine::chat::{default_sampling, render_raw, RenderedPrompt};
use seek_engine::generate::Delta;
use seek_engine::{generate, GenerateOutput, GenerateRequest};
use seek_types::{ChatMessage, SamplingParams};
use serde::Serialize;

use crate::source::{open, Opened};
use crate::ModelArg;

/// Sampling and length flags shared by `run` and `chat`.
#[derive(Args, Debug, Clone)]
pub struct GenArgs {
    /// Most new tokens, reasoning included.
    #[arg(long, short = 'n', default_value_t = 2048)]
    pub max_tokens: usize,
    /// Most tokens of reasoning before `</think>` is forced and the model must answer.
    #[arg(long)]
    pub max_reasoning_tokens: Option<usize>,
    /// Sampling temperature; 0 is greedy. Default: 0.6 for R1 models (DeepSeek's advice), else 0.7.
    #[arg(long, short = 't')]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass. Default: 0.95 for R1 models, else 0.9.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Drop tokens below this fraction of the top token's probability.
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Penalise tokens already in the prompt or output (1.0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// OpenAI presence penalty.
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// OpenAI frequency penalty.
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Random seed: the same seed and prompt give the same output.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when this string appears (repeatable); it is not printed.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens (for benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Do not print the reasoning.
    #[arg(long)]
    pub hide_reasoning: bool,
    /// A system prompt (folded into the user turn for R1 models, as DeepSeek advises).
    #[arg(long)]
    pub system: Option<String>,
    /// Extra chat-template variables as JSON, as vLLM's `chat_template_kwargs`
    /// (e.g. '{"enable_thinking": false}' for Qwen3).
    #[arg(long, value_name = "JSON")]
    pub chat_template_kwargs: Option<String>,
    /// Answer without thinking where the chat template allows it (Qwen3's
    /// `enable_thinking: false`, DeepSeek-V3.1's `thinking: false`).
    #[arg(long)]
    pub no_think: bool,
}

impl GenArgs {
    /// `--chat-template-kwargs`, with `--no-think` adding `enable_thinking` and `thinking`
    /// false.
    pub fn template_kwargs(
        &self,
    ) -> anyhow::Result<Option<serde_json::Map<String, serde_json::Value>>> {
        let mut map = match &self.chat_template_kwargs {
            Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Object(m)) => m,
                _ => anyhow::bail!(
                    "--chat-template-kwargs {text:?} is not a JSON object; e.g. '{{\"enable_thinking\": false}}'"
                ),
            },
            None => serde_json::Map::new(),
        };
        if self.no_think {
            map.insert("enable_thinking".into(), false.into());
            map.insert("thinking".into(), false.into());
        }
        Ok((!map.is_empty()).then_some(map))
    }

    fn sampling(&self, defaults: SamplingParams) -> anyhow::Result<SamplingParams> {
        let p = SamplingParams {
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            top_k: self.top_k,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
        };
        anyhow::ensure!(
            p.temperature >= 0.0 && p.temperature.is_finite(),
            "--temperature must be 0 or more"
        );
        anyhow::ensure!(p.top_p > 0.0 && p.top_p <= 1.0, "--top-p must be in (0, 1]");
        anyhow::ensure!((0.0..=1.0).contains(&p.min_p), "--min-p must be in [0, 1]");
        anyhow::ensure!(
            p.repetition_penalty > 0.0,
            "--repetition-penalty must be above 0 (1.0 disables it)"
        );
        Ok(p)
    }

    fn request(&self, prompt: &RenderedPrompt, sampling: SamplingParams) -> GenerateRequest {
        GenerateRequest {
            prompt: prompt.ids.clone(),
            sampling,
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
            ignore_eos: self.ignore_eos,
            starts_in_reasoning: prompt.starts_in_reasoning,
            max_reasoning_tokens: self.max_reasoning_tokens,
            guide: None,
        }
    }
}

/// `seek run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    model: ModelArg,
    /// The prompt (a user message, rendered with the model's chat template).
    prompt: String,
    #[command(flatten)]
    gen: GenArgs,
    /// Send the prompt as raw text, without the chat template.
    #[arg(long)]
    raw: bool,
    /// Print one JSON object (reasoning, content, usage, timings) instead of streaming.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    constraint: ConstraintArgs,
}

/// What the answer must match: constrained decoding, as the server's `response_format`.
#[derive(Args, Debug, Default)]
pub struct ConstraintArgs {
    /// The answer is a JSON value valid against this JSON Schema file (after `</think>` for
    /// reasoning models).
    #[arg(long, value_name = "FILE", group = "constraint")]
    pub json_schema: Option<PathBuf>,
    /// The answer is any JSON object.
    #[arg(long, group = "constraint")]
    pub json_object: bool,
    /// The answer matches this regular expression.
    #[arg(long, value_name = "REGEX", group = "constraint")]
    pub regex: Option<String>,
    /// The answer is one of these strings (repeatable).
    #[arg(long, value_name = "TEXT", group = "constraint")]
    pub choice: Vec<String>,
    /// The answer matches this grammar file (llguidance's Lark syntax).
    #[arg(long, value_name = "FILE", group = "constraint")]
    pub grammar: Option<PathBuf>,
}

impl ConstraintArgs {
    /// The constraint asked for, compiled for `tokenizer`'s vocabulary.
    pub fn guide(
        &self,
        tokenizer: &seek_tokenizer::Tokenizer,
    ) -> anyhow::Result<Option<seek_structured::Guide>> {
        use seek_structured::Constraint;
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
        };
        let c = if let Some(p) = &self.json_schema {
            let schema: serde_json::Value = serde_json::from_str(&read(p)?).with_context(|| {
                format!(
                    "{} is not JSON; --json-schema takes a JSON Schema file",
                    p.display()
                )
            })?;
            Constraint::JsonSchema(schema)
        } else if self.json_object {
            Constraint::JsonObject
        } else if let Some(r) = &self.regex {
            Constraint::Regex(r.clone())
        } else if !self.choice.is_empty() {
            Constraint::Choice(self.choice.clone())
        } else if let Some(p) = &self.grammar {
            Constraint::Grammar(read(p)?)
        } else {
            return Ok(None);
        };
        let grammars = seek_structured::Grammars::new(tokenizer)?;
        Ok(Some(grammars.compile(&c)?))
    }
}

/// `seek chat`.
#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    gen: GenArgs,
}

/// Prints deltas as they come: reasoning dimmed on a terminal (Ollama-style markers when piped).
struct Printer {
    hide_reasoning: bool,
    tty: bool,
    in_reasoning: bool,
}

impl Printer {
    fn new(hide_reasoning: bool) -> Self {
        Self {
            hide_reasoning,
            tty: std::io::stdout().is_terminal(),
            in_reasoning: false,
        }
    }

    fn print(&mut self, d: &Delta) {
        let mut out = std::io::stdout().lock();
        if !d.reasoning.is_empty() && !self.hide_reasoning {
            if !self.in_reasoning {
                self.in_reasoning = true;
                let _ = write!(
                    out,
                    "{}",
                    if self.tty { "\x1b[2m" } else { "Thinking...\n" }
                );
            }
            let _ = write!(out, "{}", d.reasoning);
        }
        if !d.content.is_empty() {
            self.end_reasoning(&mut out);
            let _ = write!(out, "{}", d.content);
        }
        let _ = out.flush();
    }

    fn end_reasoning(&mut self, out: &mut impl Write) {
        if self.in_reasoning {
            self.in_reasoning = false;
            let _ = write!(
                out,
                "{}",
                if self.tty {
                    "\x1b[0m\n"
                } else {
                    "\n...done thinking.\n\n"
                }
            );
        }
    }

    fn finish(&mut self) {
        let mut out = std::io::stdout().lock();
        self.end_reasoning(&mut out);
        let _ = writeln!(out);
        let _ = out.flush();
    }
}

fn stats_line(o: &GenerateOutput) -> String {
    let t = &o.timings;
    format!(
        "{} prompt tokens · time to first token {:.2} s · prefill {:.1} tok/s · decode {:.1} tok/s · {} tokens ({}{})",
        o.usage.prompt_tokens,
        t.time_to_first_token_s,
        t.prefill_tokens_per_s,
        t.decode_tokens_per_s,
        o.usage.completion_tokens,
        if o.usage.reasoning_tokens > 0 { format!("{} reasoning, ", o.usage.reasoning_tokens) } else { String::new() },
        o.finish_reason
    )
}

#[derive(Serialize)]
struct RunJson<'a> {
    model: String,
    reasoning_content: &'a Option<String>,
    content: &'a str,
    finish_reason: seek_types::FinishReason,
    usage: seek_types::Usage,
    timings: seek_engine::Timings,
    load_s: f64,
}

/// `seek run MODEL PROMPT`.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let Opened {
        loaded,
        tokenizer,
        load_s,
    } = open(&args.model)?;
    let sampling = args.gen.sampling(default_sampling(&tokenizer))?;
    let prompt = if args.raw {
        render_raw(&tokenizer, &args.prompt)?
    } else {
        let mut messages = Vec::new();
        if let Some(s) = &args.gen.system {
            messages.push(ChatMessage::system(s.clone()));
        }
        messages.push(ChatMessage::user(args.prompt.clone()));
        let kwargs = args.gen.template_kwargs()?;
        seek_engine::chat::render_chat_with(
            &tokenizer,
            &messages,
            &seek_engine::chat::ChatOptions {
                template_kwargs: kwargs.as_ref(),
                ..Default::default()
            },
        )?
    };
    let mut req = args.gen.request(&prompt, sampling);
    req.guide = args.constraint.guide(&tokenizer)?;
    if args.json {
        let out = generate(loaded.model.as_ref(), &tokenizer, &req, |_| {
            ControlFlow::Continue(())
        })?;
        let j = RunJson {
            model: loaded.info.path.display().to_string(),
            reasoning_content: &out.reasoning_content,
            content: &out.content,
            finish_reason: out.finish_reason,
            usage: out.usage,
            timings: out.timings,
            load_s,
        };
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    stream(
        loaded.model.as_ref(),
        &tokenizer,
        &req,
        args.gen.hide_reasoning,
    )?;
    Ok(())
}

/// Generates while printing, then prints the stats line to stderr.
fn stream(
    model: &dyn seek_models::CausalLm,
    tokenizer: &seek_tokenizer::Tokenizer,
    req: &GenerateRequest,
    hide_reasoning: bool,
) -> anyhow::Result<GenerateOutput> {
    let mut printer = Printer::new(hide_reasoning);
    let out = generate(model, tokenizer, req, |d| {
        printer.print(d);
        ControlFlow::Continue(())
    })?;
    printer.finish();
    eprintln!("{}", stats_line(&out));
    Ok(out)
}

/// `seek chat MODEL`.
pub fn chat(args: ChatArgs) -> anyhow::Result<()> {
    let Opened {
        loaded, tokenizer, ..
    } = open(&args.model)?;
    let sampling = args.gen.sampling(default_sampling(&tokenizer))?;
    let tty = std::io::stdin().is_terminal();
    eprintln!(
        "Chatting with {} ({}). /reset clears the history, /exit or Ctrl-D quits.",
        loaded
            .info
            .name
            .as_deref()
            .unwrap_or(&loaded.info.architecture),
        loaded.info.path.display()
    );
    let mut history: Vec<ChatMessage> = Vec::new();
    if let Some(s) = &args.gen.system {
        history.push(ChatMessage::system(s.clone()));
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if tty {
            eprint!(">>> ");
            let _ = std::io::stderr().flush();
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("cannot read from standard input")?;
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" | "/bye" => break,
            "/reset" | "/clear" => {
                history.retain(|m| m.role == "system");
                eprintln!("(history cleared)");
                continue;
            }
            _ => {}
        }
        history.push(ChatMessage::user(line));
        let kwargs = args.gen.template_kwargs()?;
        let prompt = seek_engine::chat::render_chat_with(
            &tokenizer,
            &history,
            &seek_engine::chat::ChatOptions {
                template_kwargs: kwargs.as_ref(),
                ..Default::default()
            },
        )?;
        let req = args.gen.request(&prompt, sampling.clone());
        let out = stream(
            loaded.model.as_ref(),
            &tokenizer,
            &req,
            args.gen.hide_reasoning,
        )?;
        let mut reply = ChatMessage::assistant(out.content.clone());
        reply.reasoning_content = out.reasoning_content.clone();
        history.push(reply);
    }
    Ok(())
}
