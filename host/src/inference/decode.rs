//! One generating sequence, token by token: sampling, incremental
//! detokenization, stop strings and streamed deltas.
//!
//! The answer's text grows by the piece each new token settles, found the
//! way Hugging Face's text-generation-inference does: decode a short
//! window (the tokens of the last settled piece and the new ones) and keep
//! what lies past the window's previous text, once it no longer ends in an
//! incomplete character. A token thus costs a few tokens of decoding, not
//! the whole answer, and stop strings are searched for only where the new
//! piece could complete one.

use super::batch::Detokenize;
use super::sampler::Sampler;
use super::{Deltas, Finish, Generation, SamplingParams};

/// The state of one generating sequence.
pub(super) struct Decode {
    sampler: Sampler,
    stop: Vec<String>,
    /// Bytes of the longest stop string.
    longest_stop: usize,
    prompt_len: usize,
    max_tokens: usize,
    logprobs: Vec<(String, f32)>,
    /// The generated ids, beside `logprobs`.
    ids: Vec<u32>,
    text: String,
    window: Window,
    /// Where text deltas go, for streaming callers.
    stream: Option<Deltas>,
    /// Bytes of `text` already sent on `stream`.
    streamed: usize,
    /// The sampler's seed.
    seed: u64,
    /// Generate past the end-of-turn token.
    ignore_eos: bool,
}

impl Decode {
    /// A sequence whose prompt is `prompt_len` tokens, generating at most
    /// `max_tokens` (already clamped to the context).
    pub(super) fn new(
        params: &SamplingParams,
        seed: u64,
        prompt_len: usize,
        max_tokens: usize,
        stream: Option<Deltas>,
    ) -> Decode {
        let stop: Vec<String> = params
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect();
        Decode {
            sampler: Sampler::new(params, seed),
            longest_stop: stop.iter().map(String::len).max().unwrap_or(0),
            stop,
            prompt_len,
            max_tokens,
            ignore_eos: params.ignore_eos,
            logprobs: Vec::new(),
            ids: Vec::new(),
            text: String::new(),
            window: Window::default(),
            stream,
            streamed: 0,
            seed: params.seed.unwrap_or(seed),
        }
    }

    /// Sample the token after `tokens` (prompt and answer so far) from
    /// `logits`, append it, and return the answer when it is done.
    pub(super) fn advance(
        &mut self,
        tokens: &mut Vec<u32>,
        logits: &[f32],
        detokenizer: &impl Detokenize,
    ) -> Option<Generation> {
        let picked = self.sampler.sample(logits, tokens);
        let generated = tokens.len() - self.prompt_len;
        if picked.token == detokenizer.eos() && !self.ignore_eos {
            // The end-of-turn token is not part of the answer: counts and
            // log-probabilities cover the text only.
            let rest = self.window.rest(&tokens[self.prompt_len..], detokenizer);
            self.text.push_str(&rest);
            return Some(self.finish(Finish::Stop, generated));
        }
        tokens.push(picked.token);
        self.ids.push(picked.token);
        self.logprobs
            .push((detokenizer.decode(&[picked.token]), picked.logprob));
        let answer = &tokens[self.prompt_len..];
        let settled_before = self.text.len();
        if let Some(piece) = self.window.next(answer, detokenizer) {
            self.text.push_str(&piece);
        }
        let last = generated + 1 >= self.max_tokens;
        if last {
            self.text.push_str(&self.window.rest(answer, detokenizer));
        }
        if let Some(cut) = self.find_stop(settled_before) {
            self.text.truncate(cut);
            return Some(self.finish(Finish::Stop, generated + 1));
        }
        if last {
            return Some(self.finish(Finish::Length, generated + 1));
        }
        self.flush(false);
        None
    }

    /// The first stop string in the text, searching only where one could
    /// end in the text added after byte `from` (earlier text was searched
    /// when it was added).
    fn find_stop(&self, from: usize) -> Option<usize> {
        let mut start = from.saturating_sub(self.longest_stop.saturating_sub(1));
        while !self.text.is_char_boundary(start) {
            start -= 1;
        }
        let tail = &self.text[start..];
        self.stop
            .iter()
            .filter_map(|s| tail.find(s.as_str()))
            .min()
            .map(|at| start + at)
    }

