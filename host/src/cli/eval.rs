//! `tessera eval`: a labelled set against models on a server.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tessera_host::ensemble::calibration::{Calibration, Sample};
use tessera_host::eval::{Item, Outcome, check, read_set, render, summarize};

/// Arguments of `tessera eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// The labelled set: JSON lines of {"id", "category", "prompt", "check"}
    /// (see tests/data/eval/).
    data: PathBuf,

    /// Models to ask, comma-separated (expert names, the base model,
    /// adapters, tessera/auto and its strategies). Each item goes to every
    /// model in turn, a different model first at each item, so that their
    /// latencies compare.
    #[arg(long, value_delimiter = ',', required = true)]
    models: Vec<String>,

    /// A running server's API base (http://HOST:PORT/v1). Without it, eval
    /// starts `tessera serve` of its own for the run (on a free port, with
    /// the arguments after `--`) and stops it at the end.
    #[arg(long, value_name = "URL")]
    url: Option<String>,

    /// Bearer token for the server.
    #[arg(long, env = "TESSERA_API_KEY", hide_env_values = true)]
    api_key: Option<String>,

    /// Only these categories, comma-separated.
    #[arg(long, value_delimiter = ',')]
    categories: Vec<String>,

    /// Only the first N items (after --categories).
    #[arg(long)]
    limit: Option<usize>,

    /// max_tokens of every request.
    #[arg(long, default_value_t = 256)]
    max_tokens: u32,

    /// Give up on one request after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,

    /// Print the summary as JSON instead of tables.
    #[arg(long)]
    json: bool,

    /// Write every answer, its check and timing as JSON lines here.
    #[arg(long, value_name = "FILE")]
    details: Option<PathBuf>,

    /// Fit a cascade calibration to this set and write it here (for
    /// `tessera serve --cascade-calibration`): every stage of every
    /// `tessera/auto:cascade` answer is checked, and each expert's
    /// confidence is mapped to how often it was right. Use a development
    /// set, never the test set; serve with `--cascade-threshold 1` so that
    /// every stage runs.
    #[arg(long, value_name = "FILE")]
    calibrate: Option<PathBuf>,

    /// Arguments for the `tessera serve` started without --url.
    #[arg(last = true)]
    serve_args: Vec<String>,
}

