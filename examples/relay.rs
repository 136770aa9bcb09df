//! The load rig's floor: a TCP relay with no HTTP in it, to measure what the kernel alone costs.
//!
//! `cargo run --release --example relay -- LISTEN BACKEND...` accepts clients on LISTEN and
//! joins each to its own connection to the next BACKEND (round robin), then copies bytes both
//! ways. No parsing, no headers, no timers, no allocation per message: one `recv` and one
//! `send` per direction per message, the same 4 syscalls per proxied request an HTTP proxy
//! makes at best. `benches/load.sh` runs it beside tether and HAProxy; its CPU per request is
//! the least any user-space proxy can spend on this machine. A benchmark tool, not a proxy:
//! it keeps no affinity and does no HTTP.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);
const BUF: usize = 16 * 1024;

/// One side of a joined pair: its socket and the bytes still owed to it.
struct Side {
    stream: TcpStream,
    pending: Vec<u8>,
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: relay LISTEN-ADDR BACKEND-ADDR...");
        std::process::exit(2);
    }
    let parse = |s: &String| {
        s.parse::<SocketAddr>()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{s}: {e}")))
    };
    let listen = parse(&args[0])?;
    let backends = args[1..]
        .iter()
        .map(parse)
        .collect::<io::Result<Vec<_>>>()?;

    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(listen)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    // Token 2n is a client, 2n+1 the backend joined to it.
    let mut sides: HashMap<usize, Side> = HashMap::new();
    let mut next_pair = 0usize;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; BUF];

    loop {
        poll.poll(&mut events, None)?;
        for event in events.iter() {
            if event.token() == LISTENER {
                accept_all(&listener, &poll, &backends, &mut sides, &mut next_pair)?;
                continue;
            }
            let me = event.token().0;
            if event.is_writable() && !flush(&mut sides, me) {
                close_pair(&poll, &mut sides, me);
                continue;
            }
            if (event.is_readable() || event.is_read_closed()) && !forward(&mut sides, me, &mut buf)
            {
                close_pair(&poll, &mut sides, me);
            }
        }
    }
}

fn accept_all(
    listener: &TcpListener,
    poll: &Poll,
    backends: &[SocketAddr],
    sides: &mut HashMap<usize, Side>,
    next_pair: &mut usize,
) -> io::Result<()> {
    loop {
        let (mut client, _) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        };
        let addr = backends[*next_pair % backends.len()];
        let Ok(mut backend) = TcpStream::connect(addr) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = backend.set_nodelay(true);
        let both = Interest::READABLE | Interest::WRITABLE;
        let c = *next_pair * 2;
        poll.registry().register(&mut client, Token(c), both)?;
        poll.registry().register(&mut backend, Token(c + 1), both)?;
        sides.insert(
            c,
            Side {
                stream: client,
                pending: Vec::new(),
            },
        );
        sides.insert(
            c + 1,
            Side {
                stream: backend,
                pending: Vec::new(),
            },
        );
        *next_pair += 1;
    }
}

/// Reads what `me` has and sends it to its peer. False when the pair is finished.
fn forward(sides: &mut HashMap<usize, Side>, me: usize, buf: &mut [u8]) -> bool {
    loop {
        let Some(side) = sides.get_mut(&me) else {
            return true; // already closed by an earlier event in this batch
        };
        let n = match side.stream.read(buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        let Some(peer) = sides.get_mut(&(me ^ 1)) else {
            return false;
        };
        if peer.pending.is_empty() {
            match peer.stream.write(&buf[..n]) {
                Ok(w) => peer.pending.extend_from_slice(&buf[w..n]),
                Err(e) if is_not_ready(&e) => peer.pending.extend_from_slice(&buf[..n]),
                Err(_) => return false,
            }
        } else {
            peer.pending.extend_from_slice(&buf[..n]);
        }
        // Like tokio: a short read means the socket is drained; don't spend a syscall on
        // the EAGAIN that would confirm it. Edge-triggered readiness reports new data.
        if n < buf.len() {
            return true;
        }
    }
}

/// Writes what is owed to `me`. False when the pair is finished.
fn flush(sides: &mut HashMap<usize, Side>, me: usize) -> bool {
    let Some(side) = sides.get_mut(&me) else {
        return true;
    };
    while !side.pending.is_empty() {
        match side.stream.write(&side.pending) {
            Ok(w) => {
                side.pending.drain(..w);
            }
            Err(e) if is_not_ready(&e) => return true,
            Err(_) => return false,
        }
    }
    true
}

/// A connect still in progress reports NotConnected; both mean "wait for writable".
fn is_not_ready(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
    )
}

fn close_pair(poll: &Poll, sides: &mut HashMap<usize, Side>, me: usize) {
    for t in [me, me ^ 1] {
        if let Some(mut side) = sides.remove(&t) {
            let _ = poll.registry().deregister(&mut side.stream);
        }
    }
}