    /// Send what is settled of the text: all of it when `last`, else all
    /// but what might still become the start of a stop string.
    fn flush(&mut self, last: bool) {
        let Some(tx) = &self.stream else { return };
        let mut end = if last {
            self.text.len()
        } else {
            let hold = self.longest_stop.saturating_sub(1);
            self.text.len().saturating_sub(hold)
        };
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        if end > self.streamed {
            let _ = tx.send(self.text[self.streamed..end].to_string());
            self.streamed = end;
        }
    }

    fn finish(&mut self, finish: Finish, completion_tokens: usize) -> Generation {
        self.flush(true);
        Generation {
            text: std::mem::take(&mut self.text),
            finish,
            prompt_tokens: self.prompt_len as u32,
            completion_tokens: completion_tokens as u32,
            token_logprobs: std::mem::take(&mut self.logprobs),
            token_ids: std::mem::take(&mut self.ids),
            seed: self.seed,
        }
    }
}

/// The window of answer tokens decoded for the next piece of text:
/// `prefix..read` produced the last settled piece, `read..` is new.
#[derive(Debug, Default)]
pub(super) struct Window {
    prefix: usize,
    read: usize,
}

impl Window {
    /// The text the newest tokens of `answer` settle, if they end on a
    /// whole character.
    pub(super) fn next(&mut self, answer: &[u32], detokenizer: &impl Detokenize) -> Option<String> {
        let before = detokenizer.decode(&answer[self.prefix..self.read]);
        let now = detokenizer.decode(&answer[self.prefix..]);
        if now.len() <= before.len() || now.ends_with('\u{FFFD}') {
            return None;
        }
        let piece = now.get(before.len()..)?.to_string();
        self.prefix = self.read;
        self.read = answer.len();
        Some(piece)
    }