pub async fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let mut items = read_set(&args.data)?;
    if !args.categories.is_empty() {
        items.retain(|i| args.categories.contains(&i.category));
    }
    if let Some(n) = args.limit {
        items.truncate(n);
    }
    if items.is_empty() {
        anyhow::bail!("no items left after --categories and --limit");
    }
    let (url, server) = match &args.url {
        Some(url) => (url.trim_end_matches('/').to_string(), None),
        None => {
            let server = Server::start(&args.serve_args)?;
            (format!("http://{}/v1", server.address), Some(server))
        }
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_secs))
        .build()?;
    let total = (items.len() * args.models.len()) as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} answers, {elapsed} < {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut outcomes = Vec::with_capacity(total as usize);
    let mut samples = Vec::new();
    let mut correct = vec![0usize; args.models.len()];
    // Item by item, each model in turn, starting with a different model at
    // each item: whatever drifts during a run (a warming allocator, the
    // machine's load) falls on every model alike, so their latencies
    // compare.
    for (i, item) in items.iter().enumerate() {
        for k in 0..args.models.len() {
            let m = (i + k) % args.models.len();
            let model = &args.models[m];
            let (outcome, stages) =
                ask(&client, &url, args.api_key.as_deref(), model, item, &args).await;
            samples.extend(stages);
            correct[m] += usize::from(outcome.correct);
            bar.set_message(progress(&args.models, &correct, i + 1));
            bar.inc(1);
            outcomes.push(outcome);
        }
        // Without a terminal the bar is hidden: a line now and then, so a
        // run under a script still shows it is moving.
        if bar.is_hidden() && ((i + 1) % PLAIN_PROGRESS_EVERY == 0 || i + 1 == items.len()) {
            eprintln!(
                "{}/{} items, {:.0?}: {}",
                i + 1,
                items.len(),
                bar.elapsed(),
                progress(&args.models, &correct, i + 1)
            );
        }
    }
    if bar.is_hidden() {
        for (model, c) in args.models.iter().zip(&correct) {
            eprintln!("{model}: {c}/{} correct", items.len());
        }
    }
    bar.finish_and_clear();
    drop(server);
    if let Some(path) = &args.details {
        let mut text = String::new();
        for o in &outcomes {
            text.push_str(&serde_json::to_string(o)?);
            text.push('\n');
        }
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.calibrate {
        if samples.is_empty() {
            anyhow::bail!(
                "--calibrate: no cascade stages were seen; include tessera/auto:cascade in --models"
            );
        }
        let source = format!("{} ({} stages)", args.data.display(), samples.len());
        let calibration = Calibration::fit(&samples, &source);
        std::fs::write(path, serde_json::to_string_pretty(&calibration)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!(
            "wrote the cascade calibration {} ({} stages; curves for {} experts and a pooled one)",
            path.display(),
            samples.len(),
            calibration.experts.len()
        );
    }
    let summary = summarize(&args.models, &outcomes);
    if args.json {
        super::print(&format!("{}\n", serde_json::to_string_pretty(&summary)?))?;
    } else {
        super::print(&render(&summary))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Items between progress lines when stderr is not a terminal.
const PLAIN_PROGRESS_EVERY: usize = 10;

/// "auto 9/10, base 2/10": each model's correct answers after `items`.
fn progress(models: &[String], correct: &[usize], items: usize) -> String {
    models
        .iter()
        .zip(correct)
        .map(|(m, c)| format!("{m} {c}/{items}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Ask `model` one item at temperature 0 and check the answer, and the
/// answer of every cascade stage.
async fn ask(
    client: &reqwest::Client,
    url: &str,
    api_key: Option<&str>,
    model: &str,
    item: &Item,
    args: &EvalArgs,
) -> (Outcome, Vec<Sample>) {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": item.prompt}],
        "temperature": 0,
        "max_tokens": args.max_tokens,
    });
    let mut request = client.post(format!("{url}/chat/completions")).json(&body);
    if let Some(key) = api_key {
        request = request.bearer_auth(key);
    }
    let started = Instant::now();
    let response = request.send().await;
    let (status, value) = match response {
        Ok(r) => {
            let status = r.status().as_u16();
            match read_capped(r).await {
                Ok(bytes) => (status, serde_json::from_slice(&bytes).unwrap_or_default()),
                Err(message) => (0, serde_json::json!({"error": {"message": message}})),
            }
        }
        Err(e) => (
            0,
            serde_json::json!({"error": {"message": format!("no answer: {e}")}}),
        ),
    };
    let latency_ms = started.elapsed().as_millis() as u64;
    let mut outcome = Outcome {
        id: item.id.clone(),
        category: item.category.clone(),
        model: model.to_string(),
        answer: String::new(),
        status,
        correct: false,
        why: None,
        latency_ms,
        tokens: value["usage"]["total_tokens"].as_u64().unwrap_or(0),
        answered_by: value["tessera"]["answered_by"]
            .as_str()
            .or(value["tessera"]["expert"].as_str())
            .map(str::to_string),
        fallbacks: value["tessera"]["fallbacks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["expert"].as_str().map(str::to_string))
            .collect(),
        selected_by: value["tessera"]["selection"]["by"]
            .as_str()
            .map(str::to_string),
    };
    if status == 200 {
        outcome.answer = value["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match check(item, &outcome.answer) {
            Ok(()) => outcome.correct = true,
            Err(why) => outcome.why = Some(why),
        }
    } else {
        let message = value["error"]["message"]
            .as_str()
            .unwrap_or("no error message")
            .to_string();
        outcome.why = Some(format!("HTTP {status}: {message}"));
        outcome.answer = message;
    }
    (outcome, stage_samples(item, &value))
}

/// Each answered cascade stage of `response`: its expert, its own
/// confidence, and whether its answer passes the item's check.
fn stage_samples(item: &Item, response: &serde_json::Value) -> Vec<Sample> {
    let Some(stages) = response["tessera"]["cascade"]["stages"].as_array() else {
        return Vec::new();
    };
    stages
        .iter()
        .filter_map(|stage| {
            let content = stage["content"].as_str()?;
            Some(Sample {
                expert: stage["expert"].as_str()?.to_string(),
                confidence: stage["confidence"].as_f64().unwrap_or(0.0) as f32,
                right: check(item, content).is_ok(),
            })
        })
        .collect()
}

/// Largest response body read from the server (a miner's server is not
/// trusted to keep its answers small).
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// The body of `response`, refused past [`MAX_RESPONSE_BYTES`].
async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("the answer broke off: {e}"))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(format!(
                "the answer is over {MAX_RESPONSE_BYTES} bytes; not read further"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A `tessera serve` started for the run, stopped when dropped.
struct Server {
    child: std::process::Child,
    address: String,
}

impl Server {
    fn start(extra: &[String]) -> anyhow::Result<Server> {
        let exe = std::env::current_exe().context("cannot find the tessera binary")?;
        let mut child = std::process::Command::new(exe)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--reload-interval-ms",
                "0",
            ])
            .args(extra)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("cannot start tessera serve")?;
        let stderr = child.stderr.take().expect("piped");
        let mut lines = std::io::BufReader::new(stderr).lines();
        let mut log = String::new();
        let address = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(rest) = line.split("on http://").nth(1) {
                        let address = rest.split("/v1").next().unwrap_or_default().to_string();
                        eprintln!("{}", line.trim());
                        break address;
                    }
                    // Its start-up (a first model pull, say) shows as it goes.
                    eprintln!("{line}");
                    log.push_str(&line);
                    log.push('\n');
                }
                _ => {
                    let _ = child.wait();
                    anyhow::bail!("tessera serve stopped before it listened:\n{log}");
                }
            }
        };
        // Keep reading its log so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Ok(Server { child, address })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM: it finishes what is in flight and exits.
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers with more than the cap is cut off with a
    /// clear error, not read into memory whole.
    #[tokio::test]
    async fn oversized_answers_are_refused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            // The request first, then the answer.
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") {
                socket.read_exact(&mut byte).await.unwrap();
                request.push(byte[0]);
            }
            let size = MAX_RESPONSE_BYTES + (1 << 20);
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
            socket.write_all(head.as_bytes()).await.unwrap();
            let block = vec![b'a'; 1 << 20];
            for _ in 0..size >> 20 {
                if socket.write_all(&block).await.is_err() {
                    return;
                }
            }
        });
        let response = reqwest::get(format!("http://{address}/")).await.unwrap();
        let err = read_capped(response).await.unwrap_err();
        assert!(err.contains("over 16777216 bytes"), "{err}");
    }
}
