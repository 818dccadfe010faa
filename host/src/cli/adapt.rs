//! `tessera adapt`: train a LoRA adapter on a JSON-lines dataset.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tessera_host::inference::llama::Llama;
use tessera_host::inference::lora::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, Target};
use tessera_host::inference::train::{AdaptOptions, Dataset, Example, Trainer, mean_loss, split};
use tessera_host::inference::{DeviceChoice, ModelStore, SMOLLM2, open_weights};

/// The file beside the adapter that says how it was made.
pub const REPORT_FILE: &str = "tessera-adapt.json";

/// Arguments of `tessera adapt`.
#[derive(Debug, clap::Args)]
pub struct AdaptArgs {
    /// Training data, JSON lines: {"messages": [...]} (the loss learns the
    /// assistant turns) or {"prompt": ..., "completion": ...} (it learns the
    /// completion).
    #[arg(long, value_name = "FILE")]
    data: PathBuf,

    /// Where to write the adapter (PEFT's adapter_config.json and
    /// adapter_model.safetensors); written after every epoch.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    rank: usize,

    /// LoRA alpha: the update is scaled by alpha / rank.
    #[arg(long, default_value_t = 16.0)]
    alpha: f64,

    /// Projections to adapt, comma-separated: q, k, v, o, gate, up, down
    /// (or PEFT's names, q_proj, ...), or `all`.
    #[arg(long, default_value = "q,v", value_name = "LIST")]
    targets: String,

    /// Passes over the training examples.
    #[arg(long, default_value_t = 3)]
    epochs: usize,

    /// Adam's learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,

    /// Seed of the initial weights, the held-out split and the example
    /// order: the same seed and data give the same adapter.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Examples per optimizer step (one forward pass).
    #[arg(long, default_value_t = 4)]
    batch: usize,

    /// Fraction of the examples held out to report the loss on.
    #[arg(long, default_value_t = 0.1)]
    holdout: f64,

    /// Tokens kept of each example (longer ones are cut).
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,

    /// Replace an adapter already in --out.
    #[arg(long)]
    force: bool,

    /// The models directory [default: $TESSERA_MODELS_DIR or <user data dir>/tessera/models].
    #[arg(long, value_name = "DIR")]
    models_dir: Option<PathBuf>,

    /// The base model to adapt instead of SmolLM2: a .gguf file or a
    /// Hugging Face directory.
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,

    /// Where to train: cpu (burn flex) or wgpu [default: auto].
    #[arg(long, value_name = "cpu|wgpu|auto")]
    device: Option<DeviceChoice>,
}

/// Parse `--targets`.
fn parse_targets(list: &str) -> anyhow::Result<Vec<Target>> {
    if list.trim() == "all" {
        return Ok(Target::ALL.to_vec());
    }
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| {
            let short = name.strip_suffix("_proj").unwrap_or(name);
            Target::from_peft(&format!("{short}_proj")).with_context(|| {
                format!("unknown target `{name}`; use q, k, v, o, gate, up, down or all")
            })
        })
        .collect()
}

