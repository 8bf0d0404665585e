//! Training data: JSONL in TRL's formats, tokenized through the model's chat template, with
//! the loss on the answer only.
//!
//! One JSON object per line, in any of TRL's dataset formats:
//! - conversational: `{"messages": [{"role": "user", "content": ..}, {"role": "assistant",
//!   "content": .., "reasoning_content": ..}]}`; the last assistant turn is learned;
//! - prompt-completion: `{"prompt": "..", "completion": ".."}` (plain text, no template) or
//!   with message lists (`"prompt": [{"role": "user", ..}], "completion": [{"role":
//!   "assistant", ..}]`, rendered with the template);
//! - language modelling: `{"text": ".."}` (every token learned).
//!
//! Reasoning is kept R1's way: an assistant turn's `reasoning_content` (or a `<think>…</think>`
//! block at the start of its content) becomes `<think>\n…\n</think>\n\n` before the answer,
//! written after the prompt exactly as `seek run` prompts the model (R1 conventions of
//! `seek_engine::chat`: system folded into the user turn, the answer opened with `<think>\n`).

use std::path::{Path, PathBuf};

use seek_tokenizer::Tokenizer;
use seek_types::{ChatMessage, TokenId};
use serde::Deserialize;

use crate::{io_err, Result, TrainError};

/// What to do with an example longer than `max_length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlong {
    /// Leave it out (counted in the log).
    Drop,
    /// Keep its first `max_length` tokens.
    Truncate,
}

impl std::str::FromStr for Overlong {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "drop" => Ok(Self::Drop),
            "truncate" => Ok(Self::Truncate),
            other => Err(format!("{other:?}: use drop or truncate")),
        }
    }
}

/// How examples are built.
#[derive(Debug, Clone)]
pub struct DataConfig {
    /// Longest example in tokens.
    pub max_length: usize,
    /// Drop or truncate longer ones.
    pub overlong: Overlong,
    /// Loss on the answer only (TRL's `assistant_only_loss` / `completion_only_loss`);
    /// `false` learns the prompt too.
    pub completion_only_loss: bool,
}

/// One tokenized example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Token ids.
    pub input_ids: Vec<TokenId>,
    /// `labels[j]`: the token the logits at `j` must predict, or `None` (no loss there).
    pub labels: Vec<Option<TokenId>>,
    /// The JSONL line it came from.
    pub line: usize,
}

/// A tokenized data file.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The file.
    pub path: PathBuf,
    /// Usable examples.
    pub examples: Vec<Example>,
    /// Longer than `max_length` and left out.
    pub dropped_overlong: usize,
    /// Longer than `max_length` and cut.
    pub truncated: usize,
}

impl Dataset {
    /// Supervised tokens in all examples.
    pub fn supervised_tokens(&self) -> usize {
        self.examples
            .iter()
            .map(|e| e.labels.iter().filter(|l| l.is_some()).count())
            .sum()
    }
}

#[derive(Deserialize)]
struct Message {
    role: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TextOrMessages {
    Text(String),
    Messages(Vec<Message>),
}

#[derive(Deserialize)]
struct Row {
    messages: Option<Vec<Message>>,
    prompt: Option<TextOrMessages>,
    completion: Option<TextOrMessages>,
    text: Option<String>,
}

/// Reads and tokenizes a JSONL file; errors name the file and line.
pub fn load_jsonl(path: &Path, tok: &Tokenizer, cfg: &DataConfig) -> Result<Dataset> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let mut ds = Dataset {
        path: path.to_path_buf(),
        examples: Vec::new(),
        dropped_overlong: 0,
        truncated: 0,
    };
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let err = |problem: String| TrainError::Data {
            path: path.to_path_buf(),
            line: line_no,
            problem,
        };
        let row: Row = serde_json::from_str(line)
            .map_err(|e| err(format!("not a JSON object of a known format: {e}")))?;
        let (ids, learn) = tokenize_row(row, tok).map_err(err)?;
        let mut ex = example(ids, learn, cfg.completion_only_loss, line_no);
        if ex.input_ids.len() > cfg.max_length {
            match cfg.overlong {
                Overlong::Drop => {
                    ds.dropped_overlong += 1;
                    continue;
                }
                Overlong::Truncate => {
                    ex.input_ids.truncate(cfg.max_length);
                    ex.labels.truncate(cfg.max_length);
                    if let Some(last) = ex.labels.last_mut() {
                        *last = None;
                    }
                    ds.truncated += 1;
                }
            }
        }
        if ex.labels.iter().all(Option::is_none) {
            return Err(err(
                "nothing to learn: the example has no answer tokens (an empty completion or assistant turn?)".into(),
            ));
        }
        ds.examples.push(ex);
    }
    if ds.examples.is_empty() {
        return Err(TrainError::Data {
            path: path.to_path_buf(),
            line: 0,
            problem: format!(
                "no usable examples ({} longer than max_length {} were dropped; raise --max_length or pass --overlong truncate)",
                ds.dropped_overlong, cfg.max_length
            ),
        });
    }
    Ok(ds)
}

/// Shifts "this token is learned" into labels: the logits at `j` predict token `j + 1`.
fn example(ids: Vec<TokenId>, learn: Vec<bool>, completion_only: bool, line: usize) -> Example {
    let labels = (0..ids.len())
        .map(|j| match ids.get(j + 1) {
            Some(&next) if !completion_only || learn[j + 1] => Some(next),
            _ => None,
        })
        .collect();
    Example {
        input_ids: ids,
        labels,
        line,
    }
}

