//! Streaming token ids to text without ever emitting half a character.

use seek_types::TokenId;

use crate::{Tokenizer, TokenizerError};

/// Turns a stream of generated ids into text pieces whose concatenation equals
/// [`Tokenizer::decode`] of all ids.
///
/// A byte-level BPE token can end in the middle of a UTF-8 character (an emoji or CJK character
/// is often split over two or three tokens), and a byte-fallback token can be a lone byte.
/// Decoding such a prefix gives U+FFFD, so the detokenizer keeps a window of recent ids and
/// emits the new text only once the window decodes without a trailing U+FFFD (the approach of
/// vLLM and `tokenizers`' `DecodeStream`). Bytes that are invalid for good are emitted as
/// U+FFFD as soon as a later token shows that they will not be completed.
#[derive(Debug)]
pub struct IncrementalDetokenizer<'a> {
    tok: &'a Tokenizer,
    skip_special_tokens: bool,
    /// The ids from the start of the window on.
    ids: Vec<TokenId>,
    /// `ids[..read]` has been emitted; `ids[..read]` decodes to the context the next piece is
    /// cut from, so that decoders that look at neighbours (a leading space) see them.
    read: usize,
}

impl<'a> IncrementalDetokenizer<'a> {
    /// A detokenizer for ids of `tok`; with `skip_special_tokens`, control tokens produce no
    /// text (as in [`Tokenizer::decode`]).
    pub fn new(tok: &'a Tokenizer, skip_special_tokens: bool) -> Self {
        Self {
            tok,
            skip_special_tokens,
            ids: Vec::new(),
            read: 0,
        }
    }

    /// Adds one generated id and returns the text that became printable (possibly empty).
    pub fn push(&mut self, id: TokenId) -> Result<String, TokenizerError> {
        if id as usize >= self.tok.vocab_size() {
            return Err(TokenizerError::UnknownTokenId {
                id,
                vocab_size: self.tok.vocab_size(),
            });
        }
        self.ids.push(id);
        let (context, full) = self.decode_window()?;
        if full.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        match full.strip_prefix(context.as_str()) {
            Some(new) if !new.is_empty() => {
                let new = new.to_string();
                // The piece just emitted becomes the next piece's context.
                self.ids.drain(..self.read);
                self.read = self.ids.len();
                Ok(new)
            }
            // Nothing new (a skipped special token), or a decoder whose output for the window
            // does not extend the context's: wait for more ids; `finish` flushes.
            _ => Ok(String::new()),
        }
    }

    /// Returns the text still held back (an incomplete character comes out as U+FFFD) and
    /// starts over with an empty window.
    pub fn finish(&mut self) -> Result<String, TokenizerError> {
        let (context, full) = self.decode_window()?;
        let rest = match full.strip_prefix(context.as_str()) {
            Some(new) => new.to_string(),
            None => full,
        };
        self.ids.clear();
        self.read = 0;
        Ok(rest)
    }

    fn decode_window(&self) -> Result<(String, String), TokenizerError> {
        let context = self
            .tok
            .decode(&self.ids[..self.read], self.skip_special_tokens)?;
        let full = self.tok.decode(&self.ids, self.skip_special_tokens)?;
        Ok((context, full))
    }
}
