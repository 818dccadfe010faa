//! The scheduler on a fake model: fair turns, KV admission, queueing,
//! cancellation, chunked prefill and panic recovery, with no weights.

use std::sync::Arc;
use std::sync::Mutex;

use tokio::sync::oneshot::error::TryRecvError;

use super::*;
use crate::inference::test_smollm2;

/// Decoded text: id 1..=26 is `a`..`z`; 0 is the end of turn.
struct Letters;

impl Detokenize for Letters {
    fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .filter(|&&id| (1..=26).contains(&id))
            .map(|&id| char::from(b'a' + id as u8 - 1))
            .collect()
    }

    fn eos(&self) -> u32 {
        0
    }
}

/// A model whose next token is the last one plus one (`z` is followed by
/// the end of turn); it records what each step fed, and panics on
/// `POISON`.
#[derive(Default)]
struct Counting {
    /// Per step, the tokens each input fed.
    steps: Arc<Mutex<Vec<Vec<usize>>>>,
}

const VOCAB: usize = 32;
const CONTEXT: usize = 64;
/// One MiB per token keeps the figures in refusals readable.
const KV_BYTES: usize = 1 << 20;
const POISON: u32 = 31;

impl BatchModel for Counting {
    type Cache = Vec<u32>;

    fn shape(&self) -> ModelShape {
        ModelShape {
            context: CONTEXT,
            vocab: VOCAB,
            kv_bytes_per_token: KV_BYTES,
        }
    }

    fn new_cache(&self) -> Vec<u32> {
        Vec::new()
    }

    fn truncate(&self, cache: &mut Vec<u32>, len: usize) {
        cache.truncate(len);
    }

    fn step(&self, inputs: &mut [StepInput<'_, Vec<u32>>]) -> Vec<Vec<Vec<f32>>> {
        self.steps
            .lock()
            .unwrap()
            .push(inputs.iter().map(|i| i.tokens.len()).collect());
        inputs
            .iter_mut()
            .map(|input| {
                assert!(!input.tokens.contains(&POISON), "poisoned token");
                input.cache.extend_from_slice(input.tokens);
                assert!(input.cache.len() <= CONTEXT, "context overflow");
                let rows = if input.all_logits {
                    input.tokens.to_vec()
                } else {
                    vec![*input.tokens.last().unwrap()]
                };
                rows.into_iter()
                    .map(|last| {
                        let mut logits = vec![0.0; VOCAB];
                        logits[((last + 1) % 27) as usize] = 20.0;
                        logits
                    })
                    .collect()
            })
            .collect()
    }
}

type Answer = oneshot::Receiver<Result<Output, ModelError>>;

struct Bench {
    scheduler: Scheduler<Counting, Letters>,
    steps: Arc<Mutex<Vec<Vec<usize>>>>,
    stats: Arc<Counters>,
}

fn bench(limits: Limits) -> Bench {
    let model = Counting::default();
    let steps = model.steps.clone();
    let stats = Arc::new(Counters::default());
    let scheduler = Scheduler::new(model, None, Arc::new(Letters), limits, stats.clone());
    Bench {
        scheduler,
        steps,
        stats,
    }
}

fn limits(max_batch: usize, kv_tokens: usize) -> Limits {
    Limits {
        max_batch,
        prefill_chunk: 256,
        kv_budget_bytes: kv_tokens * KV_BYTES,
    }
}

impl Bench {
    fn generate(&mut self, owner: &str, prompt: &[u32], max_tokens: u32) -> Answer {
        let params = SamplingParams {
            temperature: 0.0,
            max_tokens,
            ..SamplingParams::default()
        };
        self.submit(
            owner,
            JobKind::Generate {
                prompt: prompt.to_vec(),
                params,
                stream: None,
            },
        )
    }

    fn submit(&mut self, owner: &str, kind: JobKind) -> Answer {
        let (reply, answer) = oneshot::channel();
        self.scheduler.enqueue(Job {
            owner: owner.into(),
            kind,
            reply,
            adapter: None,
        });
        answer
    }