type Tokens = (Vec<TokenId>, Vec<bool>);

fn tokenize_row(row: Row, tok: &Tokenizer) -> std::result::Result<Tokens, String> {
    let enc = |t: &str, special: bool| tok.encode(t, special).map_err(|e| e.to_string());
    if let Some(messages) = row.messages {
        return chat(messages, Vec::new(), tok);
    }
    match (row.prompt, row.completion) {
        (Some(TextOrMessages::Text(p)), Some(TextOrMessages::Text(c))) => {
            let mut ids = enc(&p, true)?;
            let n = ids.len();
            ids.extend(enc(&c, false)?);
            if let Some(&eos) = tok.eos_token_ids().first() {
                ids.push(eos);
            }
            let learn = (0..ids.len()).map(|i| i >= n).collect();
            return Ok((ids, learn));
        }
        (Some(TextOrMessages::Messages(p)), Some(TextOrMessages::Messages(c))) => {
            return chat(p, c, tok);
        }
        (Some(_), Some(_)) => {
            return Err(
                "prompt and completion must both be strings or both be message lists".into(),
            )
        }
        (Some(_), None) => return Err("a prompt without a completion; add \"completion\"".into()),
        (None, Some(_)) => return Err("a completion without a prompt; add \"prompt\"".into()),
        (None, None) => {}
    }
    if let Some(text) = row.text {
        let mut ids = enc(&text, true)?;
        if let Some(&eos) = tok.eos_token_ids().first() {
            ids.push(eos);
        }
        let learn = vec![true; ids.len()];
        return Ok((ids, learn));
    }
    Err(
        "no \"messages\", \"prompt\"/\"completion\" or \"text\" field (TRL's dataset formats)"
            .into(),
    )
}

/// The answer's reasoning and visible text: `reasoning_content` (or vLLM's `reasoning`), or a
/// leading `<think>…</think>` block of the content.
fn split_reasoning(m: &Message) -> (Option<String>, String) {
    let content = m.content.clone().unwrap_or_default();
    if let Some(r) = m.reasoning_content.clone().or_else(|| m.reasoning.clone()) {
        return (Some(r), content);
    }
    if let Some(end) = content.find("</think>") {
        let reasoning = content[..end].trim_start().trim_start_matches("<think>");
        let answer = content[end + "</think>".len()..].trim_start();
        return (
            Some(reasoning.trim_matches('\n').to_string()),
            answer.to_string(),
        );
    }
    (None, content)
}

/// A conversation (`prompt` messages, then `completion` messages, or one list whose last
/// assistant turn is the completion), rendered as `seek run` prompts the model.
fn chat(
    mut prompt: Vec<Message>,
    mut completion: Vec<Message>,
    tok: &Tokenizer,
) -> std::result::Result<Tokens, String> {
    if completion.is_empty() {
        let last = prompt
            .iter()
            .rposition(|m| m.role == "assistant")
            .ok_or("no assistant message to learn from")?;
        completion = prompt.split_off(last);
        completion.truncate(1);
    }
    if completion.len() != 1 || completion[0].role != "assistant" {
        return Err("the completion must be one assistant message".into());
    }
    if prompt.is_empty() {
        return Err("the conversation has no turn before the assistant's".into());
    }
    for m in &prompt {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool") {
            return Err(format!(
                "role {:?} is not one of system, user, assistant, tool",
                m.role
            ));
        }
    }
    let to_chat = |m: &Message| {
        let (reasoning, answer) = split_reasoning(m);
        ChatMessage {
            role: m.role.clone(),
            content: answer,
            reasoning_content: reasoning,
            ..ChatMessage::default()
        }
    };
    let msgs: Vec<ChatMessage> = prompt.iter().map(to_chat).collect();
    let rendered = seek_engine::chat::render_chat(tok, &msgs).map_err(|e| e.to_string())?;
    let (reasoning, answer) = split_reasoning(&completion[0]);
    // What the template writes after an assistant turn's content (`<|im_end|>\n`,
    // `<｜end▁of▁sentence｜>`): rendered around a marker and cut after it.
    const MARK: &str = "\u{E000}seek-answer\u{E000}";
    let mut with = msgs.clone();
    with.push(ChatMessage::assistant(MARK));
    let template = tok
        .chat_template()
        .ok_or("the model has no chat template")?;
    let full = template.render(&with, false).map_err(|e| e.to_string())?;
    let end = full
        .rfind(MARK)
        .map(|i| full[i + MARK.len()..].trim_end().to_string())
        .unwrap_or_default();
    let mut target = String::new();
    match (reasoning, rendered.starts_in_reasoning) {
        (Some(r), true) => target.push_str(&format!("{}\n</think>\n\n", r.trim_matches('\n'))),
        (Some(r), false) => {
            target.push_str(&format!("<think>\n{}\n</think>\n\n", r.trim_matches('\n')))
        }
        // A reasoning model's prompt opened `<think>\n`: an answer without reasoning closes it.
        (None, true) => target.push_str("\n</think>\n\n"),
        (None, false) => {}
    }
    target.push_str(&answer);
    target.push_str(&end);
    let mut ids = rendered.ids;
    let n = ids.len();
    ids.extend(tok.encode(&target, false).map_err(|e| e.to_string())?);
    if end.is_empty() {
        if let Some(&eos) = tok.eos_token_ids().first() {
            ids.push(eos);
        }
    }
    let learn = (0..ids.len()).map(|i| i >= n).collect();
    Ok((ids, learn))
}