pub fn run(args: AdaptArgs) -> anyhow::Result<ExitCode> {
    let options = AdaptOptions {
        rank: args.rank,
        alpha: args.alpha,
        targets: parse_targets(&args.targets)?,
        epochs: args.epochs,
        lr: args.lr,
        seed: args.seed,
        batch: args.batch,
        holdout: args.holdout,
    };
    options.validate().map_err(anyhow::Error::msg)?;
    if args.max_tokens < 2 {
        anyhow::bail!("--max-tokens must be at least 2");
    }
    let existing = [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
        .iter()
        .any(|f| args.out.join(f).exists());
    if existing && !args.force {
        anyhow::bail!(
            "{} already holds an adapter; pass --force to replace it, or choose another --out",
            args.out.display()
        );
    }

    // The base model.
    let (path, base_name) = match &args.model {
        Some(path) => (path.clone(), model_name(path)),
        None => {
            let store = ModelStore::new(
                args.models_dir
                    .clone()
                    .unwrap_or_else(ModelStore::default_dir),
            );
            let path = store
                .require(&SMOLLM2, "SmolLM2-135M-Instruct.Q4_1.gguf")
                .context("the base model is missing; run `tessera models pull`")?;
            (path, "HuggingFaceTB/SmolLM2-135M-Instruct".to_string())
        }
    };
    let started = Instant::now();
    let device = args.device.unwrap_or(DeviceChoice::Auto).device()?;
    let (weights, tokenizer) = open_weights(&path)?;
    let model = Llama::load(weights.as_ref(), &device)?;
    drop(weights);
    let max_tokens = args.max_tokens.min(model.config().context);
    eprintln!(
        "{base_name}: loaded in {:.1?} ({} layers, hidden {})",
        started.elapsed(),
        model.config().layers,
        model.config().hidden
    );

    // The data.
    let dataset = Dataset::read(&args.data, &tokenizer, max_tokens)?;
    let dataset_sha256 = sha256_file(&args.data)?;
    let (train, held) = split(dataset.examples, options.holdout, options.seed);
    let count = |set: &[Example]| -> (usize, usize) {
        (
            set.iter().map(|e| e.tokens.len()).sum(),
            set.iter().map(Example::learned).sum(),
        )
    };
    let (train_tokens, train_learned) = count(&train);
    eprintln!(
        "{}: {} training examples ({train_tokens} tokens, {train_learned} learned), {} held out{}{}",
        args.data.display(),
        train.len(),
        held.len(),
        if dataset.truncated > 0 {
            format!("; {} cut to {max_tokens} tokens", dataset.truncated)
        } else {
            String::new()
        },
        if dataset.skipped > 0 {
            format!(
                "; {} left out (nothing to learn within {max_tokens} tokens)",
                dataset.skipped
            )
        } else {
            String::new()
        },
    );

    let mut trainer = Trainer::new(&model, options.clone()).map_err(anyhow::Error::msg)?;
    eprintln!(
        "LoRA rank {} alpha {} on {}: {} trainable parameters",
        options.rank,
        options.alpha,
        trainer
            .options()
            .targets
            .iter()
            .map(|t| t.peft_name())
            .collect::<Vec<_>>()
            .join(", "),
        trainer.parameters()
    );
    let base_train = mean_loss(&model, &train, None, options.batch);
    let base_held = (!held.is_empty()).then(|| mean_loss(&model, &held, None, options.batch));
    eprintln!(
        "base model: training loss {base_train:.4}{}",
        base_held.map_or(String::new(), |l| format!(", held-out loss {l:.4}"))
    );

    // Training.
    let steps_per_epoch = train.len().div_ceil(options.batch);
    let total = (steps_per_epoch * options.epochs) as u64;
    let bar = progress_bar(total);
    let mut epochs = Vec::new();
    let mut trained_tokens = 0usize;
    let mut trained_for = std::time::Duration::ZERO;
    for epoch in 1..=options.epochs {
        let order = trainer.epoch_order(train.len());
        let (mut loss_sum, mut learned) = (0.0, 0usize);
        for (i, chunk) in order.chunks(options.batch).enumerate() {
            let batch: Vec<&Example> = chunk.iter().map(|&i| &train[i]).collect();
            let step_started = Instant::now();
            let report = trainer.step(&batch);
            trained_for += step_started.elapsed();
            trained_tokens += report.tokens;
            if !report.loss.is_finite() {
                bar.abandon();
                anyhow::bail!(
                    "the loss became {} at step {}; lower --lr (now {})",
                    report.loss,
                    trainer.steps(),
                    options.lr
                );
            }
            loss_sum += report.loss * report.learned as f64;
            learned += report.learned;
            let rate = trained_tokens as f64 / trained_for.as_secs_f64();
            bar.set_message(format!(
                "epoch {epoch}/{} loss {:.4} {rate:.0} tok/s",
                options.epochs, report.loss
            ));
            bar.inc(1);
            if bar.is_hidden() {
                let step = i + 1;
                if step == 1 || step == steps_per_epoch || step % 10 == 0 {
                    eprintln!(
                        "epoch {epoch}/{} step {step}/{steps_per_epoch}: loss {:.4}, {rate:.0} tok/s",
                        options.epochs, report.loss
                    );
                }
            }
        }
        let train_loss = loss_sum / learned.max(1) as f64;
        let held_loss = (!held.is_empty()).then(|| trainer.eval(&held, true));
        bar.suspend(|| {
            eprintln!(
                "epoch {epoch}/{}: training loss {train_loss:.4}{}",
                options.epochs,
                held_loss.map_or(String::new(), |l| format!(", held-out loss {l:.4}"))
            )
        });
        epochs.push(serde_json::json!({
            "epoch": epoch, "train_loss": train_loss, "held_out_loss": held_loss,
        }));
        let report = serde_json::json!({
            "base_model": base_name,
            "base_model_file": path.file_name().map(|n| n.to_string_lossy().into_owned()),
            "data": args.data.display().to_string(),
            "data_sha256": dataset_sha256,
            "examples": { "train": train.len(), "held_out": held.len(),
                          "truncated": dataset.truncated, "skipped": dataset.skipped },
            "options": {
                "rank": options.rank, "alpha": options.alpha,
                "targets": trainer.options().targets.iter().map(|t| t.peft_name()).collect::<Vec<_>>(),
                "epochs": options.epochs, "lr": options.lr, "seed": options.seed,
                "batch": options.batch, "holdout": options.holdout, "max_tokens": max_tokens,
            },
            "base": { "train_loss": base_train, "held_out_loss": base_held },
            "epochs": epochs,
            "steps": trainer.steps(),
            "tokens": trained_tokens,
            "tokens_per_second": trained_tokens as f64 / trained_for.as_secs_f64(),
            "seconds": started.elapsed().as_secs_f64(),
        });
        save(&trainer, &args.out, &base_name, &report)
            .with_context(|| format!("cannot write the adapter to {}", args.out.display()))?;
    }
    bar.finish_and_clear();
    eprintln!(
        "trained {} steps in {:.1?} ({:.0} tok/s); adapter in {}",
        trainer.steps(),
        trained_for,
        trained_tokens as f64 / trained_for.as_secs_f64(),
        args.out.display()
    );
    super::print(&format!("{}\n", args.out.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on stderr, hidden when stderr is not a terminal (the
/// loop prints lines then).
fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} steps, {elapsed} < {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// Write the adapter and its report into `out` through a sibling
/// directory and renames, so that `out` always holds a whole adapter: the
/// previous epoch's or this one's.
fn save(
    trainer: &Trainer<'_>,
    out: &Path,
    base_name: &str,
    report: &serde_json::Value,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let staging = tempfile::Builder::new()
        .prefix(".tessera-adapt-")
        .tempdir_in(out)?;
    trainer.save(staging.path(), base_name)?;
    std::fs::write(
        staging.path().join(REPORT_FILE),
        serde_json::to_string_pretty(report)? + "\n",
    )?;
    // The weights first, the config (what makes a directory an adapter)
    // last.
    for file in [ADAPTER_WEIGHTS, REPORT_FILE, ADAPTER_CONFIG] {
        std::fs::rename(staging.path().join(file), out.join(file))?;
    }
    Ok(())
}

/// A model's name from its path: the file stem up to the first dot, or
/// the directory's name.
fn model_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    stem.split('.').next().unwrap_or(&stem).to_string()
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    use sha2::Digest;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_short_and_peft_names() {
        assert_eq!(parse_targets("q,v").unwrap(), [Target::Q, Target::V]);
        assert_eq!(
            parse_targets("gate_proj, down").unwrap(),
            [Target::Gate, Target::Down]
        );
        assert_eq!(parse_targets("all").unwrap(), Target::ALL);
        let err = parse_targets("q,lm_head").unwrap_err().to_string();
        assert!(err.contains("`lm_head`"), "{err}");
    }
}
