//! The start-up handshake of GPU ranks: rank 0 hands every other rank NCCL's 128-byte unique id,
//! as NCCL's documentation asks ("distributed to all ranks using any CPU communication
//! system"), over one TCP connection per rank to `MASTER_ADDR:MASTER_PORT`. Nothing else goes
//! over it: the gradients travel through NCCL itself.
//!
//! Rank 0 listens and checks that the ranks that call are exactly 1 … W−1 of the same world
//! size; each of them retries its connection until rank 0 is up or the timeout passes. Under
//! torchrun, whose agent already holds `MASTER_PORT` (`TORCHELASTIC_USE_AGENT_STORE=True`), the
//! next port is used.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::env::Launch;
use crate::error::{Error, Result};

/// Where rank 0 listens for this launch.
pub fn address(launch: &Launch, torch_agent_store: bool) -> (String, u16) {
    let host = launch
        .master_addr
        .clone()
        .unwrap_or_else(|| "127.0.0.1".into());
    let port = launch.master_port.unwrap_or(29500);
    (
        host,
        if torch_agent_store {
            port.wrapping_add(1)
        } else {
            port
        },
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Rank 0: wait for ranks 1 … world−1 and send each `payload`.
pub fn serve(port: u16, world: usize, payload: &[u8], timeout: Duration) -> Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| {
        Error::msg(format!(
            "rank 0 cannot listen on port {port} for the other ranks ({e}); choose another MASTER_PORT (tunelab launch --master-port)"
        ))
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("the rendezvous socket", e))?;
    let started = Instant::now();
    let mut waiting: Vec<(usize, TcpStream)> = Vec::new();
    let mut seen = vec![false; world];
    seen[0] = true;
    while waiting.len() + 1 < world {
        match listener.accept() {
            Ok((stream, _)) => {
                stream
                    .set_nonblocking(false)
                    .map_err(|e| Error::io("the rendezvous socket", e))?;
                stream.set_read_timeout(Some(timeout)).ok();
                let mut line = String::new();
                BufReader::new(&stream)
                    .read_line(&mut line)
                    .map_err(|e| Error::io("the rendezvous socket", e))?;
                let words: Vec<&str> = line.split_whitespace().collect();
                let parsed = match words.as_slice() {
                    ["tunelab-rank", r, w] => r.parse::<usize>().ok().zip(w.parse::<usize>().ok()),
                    _ => None,
                };
                let problem = match parsed {
                    None => Some(format!("a caller that is not a tunelab rank said {line:?}")),
                    Some((_, w)) if w != world => Some(format!(
                        "a rank says the world has {w} ranks, rank 0 says {world}: launch every rank with the same WORLD_SIZE"
                    )),
                    Some((r, _)) if r == 0 || r >= world || seen[r] => Some(format!(
                        "rank {r} called twice, or is out of range: every rank needs its own RANK below {world}"
                    )),
                    Some(_) => None,
                };
                let mut stream = stream;
                if let Some(problem) = problem {
                    let _ = writeln!(stream, "error {problem}");
                    return Err(Error::msg(format!("rendezvous: {problem}")));
                }
                let (r, _) = parsed.expect("checked above");
                seen[r] = true;
                waiting.push((r, stream));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if started.elapsed() > timeout {
                    let missing: Vec<String> = (0..world)
                        .filter(|&r| !seen[r])
                        .map(|r| r.to_string())
                        .collect();
                    return Err(Error::msg(format!(
                        "rendezvous: ranks {} did not call rank 0 within {:.0} s; check that they were started and can reach MASTER_ADDR:{port}",
                        missing.join(", "),
                        timeout.as_secs_f64()
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(Error::io("the rendezvous socket", e)),
        }
    }
    for (_, mut stream) in waiting {
        writeln!(stream, "ok {}", hex(payload))
            .map_err(|e| Error::io("the rendezvous socket", e))?;
    }
    Ok(())
}

/// Rank `rank` > 0: call rank 0 at `host:port` (retrying until it listens) and receive the payload.
pub fn call(
    host: &str,
    port: u16,
    rank: usize,
    world: usize,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let started = Instant::now();
    let stream = loop {
        let tried = (host, port)
            .to_socket_addrs()
            .map_err(|e| {
                Error::msg(format!(
                    "rendezvous: MASTER_ADDR {host:?} does not resolve ({e})"
                ))
            })?
            .find_map(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok());
        match tried {
            Some(s) => break s,
            None if started.elapsed() > timeout => {
                return Err(Error::msg(format!(
                    "rendezvous: rank {rank} could not reach rank 0 at {host}:{port} within {:.0} s; is rank 0 running, and are MASTER_ADDR and MASTER_PORT the same on every rank?",
                    timeout.as_secs_f64()
                )))
            }
            None => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    stream.set_read_timeout(Some(timeout)).ok();
    let mut stream = stream;
    writeln!(stream, "tunelab-rank {rank} {world}")
        .map_err(|e| Error::io("the rendezvous socket", e))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| Error::io("the rendezvous socket", e))?;
    let line = line.trim();
    if let Some(problem) = line.strip_prefix("error ") {
        return Err(Error::msg(format!("rendezvous: rank 0 says: {problem}")));
    }
    line.strip_prefix("ok ").and_then(unhex).ok_or_else(|| {
        Error::msg(format!(
            "rendezvous: rank 0 answered {line:?}; is another program listening on port {port}?"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn every_rank_receives_rank_zeros_bytes() {
        let port = free_port();
        let payload: Vec<u8> = (0..128).map(|i| (i * 7) as u8).collect();
        let t = Duration::from_secs(20);
        let callers: Vec<_> = (1..4)
            .map(|r| std::thread::spawn(move || call("127.0.0.1", port, r, 4, t).unwrap()))
            .collect();
        serve(port, 4, &payload, t).unwrap();
        for c in callers {
            assert_eq!(c.join().unwrap(), payload);
        }
    }

    #[test]
    fn a_world_size_mismatch_is_an_error_on_both_sides() {
        let port = free_port();
        let t = Duration::from_secs(20);
        let caller = std::thread::spawn(move || call("127.0.0.1", port, 1, 3, t));
        let e = serve(port, 2, b"id", t).unwrap_err();
        assert!(e.to_string().contains("the world has 3 ranks"), "{e}");
        let e = caller.join().unwrap().unwrap_err();
        assert!(e.to_string().contains("rank 0 says"), "{e}");
    }

    #[test]
    fn a_missing_rank_is_named_after_the_timeout() {
        let port = free_port();
        let e = serve(port, 3, b"id", Duration::from_millis(300)).unwrap_err();
        assert!(e.to_string().contains("ranks 1, 2 did not call"), "{e}");
    }
}
