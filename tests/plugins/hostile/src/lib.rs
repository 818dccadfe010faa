//! An expert that misbehaves in the way its prompt names. The containment
//! tests run each behaviour and check the host stays in charge.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use tessera_sdk::prelude::*;

struct Hostile;

/// Written by `mark`, read by `peek`: a later invocation must never see
/// what an earlier one left in memory.
static MARK: AtomicU64 = AtomicU64::new(0);

impl Expert for Hostile {
    fn describe(_manifest: ExpertInfo) -> ExpertInfo {
        // No name: the tests load this component under several manifests
        // (relay chains), and the manifest's name is the expert's name.
        ExpertInfo::new("", "Misbehaves on request.")
    }

    fn handle(req: Request) -> Result<Response, Error> {
        match req.require_user_message()? {
            "spin" => spin(),
            "hog" => hog(),
            "recurse" => Ok(Response::new(recurse(black_box(1)).to_string())),
            "snoop" => Ok(Response::new(snoop())),
            "spew" => spew(),
            "huge" => Ok(Response::new("x".repeat(6 * 1024 * 1024))),
            "panic" => panic!("boom: the expert gave up"),
            "cycle" => experts::call("hostile", &Request::from_prompt("cycle")),
            "model" => model::ask("hello", &Sampling::default()).map(Response::new),
            "relay" => relay(&req),
            "clock" => Ok(Response::new(clock())),
            "mark" => {
                MARK.store(0xDEAD_BEEF, Ordering::SeqCst);
                Ok(Response::new("marked"))
            }
            "peek" => Ok(Response::new(format!("{:x}", MARK.load(Ordering::SeqCst)))),
            "refused-loop" => refused_loop(),
            "embed-bomb" => {
                let texts = vec!["x".to_string(); 10_000];
                model::embed(&texts).map(|v| Response::new(v.len().to_string()))
            }
            "choices-bomb" => {
                let continuations = vec![" x".to_string(); 10_000];
                model::score_choices("pick one:", &continuations)
                    .map(|v| Response::new(v.len().to_string()))
            }
            "stop-bomb" => {
                let mut sampling = Sampling::default();
                for i in 0..1000 {
                    sampling = sampling.stop(format!("stop-{i}"));
                }
                model::ask("hello", &sampling).map(Response::new)
            }
            "metadata-bomb" => {
                let mut response = Response::new("ok");
                for i in 0..10_000 {
                    response = response.with_metadata(format!("k{i}"), "v".repeat(100));
                }
                Ok(response)
            }
            "usage-lie" => {
                // Spend some tokens, claim a million and none generated.
                model::score("one two three", " four")?;
                let text = model::ask("hello", &Sampling::default())?;
                Ok(Response::new(text).with_usage(Usage {
                    prompt_tokens: 1_000_000,
                    completion_tokens: 0,
                }))
            }
            "theft" => {
                // Ask a callee (with a larger budget of its own) to generate
                // for us.
                let callee = req.metadata("callee").unwrap_or("hostile");
                experts::call(callee, &Request::from_prompt("model"))
            }
            other => Err(Error::invalid_input(format!("unknown behaviour {other:?}"))),
        }
    }
}

/// Call the first expert named in metadata `chain` (comma-separated),
/// passing the rest of the chain on: a chain of experts calling experts.
fn relay(req: &Request) -> Result<Response, Error> {
    let chain = req.metadata("chain").unwrap_or("");
    let Some((next, rest)) = chain
        .split_once(',')
        .or((!chain.is_empty()).then_some((chain, "")))
    else {
        return Ok(Response::new("end of chain"));
    };
    let answer = experts::call(
        next,
        &Request::from_prompt("relay").with_metadata("chain", rest),
    )?;
    Ok(Response::new(format!("{next} > {}", answer.content)))
}

/// Burn CPU forever.
fn spin() -> Result<Response, Error> {
    let mut x: u64 = 0;
    loop {
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

/// Allocate until the allocator gives up.
fn hog() -> Result<Response, Error> {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        blocks.push(black_box(vec![1u8; 1 << 20]));
    }
}

/// Recurse without end (the exit is never taken).
fn recurse(n: u64) -> u64 {
    if black_box(n) == u64::MAX {
        return 0;
    }
    recurse(n + 1).wrapping_add(black_box(n))
}

/// Try to reach files, environment, arguments and the network via WASI.
fn snoop() -> String {
    use wasip2::sockets::network::IpAddressFamily;

    let preopens = wasip2::filesystem::preopens::get_directories().len();
    let env = wasip2::cli::environment::get_environment().len();
    let args = wasip2::cli::environment::get_arguments().len();
    let tcp = match wasip2::sockets::tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv4) {
        Ok(_) => "open".to_string(),
        Err(e) => e.name().to_string(),
    };
    let udp = match wasip2::sockets::udp_create_socket::create_udp_socket(IpAddressFamily::Ipv4) {
        Ok(_) => "open".to_string(),
        Err(e) => e.name().to_string(),
    };
    let network = wasip2::sockets::instance_network::instance_network();
    let dns = match wasip2::sockets::ip_name_lookup::resolve_addresses(&network, "example.com") {
        Ok(_) => "resolving".to_string(),
        Err(e) => e.name().to_string(),
    };
    format!("preopens={preopens} env={env} args={args} tcp={tcp} udp={udp} dns={dns}")
}

/// What WASI's clocks and random source say: the host makes them
/// functions of the trace (start time, seed), so a replay sees the same.
fn clock() -> String {
    let wall = wasip2::clocks::wall_clock::now();
    let first = wasip2::clocks::monotonic_clock::now();
    let second = wasip2::clocks::monotonic_clock::now();
    let bytes = wasip2::random::random::get_random_bytes(8);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "wall={}.{:09} mono={first},{second} random={hex}",
        wall.seconds, wall.nanoseconds
    )
}

/// Call experts by absurd names until the deadline: every call is
/// refused, and each refusal once grew the trace (and host memory) by the
/// name, twice.
fn refused_loop() -> Result<Response, Error> {
    let name = "X".repeat(64 * 1024);
    let mut refused = 0u64;
    for _ in 0..20_000 {
        if experts::call(&name, &Request::from_prompt("hi")).is_err() {
            refused += 1;
        }
    }
    Ok(Response::new(refused.to_string()))
}

/// Write far more to stdout, stderr and the log than the host keeps.
fn spew() -> Result<Response, Error> {
    let line = [b'a'; 4096];
    let stdout = wasip2::cli::stdout::get_stdout();
    let stderr = wasip2::cli::stderr::get_stderr();
    for _ in 0..256 {
        stdout
            .blocking_write_and_flush(&line)
            .map_err(|e| Error::internal(format!("stdout: {e:?}")))?;
        stderr
            .blocking_write_and_flush(&line)
            .map_err(|e| Error::internal(format!("stderr: {e:?}")))?;
    }
    let text = "y".repeat(1000);
    for _ in 0..10_000 {
        log::info(&text);
    }
    Ok(Response::new("spewed"))
}

export_expert!(Hostile);
