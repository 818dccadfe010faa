use std::process::ExitCode;

use tessera_host::embed::cosine;
use tessera_host::inference::ModelEngine;

use super::engine::EngineArgs;

/// Arguments of `tessera embed`.
#[derive(Debug, clap::Args)]
pub struct EmbedArgs {
    /// The texts to embed.
    #[arg(required = true, value_name = "TEXT")]
    texts: Vec<String>,

    /// Print the vectors as JSON instead of a similarity table.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    engine: EngineArgs,
}

pub async fn run(args: EmbedArgs) -> anyhow::Result<ExitCode> {
    let engine = args.engine.load()?;
    let vectors = engine.embed(args.texts.clone()).await?;
    if args.json {
        super::print(&format!("{}\n", serde_json::to_string(&vectors)?))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::new();
    for (i, (text, v)) in args.texts.iter().zip(&vectors).enumerate() {
        let head: Vec<String> = v.iter().take(4).map(|x| format!("{x:+.4}")).collect();
        out += &format!(
            "[{i}] {} dims [{}, ...]  {text}\n",
            v.len(),
            head.join(", ")
        );
    }
    if vectors.len() > 1 {
        out += "cosine similarity:\n";
        for i in 0..vectors.len() {
            for j in i + 1..vectors.len() {
                out += &format!("  [{i}]~[{j}] {:.4}\n", cosine(&vectors[i], &vectors[j]));
            }
        }
    }
    super::print(&out)?;
    Ok(ExitCode::SUCCESS)
}