    /// What is left unsettled when the answer ends: bytes that never
    /// formed a character come out as U+FFFD, as a whole decode gives them.
    pub(super) fn rest(&self, answer: &[u32], detokenizer: &impl Detokenize) -> String {
        let before = detokenizer.decode(&answer[self.prefix..self.read]);
        let now = detokenizer.decode(&answer[self.prefix..]);
        now.get(before.len()..).unwrap_or_default().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids 1..=26 are `a`..`z`, 27 and 28 the two bytes of `é`, 29 a
    /// lone continuation byte; 0 is the end of turn.
    struct Bytes;

    impl Detokenize for Bytes {
        fn decode(&self, ids: &[u32]) -> String {
            let bytes: Vec<u8> = ids
                .iter()
                .filter_map(|&id| match id {
                    1..=26 => Some(b'a' + id as u8 - 1),
                    27 => Some(0xC3),
                    28 => Some(0xA9),
                    29 => Some(0x80),
                    _ => None,
                })
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }

        fn eos(&self) -> u32 {
            0
        }
    }

    fn one_hot(id: u32) -> Vec<f32> {
        let mut row = vec![0.0; 32];
        row[id as usize] = 10.0;
        row
    }

    fn greedy(stop: &[&str], max_tokens: usize, stream: Option<Deltas>) -> Decode {
        let params = SamplingParams {
            temperature: 0.0,
            stop: stop.iter().map(|s| s.to_string()).collect(),
            ..SamplingParams::default()
        };
        Decode::new(&params, 1, 1, max_tokens, stream)
    }

    /// Feed `answer` after a one-token prompt; the generation and the
    /// streamed deltas.
    fn run(answer: &[u32], stop: &[&str], max_tokens: usize) -> (Generation, Vec<String>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut decode = greedy(stop, max_tokens, Some(tx));
        let mut tokens = vec![1];
        let mut done = None;
        for &id in answer {
            if let Some(generation) = decode.advance(&mut tokens, &one_hot(id), &Bytes) {
                done = Some(generation);
                break;
            }
        }
        let mut deltas = Vec::new();
        while let Ok(d) = rx.try_recv() {
            deltas.push(d);
        }
        (done.expect("the answer ended"), deltas)
    }

    #[test]
    fn a_split_character_is_sent_whole() {
        let (generation, deltas) = run(&[2, 27, 28, 3, 0], &[], 100);
        assert_eq!(generation.text, "béc");
        assert_eq!(generation.finish, Finish::Stop);
        assert_eq!(generation.completion_tokens, 4);
        assert_eq!(deltas, ["b", "é", "c"]);
    }

    #[test]
    fn bytes_that_never_form_a_character_end_as_replacement() {
        let (generation, deltas) = run(&[2, 27, 0], &[], 100);
        assert_eq!(generation.text, "b\u{FFFD}");
        assert_eq!(deltas.concat(), generation.text);
        let (generation, _) = run(&[2, 27], &[], 2);
        assert_eq!(generation.text, "b\u{FFFD}");
        assert_eq!(generation.finish, Finish::Length);
    }

    #[test]
    fn a_stop_string_across_tokens_cuts_the_answer_and_the_stream() {
        let (generation, deltas) = run(&[2, 3, 4, 5, 6, 7], &["de"], 100);
        assert_eq!(generation.text, "bc");
        assert_eq!(generation.finish, Finish::Stop);
        assert_eq!(generation.completion_tokens, 4);
        assert_eq!(deltas.concat(), "bc");
        // "d" might have begun "de": it was never sent.
        assert!(deltas.iter().all(|d| !d.contains('d')), "{deltas:?}");
    }

    #[test]
    fn the_first_of_several_stop_strings_wins() {
        let (generation, _) = run(&[2, 3, 4, 5, 6, 7], &["ef", "cd"], 100);
        assert_eq!(generation.text, "b");
    }

    #[test]
    fn length_ends_the_answer_with_every_token_counted() {
        let (generation, deltas) = run(&[2, 3, 4, 5], &["zz"], 3);
        assert_eq!(generation.text, "bcd");
        assert_eq!(generation.finish, Finish::Length);
        assert_eq!(generation.completion_tokens, 3);
        assert_eq!(generation.token_logprobs.len(), 3);
        assert_eq!(deltas.concat(), "bcd");
    }

    /// The text pieces add up to what the tokenizer decodes from all the
    /// ids at once (the `tokenizers` crate's own decode is the reference),
    /// through multi-byte characters split across byte-level tokens.
    #[test]
    fn pieces_add_up_to_the_whole_decode_on_the_real_tokenizer() {
        let (_, tokenizer) = crate::inference::open_weights(&crate::inference::test_smollm2())
            .expect("opening SmolLM2");
        for text in [
            "The capital of France is Paris.",
            "Héllo, 世界! 👋🏽 naïve café — “quotes”\n\tfn main() { println!(\"{}\", 1 + 2); }",
            "  leading spaces, 12345 digits, ÅÄÖ and 🇫🇷 flags",
        ] {
            let ids = tokenizer.encode(text).unwrap();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let params = SamplingParams {
                temperature: 0.0,
                ..SamplingParams::default()
            };
            let mut decode = Decode::new(&params, 1, 1, ids.len(), Some(tx));
            let mut tokens = vec![tokenizer.bos()];
            let mut done = None;
            for &id in &ids {
                let mut row = vec![0.0; tokenizer.vocab_size()];
                row[id as usize] = 30.0;
                done = decode.advance(&mut tokens, &row, &tokenizer);
            }
            let generation = done.expect("ends at max_tokens");
            let whole = tokenizer.decode(&ids, false).unwrap();
            assert_eq!(generation.text, whole);
            assert_eq!(generation.text, text);
            let mut deltas = Vec::new();
            while let Ok(d) = rx.try_recv() {
                assert!(!d.contains('\u{FFFD}'), "{d:?}");
                deltas.push(d);
            }
            assert_eq!(deltas.concat(), whole);
        }
    }
}
