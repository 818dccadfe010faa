use std::process::ExitCode;
use std::time::Instant;

use tessera_host::inference::{
    ChatMessage, ChatRole, GenerateRequest, ModelEngine, SamplingParams,
};

use super::engine::EngineArgs;

/// Arguments of `tessera generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// The text: a user message, or with --raw a text to continue.
    #[arg(short, long)]
    prompt: String,

    /// Continue the prompt as raw text instead of answering it as a chat.
    #[arg(long)]
    raw: bool,

    /// Most tokens to generate (the default of an expert's model calls
    /// and of the API).
    #[arg(long, default_value_t = tessera_host::inference::DEFAULT_MAX_TOKENS)]
    max_tokens: u32,

    /// Sampling temperature; 0 is greedy. The default is the one an
    /// expert's model call gets when it sets none, and the API's, so what
    /// you tune here behaves the same in an expert.
    #[arg(long, default_value_t = tessera_host::inference::DEFAULT_TEMPERATURE)]
    temperature: f32,

    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,

    /// Keep only the K most likely tokens.
    #[arg(long)]
    top_k: Option<u32>,

    /// Discourage repeats (1.0 is off).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,

    /// Sampler seed: the same seed gives the same text [default: a random
    /// one, printed after the answer so that the run can be repeated].
    #[arg(long)]
    seed: Option<u64>,

    /// Generate to --max-tokens even past the end-of-turn token (for
    /// timing a fixed decode length, as llama-bench does).
    #[arg(long)]
    ignore_eos: bool,

    /// Stop at this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,

    /// A system message before the prompt (chat only).
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,

    /// Generate through this LoRA adapter (a PEFT directory, for example
    /// what `tessera adapt` wrote).
    #[arg(long, value_name = "DIR")]
    adapter: Option<std::path::PathBuf>,

    #[command(flatten)]
    engine: EngineArgs,
}

pub async fn run(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    if !(args.temperature.is_finite() && args.temperature >= 0.0) {
        anyhow::bail!("--temperature must be a number >= 0");
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        anyhow::bail!("--top-p must be in (0, 1]");
    }
    if args.raw && args.system.is_some() {
        anyhow::bail!("--system applies to chats; with --raw, write it into the prompt");
    }
    let engine = args.engine.load()?;
    let adapter = match &args.adapter {
        Some(dir) => {
            let name = "adapter";
            engine.register_adapter(name, dir)?;
            Some(name.to_string())
        }
        None => None,
    };
    // RandomState is keyed from the OS's random source.
    let seed = args.seed.unwrap_or_else(|| {
        use std::hash::BuildHasher;
        std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now())
    });
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        repetition_penalty: args.repetition_penalty,
        max_tokens: args.max_tokens,
        seed: Some(seed),
        stop: args.stop,
        owner: None,
        ignore_eos: args.ignore_eos,
    };
    let started = Instant::now();
    let mut request = if args.raw {
        GenerateRequest::text(args.prompt, params)
    } else {
        let mut messages = Vec::new();
        if let Some(system) = args.system {
            messages.push(ChatMessage {
                role: ChatRole::System,
                content: system,
            });
        }
        messages.push(ChatMessage {
            role: ChatRole::User,
            content: args.prompt,
        });
        GenerateRequest::chat(messages, params)
    };
    request.adapter = adapter;
    let generation = engine.generate(request, None).await?;
    let elapsed = started.elapsed();
    super::print(&format!("{}\n", generation.text))?;
    // The seed only matters when sampling.
    let sampled = if args.temperature > 0.0 {
        format!(", temperature {}, seed {seed}", args.temperature)
    } else {
        ", greedy".to_string()
    };
    eprintln!(
        "[{} prompt + {} generated tokens in {:.2?}, {:.1} tok/s, finish: {:?}{sampled}]",
        generation.prompt_tokens,
        generation.completion_tokens,
        elapsed,
        f64::from(generation.completion_tokens) / elapsed.as_secs_f64(),
        generation.finish
    );
    Ok(ExitCode::SUCCESS)
}