    /// Run rounds until every answer is in; the indexes of `answers` in
    /// the order they were answered, with the answers.
    fn drain(&mut self, mut answers: Vec<Answer>) -> Vec<(usize, Result<Output, ModelError>)> {
        let mut done = Vec::new();
        for _ in 0..1_000 {
            for (index, answer) in answers.iter_mut().enumerate() {
                match answer.try_recv() {
                    Ok(output) => done.push((index, output)),
                    Err(TryRecvError::Empty) => {}
                    Err(TryRecvError::Closed) => {}
                }
            }
            if done.len() == answers.len() {
                return done;
            }
            self.scheduler.round();
        }
        panic!(
            "the scheduler never answered: {} of {}",
            done.len(),
            answers.len()
        );
    }
}

fn text(output: &Result<Output, ModelError>) -> String {
    match output {
        Ok(Output::Generation(g)) => g.text.clone(),
        other => panic!("not a generation: {other:?}"),
    }
}

fn error(output: &Result<Output, ModelError>) -> ModelError {
    match output {
        Err(e) => e.clone(),
        other => panic!("not an error: {other:?}"),
    }
}

#[test]
fn a_generation_runs_to_its_end_of_turn() {
    let mut bench = bench(limits(4, 64));
    let answer = bench.generate("", &[23], 20);
    let done = bench.drain(vec![answer]);
    // After `w` come x, y, z, then the end of turn.
    assert_eq!(text(&done[0].1), "xyz");
    let stats = bench.stats.stats();
    assert_eq!(
        stats.generated_tokens, 4,
        "three letters and the end of turn"
    );
    assert_eq!(stats.reserved_kv_tokens, 0);
}

#[test]
fn ignore_eos_generates_to_max_tokens() {
    let mut bench = bench(limits(4, 64));
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: 6,
        ignore_eos: true,
        ..SamplingParams::default()
    };
    let answer = bench.submit(
        "",
        JobKind::Generate {
            prompt: vec![23],
            params,
            stream: None,
        },
    );
    let done = bench.drain(vec![answer]);
    let Ok(Output::Generation(g)) = &done[0].1 else {
        panic!("{:?}", done[0].1);
    };
    // x, y, z, the end of turn (no text), then on: a, b.
    assert_eq!(g.text, "xyzab");
    assert_eq!(g.completion_tokens, 6);
    assert_eq!(g.finish, Finish::Length);
}

#[test]
fn owners_take_turns_whatever_the_order_they_asked_in() {
    let mut bench = bench(limits(1, 64));
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(bench.generate("greedy", &[1], 2));
    }
    for _ in 0..2 {
        answers.push(bench.generate("polite", &[1], 2));
    }
    let order: Vec<usize> = bench.drain(answers).into_iter().map(|(i, _)| i).collect();
    // One at a time (max_batch 1): greedy, polite, greedy, polite, greedy.
    assert_eq!(order, [0, 3, 1, 4, 2]);
}

#[test]
fn a_job_larger_than_the_whole_kv_budget_is_refused_with_the_numbers() {
    let mut bench = bench(limits(4, 8));
    let too_big = bench.generate("", &[1, 2, 3], 7);
    let fits = bench.generate("", &[1, 2, 3], 5);
    let done = bench.drain(vec![too_big, fits]);
    let err = error(&done.iter().find(|(i, _)| *i == 0).unwrap().1);
    let ModelError::LimitExceeded(message) = &err else {
        panic!("{err:?}")
    };
    for part in [
        "10 tokens (10 MiB)",
        "KV budget of 8 MiB",
        "--kv-budget-mib",
    ] {
        assert!(message.contains(part), "{part:?} missing from {message}");
    }
    assert_eq!(
        text(&done.iter().find(|(i, _)| *i == 1).unwrap().1),
        "defgh"
    );
}

