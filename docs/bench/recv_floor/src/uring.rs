//! One thread, io_uring: a multishot receive per connection
//! (`IORING_OP_RECV` + `IORING_RECV_MULTISHOT`) that takes its buffers from a
//! provided-buffer ring, requests sent as `send` SQEs, and one
//! `io_uring_enter` per batch: submit, wait for at least one completion
//! (`--coalesce-us`: at least that long, via `min_wait_usec`), drain all.
//! `IORING_SETUP_DEFER_TASKRUN` (unless `--no-defer`): the kernel does the
//! receive work only when the thread asks for completions, not on each
//! packet's arrival. `stamped`: a multishot `recvmsg` instead, with
//! `SO_TIMESTAMPING` receive stamps in each buffer's control data.

use std::io;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::cqueue;
use io_uring::squeue::Entry;
use io_uring::types::{BufRingEntry, Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{IoUring, SubmissionQueue, Submitter, opcode};

use crate::Args;
use crate::conn::{self, Conn, Ramp, Tally};

const RECV: u64 = 1 << 32;
const SEND: u64 = 2 << 32;
const GROUP: u16 = 0;
/// Provided buffers: enough for every connection to have several reads
/// completed but not yet handed back.
const BUFFERS: u16 = 4096;

/// Anonymous memory for the buffer ring's entries (page-aligned, as the
/// kernel wants it).
struct Mapping {
    p: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: an anonymous private mapping, unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { p, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`.
        unsafe { libc::munmap(self.p, self.len) };
    }
}

/// The provided-buffer ring: `BUFFERS` entries the kernel takes buffers
/// from, pointing into `mem`. Both the entries and `mem` are owned by `run`
/// and declared before the IoUring, so they outlive it (and any receive
/// the kernel still has in flight when the ring is dropped).
struct BufRing<'m> {
    entries: *mut BufRingEntry,
    /// Raw: the kernel writes into these buffers behind Rust's back.
    mem: *mut u8,
    size: usize,
    tail: u16,
    _owned: PhantomData<&'m mut [u8]>,
}

impl<'m> BufRing<'m> {
    fn new(
        submitter: &Submitter<'_>,
        map: &'m Mapping,
        mem: &'m mut [u8],
        size: usize,
    ) -> io::Result<Self> {
        assert!(mem.len() >= usize::from(BUFFERS) * size);
        let mut ring = BufRing {
            entries: map.p.cast(),
            mem: mem.as_mut_ptr(),
            size,
            tail: 0,
            _owned: PhantomData,
        };
        for bid in 0..BUFFERS {
            ring.give(bid);
        }
        ring.publish();
        // SAFETY: the entries and the buffers outlive the IoUring (see above).
        unsafe { submitter.register_buf_ring_with_flags(map.p as u64, BUFFERS, GROUP, 0)? };
        Ok(ring)
    }

    /// Puts buffer `bid` back at the ring's (local) tail.
    fn give(&mut self, bid: u16) {
        let at = usize::from(self.tail & (BUFFERS - 1));
        // SAFETY: `at` < BUFFERS, within the mapping; the kernel reads only
        // entries before the published tail.
        let e = unsafe { &mut *self.entries.add(at) };
        e.set_addr(self.mem as u64 + (usize::from(bid) * self.size) as u64);
        e.set_len(self.size as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the given-back buffers visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail field lies in the first entry of the mapping and is
        // only written here; the kernel reads it as an atomic u16.
        let tail = unsafe { AtomicU16::from_ptr(BufRingEntry::tail(self.entries).cast_mut()) };
        tail.store(self.tail, Ordering::Release);
    }

    /// The bytes the kernel wrote into buffer `bid` (its completion seen).
    fn slice(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < BUFFERS && len <= self.size);
        // SAFETY: within `mem`; the kernel is done with this buffer until it
        // is given back.
        unsafe { std::slice::from_raw_parts(self.mem.add(usize::from(bid) * self.size), len) }
    }
}

/// Room for one `scm_timestamping` control message (16-byte header, three
/// timespecs).
const CONTROL_LEN: usize = 64;

pub fn run(args: &Args, stamped: bool) -> io::Result<Tally> {
    // Declared before the ring so that they are dropped after it.
    let map = Mapping::new(usize::from(BUFFERS) * size_of::<BufRingEntry>())?;
    let mut mem = vec![0u8; usize::from(BUFFERS) * args.buf_size];
    let (mut ring, mut note) = build_ring(args)?;
    let mut t = Tally::default();
    let (submitter, sq, cq) = ring.split();
    let bufs = BufRing::new(&submitter, &map, &mut mem, args.buf_size)?;
    note.push_str(&format!(
        " buffers={BUFFERS}x{} stamped={stamped}",
        args.buf_size
    ));
    t.note = note;
    // The template every multishot recvmsg is armed with: no name, room for
    // the stamp. Boxed so its address holds while the loop runs.
    // SAFETY: msghdr is plain data; zero is its empty value.
    let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
    msg.msg_controllen = CONTROL_LEN;
    let mut l = Loop {
        args,
        stamped,
        msg,
        req: args.request(),
        submitter,
        sq,
        bufs,
        conns: Vec::with_capacity(args.users),
        t,
    };
    let result = l.event_loop(cq);
    for c in &l.conns {
        conn::close(c.fd);
    }
    result.map(|()| std::mem::take(&mut l.t))
}

/// The ring, with deferred task work where the kernel has it.
fn build_ring(args: &Args) -> io::Result<(IoUring, String)> {
    let mut b = IoUring::builder();
    b.setup_cqsize(4 * u32::from(BUFFERS));
    if !args.no_defer {
        let mut d = b.clone();
        d.setup_single_issuer().setup_defer_taskrun();
        if let Ok(r) = d.build(u32::from(BUFFERS)) {
            return Ok((r, "ring=defer_taskrun+single_issuer".into()));
        }
    }
    Ok((b.build(u32::from(BUFFERS))?, "ring=plain".into()))
}

struct Loop<'a, 'r, 'm> {
    args: &'a Args,
    stamped: bool,
    msg: Box<libc::msghdr>,
    req: Vec<u8>,
    submitter: Submitter<'r>,
    sq: SubmissionQueue<'r>,
    bufs: BufRing<'m>,
    conns: Vec<Conn>,
    t: Tally,
}

impl Loop<'_, '_, '_> {
    fn event_loop(&mut self, mut cq: io_uring::CompletionQueue<'_>) -> io::Result<()> {
        let end = Instant::now() + Duration::from_secs_f64(self.args.secs);
        let mut ramp = Ramp::new(self.args.users, self.args.ramp_secs);
        let want = if self.args.coalesce_us > 0 {
            self.args.users
        } else {
            1
        };
        loop {
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            for _ in 0..ramp.due(now) {
                let fd = self.open(self.conns.len())?;
                self.conns.push(Conn::new(fd));
                ramp.spawned += 1;
            }
            let until = ramp.next_at().map_or(end, |t| t.min(end));
            let d = until.saturating_duration_since(Instant::now());
            let ts = Timespec::new().sec(d.as_secs()).nsec(d.subsec_nanos());
            let wait = SubmitArgs::new()
                .timespec(&ts)
                .min_wait_usec(self.args.coalesce_us);
            self.sq.sync();
            match self.submitter.submit_with_args(want, &wait) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
                Err(e) => return Err(e),
            }
            self.t.waits += 1;
            cq.sync();
            for cqe in &mut cq {
                self.complete(&cqe)?;
            }
            cq.sync();
            self.bufs.publish();
        }
    }

    fn complete(&mut self, cqe: &cqueue::Entry) -> io::Result<()> {
        let idx = (cqe.user_data() & 0xffff_ffff) as usize;
        let res = cqe.result();
        if cqe.user_data() & SEND != 0 {
            // A failed send shows as the connection's receive ending.
            return Ok(());
        }
        if res > 0 {
            let bid = cqueue::buffer_select(cqe.flags())
                .ok_or_else(|| io::Error::other("receive completion without a buffer"))?;
            let buf = self.bufs.slice(bid, res as usize);
            let data = if self.stamped {
                let out = RecvMsgOut::parse(buf, &self.msg)
                    .map_err(|()| io::Error::other("recvmsg buffer too short"))?;
                take_stamp(out.control_data(), &mut self.t);
                // The payload is the buffer's tail, after header and control.
                let payload = out.payload_data();
                let at = payload.as_ptr() as usize - buf.as_ptr() as usize;
                &buf[at..at + payload.len()]
            } else {
                buf
            };
            if data.is_empty() {
                // A multishot recvmsg reports end of stream as an empty
                // payload (the CQE's result counts its header).
                self.bufs.give(bid);
                return self.reopen(idx);
            }
            if self.conns[idx].on_bytes(data, &mut self.t) {
                let fd = self.conns[idx].fd;
                self.push_send(fd, idx)?;
            }
            self.bufs.give(bid);
        } else if res == -libc::ENOBUFS {
            self.t.nobufs += 1;
        }
        if cqueue::more(cqe.flags()) {
            return Ok(());
        }
        if res > 0 || res == -libc::ENOBUFS {
            // The multishot receive ended but the connection did not.
            return self.arm(self.conns[idx].fd, idx);
        }
        self.reopen(idx)
    }

    /// The server closed (or broke) the connection: a new one in its place.
    fn reopen(&mut self, idx: usize) -> io::Result<()> {
        conn::close(self.conns[idx].fd);
        self.t.reconnects += 1;
        let fd = self.open(idx)?;
        self.conns[idx] = Conn::new(fd);
        Ok(())
    }

    /// Connects user `idx`, arms its receive and queues its first request.
    fn open(&mut self, idx: usize) -> io::Result<i32> {
        let fd = conn::connect(self.args.addr, self.args.no_quickack)?;
        if self.stamped {
            conn::enable_stamps(fd)?;
        }
        self.arm(fd, idx)?;
        self.push_send(fd, idx)?;
        Ok(fd)
    }

    fn arm(&mut self, fd: i32, idx: usize) -> io::Result<()> {
        let e = if self.stamped {
            opcode::RecvMsgMulti::new(Fd(fd), &*self.msg, GROUP).build()
        } else {
            opcode::RecvMulti::new(Fd(fd), GROUP).build()
        };
        self.push(&e.user_data(RECV | idx as u64))
    }

    fn push_send(&mut self, fd: i32, idx: usize) -> io::Result<()> {
        let e = opcode::Send::new(Fd(fd), self.req.as_ptr(), self.req.len() as u32)
            .build()
            .user_data(SEND | idx as u64);
        self.push(&e)
    }

    /// Queues an SQE, submitting first when the queue is full.
    fn push(&mut self, e: &Entry) -> io::Result<()> {
        loop {
            // SAFETY: the request bytes live as long as the loop (and so past
            // every send's completion); receives use the provided buffers.
            if unsafe { self.sq.push(e) }.is_ok() {
                return Ok(());
            }
            self.sq.sync();
            self.submitter.submit()?;
            self.sq.sync();
        }
    }
}

/// Finds the software receive stamp in a recvmsg's control data (a walk of
/// `cmsghdr`s: length, level, type, then the data, 8-byte aligned).
fn take_stamp(control: &[u8], t: &mut Tally) {
    const HDR: usize = size_of::<libc::cmsghdr>();
    let mut at = 0;
    while at + HDR <= control.len() {
        let word = |o: usize, n: usize| &control[at + o..at + o + n];
        let len = usize::from_ne_bytes(word(0, 8).try_into().unwrap_or_default());
        let level = i32::from_ne_bytes(word(8, 4).try_into().unwrap_or_default());
        let kind = i32::from_ne_bytes(word(12, 4).try_into().unwrap_or_default());
        if len < HDR || at + len > control.len() {
            return;
        }
        if level == libc::SOL_SOCKET && kind == conn::SO_TIMESTAMPING && len >= HDR + 16 {
            let sec = i64::from_ne_bytes(word(HDR, 8).try_into().unwrap_or_default());
            let nsec = i64::from_ne_bytes(word(HDR + 8, 8).try_into().unwrap_or_default());
            t.stamp(libc::timespec {
                tv_sec: sec,
                tv_nsec: nsec,
            });
        }
        at += len.next_multiple_of(8);
    }
}
