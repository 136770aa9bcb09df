//! The handover wire format: one fixed header carrying the listening sockets (SCM_RIGHTS,
//! through rustix, so this crate stays free of `unsafe`), then the JSON state, then the new
//! process's one-byte answer.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use super::HandoverError;

/// At most this many sockets pass in one handover (listeners: http + https + admin).
pub const MAX_FDS: usize = 64;
/// The JSON state is refused beyond this (learned sessions are bounded by their capacity).
pub const MAX_STATE: u64 = 1 << 30;
const MAGIC: &[u8; 8] = b"TETHER1\n";
/// MAGIC, the number of sockets (u32 LE), the length of the JSON state (u64 LE).
const HEADER: usize = 8 + 4 + 8;

/// The new process has its listeners accepting: the old one stops now.
pub const GO: u8 = b'G';
/// The new process gave up: the old one carries on.
pub const ABORT: u8 = b'A';

fn io(what: &'static str) -> impl Fn(std::io::Error) -> HandoverError {
    move |e| HandoverError::Io(what, e)
}

/// Sends the sockets and the state.
pub fn send(s: &UnixStream, fds: &[BorrowedFd<'_>], state: &[u8]) -> Result<(), HandoverError> {
    if fds.len() > MAX_FDS {
        return Err(HandoverError::Protocol("too many listening sockets"));
    }
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&(fds.len() as u32).to_le_bytes());
    header.extend_from_slice(&(state.len() as u64).to_le_bytes());
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(HandoverError::Protocol(
            "the sockets do not fit one message",
        ));
    }
    // The sockets travel with the header's first byte; the rest is an ordinary stream.
    let sent = rustix::net::sendmsg(
        s,
        &[IoSlice::new(&header)],
        &mut control,
        SendFlags::empty(),
    )
    .map_err(|e| HandoverError::Io("sending the sockets", e.into()))?;
    let mut w = s;
    w.write_all(&header[sent..])
        .and_then(|_| w.write_all(state))
        .and_then(|_| w.flush())
        .map_err(io("sending the state"))
}

/// Receives the sockets (in the order sent) and the state.
pub fn receive(s: &UnixStream) -> Result<(Vec<OwnedFd>, Vec<u8>), HandoverError> {
    let mut header = [0u8; HEADER];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        s,
        &mut [IoSliceMut::new(&mut header)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| HandoverError::Io("receiving the sockets", e.into()))?;
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = msg {
            fds.extend(rights);
        }
    }
    if got.bytes == 0 {
        return Err(HandoverError::Protocol(
            "the running instance closed the connection",
        ));
    }
    let mut r = s;
    r.read_exact(&mut header[got.bytes..])
        .map_err(io("receiving the header"))?;
    if &header[..8] != MAGIC {
        return Err(HandoverError::Protocol("not a tether handover socket"));
    }
    let n = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[12..20]);
    let len = u64::from_le_bytes(len);
    if n != fds.len() {
        return Err(HandoverError::Protocol("socket count does not match"));
    }
    if len > MAX_STATE {
        return Err(HandoverError::Protocol("state too large"));
    }
    let mut state = Vec::new();
    r.take(len)
        .read_to_end(&mut state)
        .map_err(io("receiving the state"))?;
    if state.len() as u64 != len {
        return Err(HandoverError::Protocol("state cut short"));
    }
    Ok((fds, state))
}

/// The new process's answer ([`GO`] or [`ABORT`]).
pub fn answer(s: &UnixStream, byte: u8) -> Result<(), HandoverError> {
    let mut w = s;
    w.write_all(&[byte]).map_err(io("answering"))
}

/// Waits for the new process's answer; a closed connection is [`ABORT`].
pub fn read_answer(s: &UnixStream) -> u8 {
    let mut b = [0u8; 1];
    let mut r = s;
    match r.read_exact(&mut b) {
        Ok(()) => b[0],
        Err(_) => ABORT,
    }
}

/// Borrowed views of owned sockets, for [`send`].
pub fn borrow(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(|f| f.as_fd()).collect()
}