#[test]
fn a_job_waits_for_kv_room_and_runs_when_it_is_freed() {
    let mut bench = bench(limits(4, 10));
    let first = bench.generate("a", &[1, 2], 6);
    let second = bench.generate("b", &[1, 2], 6);
    bench.scheduler.round();
    let stats = bench.stats.stats();
    assert_eq!((stats.active, stats.queued), (1, 1), "{stats:?}");
    assert_eq!(stats.reserved_kv_tokens, 8);
    let done = bench.drain(vec![first, second]);
    assert_eq!(done.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(text(&done[1].1), "cdefgh");
    // The two never ran side by side.
    assert!(bench.steps.lock().unwrap().iter().all(|s| s.len() == 1));
}

#[test]
fn cancelled_jobs_are_dropped_and_free_their_cache() {
    let mut bench = bench(limits(1, 64));
    let running = bench.generate("a", &[1], 40);
    let queued = bench.generate("b", &[1], 40);
    bench.scheduler.round();
    assert_eq!(bench.stats.stats().reserved_kv_tokens, 41);
    drop(running);
    drop(queued);
    bench.scheduler.round();
    let stats = bench.stats.stats();
    assert_eq!(stats.cancelled, 2);
    assert_eq!(
        (stats.active, stats.queued, stats.reserved_kv_tokens),
        (0, 0, 0)
    );
    let next = bench.generate("c", &[24], 5);
    assert_eq!(text(&bench.drain(vec![next])[0].1), "yz");
}

#[test]
fn a_long_prompt_is_fed_in_chunks_beside_decoding_sequences() {
    let mut bench = bench(Limits {
        prefill_chunk: 4,
        ..limits(4, 64)
    });
    let short = bench.generate("a", &[1, 2], 8);
    bench.scheduler.round();
    let long = bench.generate("b", &(1..=10).collect::<Vec<_>>(), 3);
    let done = bench.drain(vec![short, long]);
    let steps = bench.steps.lock().unwrap().clone();
    // The short prompt fits one step; then it decodes one token a step
    // while the long one is fed 3 at a time (the chunk less the decoder's
    // one), then 1 to finish its prompt, then both decode.
    assert_eq!(
        steps[..5],
        [vec![2], vec![1, 3], vec![1, 3], vec![1, 3], vec![1, 1]]
    );
    assert_eq!(text(&done.iter().find(|(i, _)| *i == 1).unwrap().1), "klm");
}

#[test]
fn prompts_that_cannot_run_are_refused_and_the_rest_served() {
    let mut bench = bench(limits(4, 1_000));
    let outside = bench.generate("", &[1, VOCAB as u32], 2);
    let too_long = bench.generate("", &[1; CONTEXT], 2);
    let fine = bench.generate("", &[1], 2);
    let done = bench.drain(vec![outside, too_long, fine]);
    let by = |i| &done.iter().find(|(j, _)| *j == i).unwrap().1;
    let err = error(by(0));
    assert!(err.to_string().contains("token id 32 is outside"), "{err}");
    let err = error(by(1));
    assert!(err.to_string().contains("64 tokens"), "{err}");
    assert_eq!(text(by(2)), "bc");
}

#[test]
fn the_context_caps_max_tokens() {
    let mut bench = bench(limits(4, 1_000));
    let prompt: Vec<u32> = [1; CONTEXT - 3].to_vec();
    let answer = bench.generate("", &prompt, 1_000);
    let done = bench.drain(vec![answer]);
    let Ok(Output::Generation(generation)) = &done[0].1 else {
        panic!("{:?}", done[0].1)
    };
    assert_eq!(generation.completion_tokens, 3);
    assert_eq!(generation.finish, Finish::Length);
}

#[test]
fn scores_sum_the_log_likelihood_of_the_continuation() {
    let mut bench = bench(limits(4, 64));
    // After 1 the model is sure of 2 and of 3 after 2: log p ≈ 0 each; a
    // continuation it does not expect scores far lower.
    let likely = bench.submit(
        "",
        JobKind::Score {
            tokens: vec![1, 2, 3],
            from: 1,
        },
    );
    let unlikely = bench.submit(
        "",
        JobKind::Score {
            tokens: vec![1, 5, 9],
            from: 1,
        },
    );
    let done = bench.drain(vec![likely, unlikely]);
    let score = |i| match &done.iter().find(|(j, _)| *j == i).unwrap().1 {
        Ok(Output::Score(s)) => s.iter().map(|t| f64::from(t.logprob)).sum::<f64>(),
        other => panic!("{other:?}"),
    };
    assert!(score(0) > -0.001, "{}", score(0));
    assert!(score(1) < -30.0, "{}", score(1));
}

#[test]
fn choices_read_the_prompt_once_and_score_like_separate_scores() {
    // A 40-token prompt and five 10-token continuations: the fake model
    // panics past 64 cached tokens, so this passes only if the cache goes
    // back to the prompt between continuations.
    let prompt: Vec<u32> = (0..40).map(|i| i % 27).collect();
    // After token t the model is sure of t + 1 (mod 27): the first
    // continuation goes on from the prompt's last token (12), the others
    // jump.
    let continuations: Vec<Vec<u32>> = (0..5u32)
        .map(|c| {
            (0..10)
                .map(|i| if c == 0 { 13 + i } else { (c * 3 + i * 2) % 27 })
                .collect()
        })
        .collect();
    let mut bench = bench(limits(4, 64));
    let mut answers = vec![bench.submit(
        "",
        JobKind::Choices {
            prompt: prompt.clone(),
            continuations: continuations.clone(),
        },
    )];
    for c in &continuations {
        let tokens = [prompt.as_slice(), c].concat();
        answers.push(bench.submit("", JobKind::Score { tokens, from: 40 }));
    }
    let done = bench.drain(answers);
    let of = |i: usize| &done.iter().find(|(j, _)| *j == i).unwrap().1;
    let Ok(Output::Choices(choices)) = of(0) else {
        panic!("{:?}", of(0));
    };
    assert_eq!(choices.len(), 5);
    for (c, choice) in choices.iter().enumerate() {
        let Ok(Output::Score(alone)) = of(c + 1) else {
            panic!("{:?}", of(c + 1));
        };
        assert_eq!(choice, alone, "continuation {c}");
        assert_eq!(choice.len(), 10);
    }
    let sum = |s: &[TokenScore]| s.iter().map(|t| f64::from(t.logprob)).sum::<f64>();
    assert!(sum(&choices[0]) > -0.01, "{}", sum(&choices[0]));
    for choice in &choices[1..] {
        assert!(sum(choice) < -30.0, "{}", sum(choice));
    }
}

#[test]
fn choices_refuse_an_empty_list_or_an_empty_continuation() {
    let mut bench = bench(limits(4, 64));
    let none = bench.submit(
        "",
        JobKind::Choices {
            prompt: vec![1, 2],
            continuations: Vec::new(),
        },
    );
    let empty = bench.submit(
        "",
        JobKind::Choices {
            prompt: vec![1, 2],
            continuations: vec![vec![3], Vec::new()],
        },
    );
    let too_long = bench.submit(
        "",
        JobKind::Choices {
            prompt: vec![1; 40],
            continuations: vec![vec![3], vec![4; 30]],
        },
    );
    let done = bench.drain(vec![none, empty, too_long]);
    for (i, output) in &done {
        let err = error(output);
        let expected = if *i == 2 { "context" } else { "continuation" };
        assert!(
            matches!(&err, ModelError::InvalidInput(m) if m.contains(expected)),
            "{err}"
        );
    }
}

#[test]
fn a_panicking_step_fails_its_sequences_and_the_next_job_is_served() {
    let mut bench = bench(limits(4, 64));
    // Only the model refuses the poison token, so it gets past admission.
    let poisoned = bench.generate("", &[1, POISON], 2);
    let done = bench.drain(vec![poisoned]);
    let err = error(&done[0].1);
    assert!(
        matches!(&err, ModelError::Failed(m) if m.contains("poisoned token") && m.contains("retry")),
        "{err}"
    );
    let health = bench.stats.health();
    assert_eq!(health.recovered_failures, 1);
    assert!(health.last_failure.unwrap().contains("poisoned"));
    assert_eq!(bench.stats.stats().reserved_kv_tokens, 0);
    let next = bench.generate("", &[1], 2);
    assert_eq!(text(&bench.drain(vec![next])[0].1), "bc");
}

/// The same recovery on the real model: a token the embedding table does
/// not have, slipped in past admission, makes burn panic inside a step.
/// Before the guard, the panic ended the engine thread and every later
/// request failed.
#[test]
fn a_panicking_round_of_the_real_model_fails_its_jobs_and_the_engine_goes_on() {
    let (weights, tokenizer) = crate::inference::open_weights(&test_smollm2()).unwrap();
    let model =
        crate::inference::llama::Llama::load(weights.as_ref(), &burn::tensor::Device::flex())
            .unwrap();
    let vocab = model.config().vocab as u32;
    let tokenizer = Arc::new(tokenizer);
    let stats = Arc::new(Counters::default());
    let mut scheduler = Scheduler::new(
        model,
        None,
        tokenizer.clone(),
        limits(4, 4_096),
        stats.clone(),
    );
    let (reply, mut broken) = oneshot::channel();
    let cache = scheduler.model.new_cache();
    scheduler.active.push(Sequence {
        reply,
        tokens: vec![vocab + 7],
        cache,
        fed: 0,
        reserved: 1,
        purpose: Purpose::Logits,
        adapter: None,
    });
    scheduler.reserved_tokens = 1;
    scheduler.round();
    let err = broken.try_recv().unwrap().unwrap_err();
    assert!(
        matches!(&err, ModelError::Failed(m) if m.contains("out of range") && m.contains("retry")),
        "{err}"
    );
    assert_eq!(stats.stats().failures, 1);
    assert!(scheduler.active.is_empty());
    assert_eq!(scheduler.reserved_tokens, 0);

    let (reply, mut answer) = oneshot::channel();
    let tokens = tokenizer.encode_prompt("The capital of France is").unwrap();
    scheduler.enqueue(Job {
        owner: String::new(),
        kind: JobKind::Logits { tokens },
        reply,
        adapter: None,
    });
    let logits = loop {
        scheduler.round();
        match answer.try_recv() {
            Ok(Ok(Output::Logits(l))) => break l,
            Ok(_) => panic!("wrong answer"),
            Err(TryRecvError::Empty) => continue,
            Err(e) => panic!("{e}"),
        }
    };
    let top = crate::inference::sampler::argmax(&logits);
    assert_eq!(tokenizer.token(top).as_deref(), Some("ĠParis"));
}
